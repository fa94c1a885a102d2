"""Did the attack work? Decode an (attacked) input undefended and through SmoothGuard."""

from __future__ import annotations

from typing import Any

from smoothguard.answers import target_generated
from smoothguard.guard import SmoothGuard


def check_attack(
    guard: SmoothGuard, prompt: str, medium: Any, target: str | None = None, *, max_new_tokens: int = 64
) -> dict[str, Any]:
    """Answers to ``prompt`` about ``medium`` (image or audio, per the guard's model) from the
    undefended model (greedy, clean input only) and from ``guard``; with ``target``, whether each
    answer contains it (case and whitespace insensitive)."""
    media = {guard.model.modality: medium}
    undefended = SmoothGuard(guard.model, num_copies=0).generate(prompt, max_new_tokens=max_new_tokens, **media)
    defended = guard.generate(prompt, max_new_tokens=max_new_tokens, **media)

    def verdict(answer: str) -> bool | None:
        return None if target is None else target_generated(answer, target)

    return {
        "target": target,
        "undefended": {"answer": undefended.text, "target_generated": verdict(undefended.text)},
        "smoothguard": {
            "answer": defended.text,
            "target_generated": verdict(defended.text),
            "majority_fraction": defended.majority_fraction,
            "candidates_with_target": None
            if target is None
            else sum(target_generated(c, target) for c in defended.candidates),
            "num_candidates": len(defended.candidates),
            "sigma": defended.config["sigma"],
            "noise_space": defended.config["noise_space"],
        },
    }
