"""Attacks on multimodal LLMs through the same adapter path the defense uses."""

from smoothguard.attacks.audio import WaveformPGD
from smoothguard.attacks.eot import EOT
from smoothguard.attacks.objectives import AwayObjective, Objective, TargetObjective
from smoothguard.attacks.pgd import PGD, AttackResult, target_generated
from smoothguard.attacks.success import check_attack
from smoothguard.attacks.universal import (
    UniversalJailbreak,
    check_output_path,
    load_prompts,
    load_targets,
    save_adversarial,
)

__all__ = [
    "EOT",
    "PGD",
    "AttackResult",
    "AwayObjective",
    "Objective",
    "TargetObjective",
    "UniversalJailbreak",
    "WaveformPGD",
    "check_attack",
    "check_output_path",
    "load_prompts",
    "load_targets",
    "save_adversarial",
    "target_generated",
]
