"""The adapter contract every model family implements.

An adapter turns one prompt + one medium (image pixels or audio waveform) into model inputs, and a
list of such inputs into answers with ONE ``generate`` call. Its ``preprocess`` is a differentiable
torch re-implementation of the HF processor's media path (tested against the processor), used by
both the defense and the attacks, so the two can never disagree about preprocessing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch

from smoothguard.errors import ConfigError, InputError, UnsupportedError

Modality = Literal["image", "audio"]

#: Chat prompts an adapter keeps tokenised, least recently used dropped first: a benchmark split asks
#: the same few prompts of every medium.
PROMPT_CACHE_SIZE = 256


@dataclass(frozen=True)
class PromptIds:
    """A chat prompt's token ids around its ONE media placeholder token: ``before``, ``placeholder``,
    ``after``. :meth:`expand` repeats the placeholder once per media token, as the HF processor does
    when it replaces the placeholder text by ``count`` copies before tokenising (tokenisers split text
    at added tokens, so the text around the placeholder tokenises the same either way)."""

    before: tuple[int, ...]
    placeholder: int
    after: tuple[int, ...]

    @classmethod
    def split(cls, ids: Sequence[int], placeholder: int, name: str) -> PromptIds:
        """``ids`` cut at their one ``placeholder``; UnsupportedError if there is not exactly one (the chat
        template of model ``name`` did not place one media placeholder)."""
        positions = [index for index, token in enumerate(ids) if token == placeholder]
        if len(positions) != 1:
            raise UnsupportedError(
                f"the chat template of {name} gives {len(positions)} media placeholder tokens (id {placeholder}) "
                "for one medium; it must place exactly one"
            )
        index = positions[0]
        return cls(tuple(ids[:index]), placeholder, tuple(ids[index + 1 :]))

    def expand(self, count: int) -> torch.Tensor:
        """``input_ids`` [1, L] (int64) with the placeholder repeated ``count`` times."""
        return torch.tensor([[*self.before, *(self.placeholder,) * count, *self.after]], dtype=torch.long)


@dataclass(frozen=True)
class Generation:
    """One answer and its token counts: ``prompt_tokens`` (the candidate's input, media tokens included),
    ``completion_tokens`` (new tokens, the end-of-sequence token included) and ``finish_reason``: ``stop``
    (the model ended its answer) or ``length`` (``max_new_tokens`` or a time budget cut it). A remote
    model reports what its endpoint says (counts ``None`` when it says nothing)."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str


@dataclass
class Query:
    """One candidate as model inputs, batch dimension 1.

    ``text``: ``input_ids`` / ``attention_mask`` [1, L] (family extras keep the same [1, L] shape).
    ``media``: the family's media tensors for this one candidate, e.g. LLaVA ``pixel_values``
    [1, 3, S, S]; Qwen-VL ``pixel_values`` [P, D] + ``image_grid_thw`` [1, 3]; Qwen2-Audio
    ``input_features`` [1, M, F] + ``feature_attention_mask`` [1, F].
    """

    text: dict[str, torch.Tensor]
    media: dict[str, torch.Tensor]


class MLLMAdapter(ABC):
    """A HuggingFace multimodal model and its processor behind one interface.

    Subclasses set ``family``, ``modality`` and ``noise_spaces`` and implement ``preprocess``,
    ``prompt_text`` and (where the media tensors are not one row per candidate) ``split_media``.
    """

    family: ClassVar[str]
    modality: ClassVar[Modality]
    noise_spaces: ClassVar[tuple[str, ...]]
    #: The processor output that ``normalized`` noise is added to.
    normalized_key: ClassVar[str] = "pixel_values"

    @classmethod
    def model_class(cls) -> Any:
        """The transformers class whose ``from_pretrained`` loads this family's checkpoints."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    @classmethod
    def load_processor(cls, source: str, **kwargs: Any) -> Any:
        """The checkpoint's HF processor (tokenizer + media processor + chat template)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, **kwargs)

    def __init__(self, model: Any, processor: Any, name: str) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.tokenizer = getattr(processor, "tokenizer", processor)

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (with a ``device_map`` the layers may be
        spread over several devices; the first layer's is the one that takes the batch)."""
        embeddings = getattr(self.model, "get_input_embeddings", lambda: None)()
        if embeddings is not None and getattr(embeddings, "weight", None) is not None:
            return embeddings.weight.device
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def default_noise_space(self) -> str:
        return self.noise_spaces[0]

    def describe(self) -> dict[str, Any]:
        """Identity written into every result (with ``sampling_rate`` for audio models)."""
        identity = {
            "name": self.name,
            "family": self.family,
            "modality": self.modality,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }
        rate = getattr(self, "sampling_rate", None)
        return identity if rate is None else {**identity, "sampling_rate": rate}

    # ------------------------------------------------------------- preprocessing
    @abstractmethod
    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable media path for a batch of B copies of ONE medium.

        Image models take pixels [B, 3, H, W] in [0, 1]; audio models take waveforms [B, T] at
        ``sampling_rate``. Returns the family's media tensors for all B copies (float32, on the
        input's device), matching the HF processor's output to a tolerance.
        """

    def conversation(self, prompt: str) -> list[dict[str, Any]]:
        """``prompt`` as one user turn of the chat template, with the family's one media item before it."""
        raise NotImplementedError

    def chat_prompt(self, prompt: str) -> str:
        """``prompt`` in the model's chat template with its media placeholder (not expanded), ending where
        the model starts to answer (the template's generation prompt)."""
        if getattr(self.processor, "chat_template", None) is None:
            raise UnsupportedError(f"{self.name} ships no chat template; pass a model folder that has one")
        return self.processor.apply_chat_template(self.conversation(prompt), add_generation_prompt=True, tokenize=False)

    @cached_property
    def answer_prefix(self) -> str:
        """The text the chat template writes between its generation prompt and an assistant answer: what
        the model was trained to emit first (LLaVA-1.5: ``" "`` after ``ASSISTANT:``; Qwen: ``""`` after
        ``<|im_start|>assistant\n``). Read off the template's rendering of a conversation with an answer."""
        sentinel = "SMOOTHGUARD_ANSWER"
        conversation = self.conversation("question")
        asked = self.chat_prompt("question")
        answered = self.processor.apply_chat_template(
            [*conversation, {"role": "assistant", "content": [{"type": "text", "text": sentinel}]}],
            tokenize=False,
        )
        if not answered.startswith(asked) or sentinel not in answered[len(asked) :]:
            raise UnsupportedError(
                f"the chat template of {self.name} does not render an answer after its generation prompt; "
                "cannot tell which tokens the model emits (attacks need them)"
            )
        return answered[len(asked) : answered.index(sentinel, len(asked))]

    def answer_ids(self, prompt: str, answer: str) -> list[int]:
        """The token ids the model emits for ``answer`` right after ``prompt``'s chat prompt (tokenised in
        context: the chat prompt, ``answer_prefix`` and ``answer`` as one text, less the chat prompt's own
        ids), closed by the end-of-sequence token when the tokenizer has one. What attacks teacher-force;
        never ``answer`` tokenised alone (that drops the leading space a LLaVA-format model emits).

        ConfigError for an empty answer or one holding the text of a special or added token (e.g. ``<image>``);
        UnsupportedError where the answer's first characters merge with the chat prompt's last token."""
        if not answer.strip():
            raise ConfigError(f"target {answer!r} has no tokens")
        added = {token.content for token in self.tokenizer.added_tokens_decoder.values()}
        special = sorted(token for token in {*self.tokenizer.all_special_tokens, *added} if token and token in answer)
        if special:
            raise ConfigError(f"target {answer!r} contains special-token text {', '.join(map(repr, special))}")
        context = self.chat_prompt(self.checked_prompt(prompt))
        context_ids = self.tokenizer(context)["input_ids"]
        ids = self.tokenizer(context + self.answer_prefix + answer)["input_ids"]
        if ids[: len(context_ids)] != context_ids or len(ids) == len(context_ids):
            raise UnsupportedError(
                f"target {answer!r} merges with the end of the chat prompt when tokenised; "
                "start it with a space or a letter"
            )
        eos = self.tokenizer.eos_token_id
        return [*ids[len(context_ids) :], *([eos] if eos is not None else [])]

    @abstractmethod
    def prompt_text(self, prompt: str, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token ids for ``prompt`` in the model's chat template with the media placeholders
        expanded for ``media`` (one medium, [3, H, W] or [T]): ``input_ids`` etc., each [1, L]."""

    def checked_prompt(self, prompt: str) -> str:
        """``prompt`` ready for the chat template: a leading media placeholder (``<image>``, as LLaVA's own
        scripts write it) is dropped, since the adapter places the medium itself; InputError if the prompt
        still holds one of the tokenizer's special tokens (a media placeholder, a chat marker such as
        ``<|im_start|>``), which would break the media token expansion or forge a chat turn."""
        placeholder = getattr(self.processor, "image_token", None) or getattr(self.processor, "audio_token", None)
        stripped = prompt.lstrip()
        if placeholder and stripped.startswith(placeholder) and stripped.count(placeholder) == 1:
            prompt = stripped[len(placeholder) :].lstrip()
        special = {token for token in self.tokenizer.all_special_tokens if token}
        special |= {token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special}
        found = sorted(token for token in special if token in prompt)
        if found:
            hint = f" (a single {placeholder} at the very start is accepted)" if placeholder else ""
            raise InputError(
                f"the prompt contains {', '.join(map(repr, found))}, special token(s) of {self.name}'s tokenizer; "
                f"leave media placeholders and chat markers out: the {self.modality} is placed for you{hint}"
            )
        if not prompt.strip():
            raise InputError("the prompt is empty once its media placeholder is dropped; add a question")
        return prompt

    def split_media(self, media: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
        """The media tensors of each of ``count`` copies out of one ``preprocess`` output (one row each);
        views, no copy and no device sync."""
        return [{key: value[index : index + 1] for key, value in media.items()} for index in range(count)]

    def encode(self, prompt: str, media: torch.Tensor) -> Query:
        """One prompt + one medium ([3, H, W] pixels or [T] waveform) as a ``Query``."""
        return Query(self.prompt_text(prompt, media), self.preprocess(media.unsqueeze(0)))

    def check_noise_space(self, space: str) -> None:
        if space not in self.noise_spaces:
            raise ConfigError(
                f"noise space {space!r} is not available for {self.family} models; "
                f"choose one of {', '.join(self.noise_spaces)}"
            )

    # ---------------------------------------------------------------- generation
    def collate(self, queries: Sequence[Query]) -> dict[str, torch.Tensor]:
        """Left-pad the text of all queries to one length and concatenate their media along dim 0,
        on the model's device; floating media are cast to the model's dtype."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        length = max(q.text["input_ids"].shape[1] for q in queries)
        batch: dict[str, torch.Tensor] = {}
        for key in queries[0].text:
            fill = pad_id if key == "input_ids" else 0
            rows = [
                torch.nn.functional.pad(q.text[key], (length - q.text[key].shape[1], 0), value=fill) for q in queries
            ]
            batch[key] = torch.cat(rows).to(self.device)
        for key in queries[0].media:
            value = torch.cat([q.media[key] for q in queries]).to(self.device)
            batch[key] = value.to(self.dtype) if value.is_floating_point() else value
        return batch

    def generate(self, queries: Sequence[Query], **generate_kwargs: Any) -> list[str]:
        """The answers of :meth:`complete`: one decoded, stripped text per query, in order."""
        return [generation.text for generation in self.complete(queries, **generate_kwargs)]

    @torch.inference_mode()
    def complete(self, queries: Sequence[Query], **generate_kwargs: Any) -> list[Generation]:
        """Answer every query with ONE ``model.generate`` call; greedy unless told otherwise.

        ``generate_kwargs`` go to HF ``generate`` (``max_new_tokens``, ``do_sample``, ``max_time``, ...).
        Returns one :class:`Generation` per query, in order.
        """
        if not queries:
            return []
        batch = self.collate(queries)
        kwargs = {"do_sample": False, "max_new_tokens": 128, **generate_kwargs}
        if not kwargs["do_sample"]:
            # Greedy decoding: silence sampling defaults a checkpoint's generation_config may carry.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        output = self.model.generate(**batch, **kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        stops = self._eos_ids(kwargs.get("eos_token_id"))
        generations = []
        for row, text, prompt_length in zip(
            new_tokens.tolist(), texts, batch["attention_mask"].sum(1).tolist(), strict=True
        ):
            ended = next((i for i, token in enumerate(row) if token in stops), None)
            generations.append(
                Generation(
                    text=text.strip(),
                    prompt_tokens=int(prompt_length),
                    completion_tokens=len(row) if ended is None else ended + 1,
                    finish_reason="length" if ended is None else "stop",
                )
            )
        return generations

    def _eos_ids(self, given: int | Sequence[int] | None = None) -> set[int]:
        """The token ids that end an answer: ``given`` (a ``generate`` argument), else the generation
        config's, and the tokenizer's end-of-sequence."""
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        configured = configured if given is None else given
        ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
        ids.add(self.tokenizer.eos_token_id)
        return {int(token) for token in ids if token is not None}
