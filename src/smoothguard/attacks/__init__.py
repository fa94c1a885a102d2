"""Attacks on multimodal LLMs through the same adapter path the defense uses."""

from smoothguard.lazy import lazy_exports

#: Perturbation norms of ``PGD`` (here, not in ``pgd.py``, so that the command line needs no torch).
NORMS = ("linf", "l2")
#: Step-size schedules of ``PGD``.
SCHEDULES = ("constant", "cosine")

_EXPORTS = {
    "Attack": "smoothguard.attacks.base",
    "AttackResult": "smoothguard.attacks.base",
    "AwayObjective": "smoothguard.attacks.objectives",
    "EOT": "smoothguard.attacks.eot",
    "Objective": "smoothguard.attacks.objectives",
    "PGD": "smoothguard.attacks.pgd",
    "StrengthCheck": "smoothguard.attacks.strength",
    "TargetObjective": "smoothguard.attacks.objectives",
    "UniversalJailbreak": "smoothguard.attacks.universal",
    "WaveformPGD": "smoothguard.attacks.audio",
    "check_attack": "smoothguard.attacks.success",
    "check_strength": "smoothguard.attacks.strength",
    "check_output_path": "smoothguard.attacks.io",
    "load_prompts": "smoothguard.attacks.io",
    "load_targets": "smoothguard.attacks.io",
    "save_adversarial": "smoothguard.attacks.io",
    "target_generated": "smoothguard.answers",
}
__all__ = ["NORMS", "SCHEDULES", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
