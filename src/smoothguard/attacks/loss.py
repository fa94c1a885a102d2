"""Teacher-forced cross-entropy of target texts given a prompt and one or more media, in one batch.

Targets are tokenised in context (``MLLMAdapter.answer_ids``): the ids the model emits right after the
rendered prompt, leading space included where the chat format has one. The batch is ``M x K`` rows
``[prompt tokens | target tokens | right padding]`` (medium-major: the K
targets of medium 0, then of medium 1, ...; M > 1 for the EOT samples of one attack step); only target
tokens count (prompt and padding are masked). Right padding keeps every real token at its unpadded
position, so the loss of a row does not depend on the other rows in the batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from smoothguard.models.base import MLLMAdapter


def repeat_media(media: Sequence[dict[str, torch.Tensor]], times: int) -> dict[str, torch.Tensor]:
    """The tensors of each medium in ``media``, repeated for ``times`` rows, medium after medium
    (concatenated along dim 0, as ``MLLMAdapter.collate`` does for separate queries). Gradients flow to
    every copy."""
    return {key: torch.cat([m[key] for m in media for _ in range(times)]) for key in media[0]}


def target_losses(
    adapter: MLLMAdapter,
    prompt: str,
    text: dict[str, torch.Tensor],
    media: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
    targets: Sequence[str],
) -> torch.Tensor:
    """Mean per-token cross-entropy of each target given each medium, [M * K] medium-major (differentiable
    w.r.t. ``media``), in one forward pass.

    ``prompt``: the user's prompt; ``text``: its ids [1, L] from ``adapter.prompt_text``; ``media``: one
    medium's tensors from ``adapter.preprocess`` (or a noisy version of them), or a sequence of M such
    (M = 1 for a single dict).
    """
    media = [media] if isinstance(media, dict) else list(media)
    device = adapter.device
    prompt_ids = text["input_ids"][0].tolist()
    target_ids = [adapter.answer_ids(prompt, t) for t in targets]
    width = len(prompt_ids) + max(len(ids) for ids in target_ids)
    pad = adapter.tokenizer.pad_token_id if adapter.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(targets), width), pad, dtype=torch.long)
    attention = torch.zeros((len(targets), width), dtype=torch.long)
    labels = torch.full((len(targets), width), -100, dtype=torch.long)
    for row, ids in enumerate(target_ids):
        end = len(prompt_ids) + len(ids)
        input_ids[row, :end] = torch.tensor(prompt_ids + ids)
        attention[row, :end] = 1
        labels[row, len(prompt_ids) : end] = torch.tensor(ids)
    rows = len(media)
    input_ids, attention, labels = (t.repeat(rows, 1) for t in (input_ids, attention, labels))
    batch: dict[str, torch.Tensor] = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
    for key, value in text.items():
        if key not in batch:  # per-token extras (e.g. Qwen-VL's mm_token_type_ids): 0 on target tokens
            extra = torch.zeros((len(targets) * rows, width), dtype=value.dtype)
            extra[:, : value.shape[1]] = value[0]
            batch[key] = extra.to(device)
    for key, value in repeat_media(media, len(targets)).items():
        value = value.to(device)
        batch[key] = value.to(adapter.dtype) if value.is_floating_point() else value
    keep = width - len(prompt_ids) + 1
    kwargs = {"logits_to_keep": keep} if _accepts(adapter.model.forward, "logits_to_keep") else {}
    logits = adapter.model(**batch, **kwargs).logits[:, -keep:].float()
    # Position t predicts token t + 1: logits [:-1] against labels of the kept window [1:].
    window_labels = labels[:, -keep:].to(device)
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), window_labels[:, 1:], reduction="none")
    counted = (window_labels[:, 1:] != -100).float()
    return (losses * counted).sum(dim=1) / counted.sum(dim=1)


def _accepts(fn: object, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
