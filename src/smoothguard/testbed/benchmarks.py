"""Testbed benchmarks for the evaluation runner (no data folder: items come from held-out seeds).

- ``testbed-pope``: existence questions about badge-free scenes, per split (random, popular,
  adversarial negatives) one question about a present object (yes) and one negative (no); scored
  with LLaVA's POPE parsing and metrics.
- ``testbed-safety``: every restricted request on badge-free scenes, or all on one universal
  adversarial image (``universal_image``); attack success rate = share of answers the judge finds
  unsafe (default judge: ``refusal``, i.e. not refused).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from smoothguard.errors import ConfigError
from smoothguard.eval.base import Benchmark, EvalItem, Scores
from smoothguard.eval.judges import Judge, SafetyCase, SafetyJudge
from smoothguard.eval.mm_safety import asr_scores
from smoothguard.eval.pope import parse_yes_no, pope_scores
from smoothguard.inputs import load_image
from smoothguard.testbed.data import held_out_scenes, scene_pixels
from smoothguard.testbed.tasks import NEGATIVE_KINDS, RESTRICTED, existence_turns


class TestbedPopeBenchmark(Benchmark):
    name = "testbed-pope"
    max_new_tokens = 8
    kind = "utility"
    headline = ("mean.accuracy", "mean.f1")
    needs_data = False

    def load_items(self, data_dir: Any = None, num_scenes: int = 100) -> list[EvalItem]:
        rng = random.Random(2024)
        items = []
        for index, scene in enumerate(held_out_scenes(int(num_scenes), badge=False)):
            pixels = scene_pixels(scene)
            for split in NEGATIVE_KINDS:
                for turn in existence_turns(scene, rng, split):
                    items.append(
                        EvalItem(
                            f"{split}-{index}-{turn.answer}",
                            turn.question,
                            pixels,
                            {"split": split, "label": turn.answer},
                        )
                    )
        return items

    def assess(self, items: Sequence[EvalItem], answers: Sequence[str], judge: Judge | None) -> list[dict[str, Any]]:
        return [{"prediction": "yes" if parse_yes_no(answer) else "no"} for answer in answers]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        return pope_scores((r["meta"]["split"], parse_yes_no(r["text"]), r["meta"]["label"] == "yes") for r in records)


class TestbedSafetyBenchmark(Benchmark):
    name = "testbed-safety"
    max_new_tokens = 16
    kind = "safety"
    headline = ("all.asr",)
    judges = ("refusal", "guard-model")
    judge_required = True
    needs_data = False

    def load_items(self, data_dir: Any = None, num_scenes: int = 5, universal_image: Any = None) -> list[EvalItem]:
        """Every restricted request on ``num_scenes`` badge-free scenes, or on ``universal_image``
        (a path, PIL image or [3, H, W] tensor) in place of every image, then one scene suffices."""
        replacement = None if universal_image is None else load_image(universal_image, name="universal image")
        scenes = held_out_scenes(1 if replacement is not None else int(num_scenes), badge=False)
        return [
            EvalItem(
                f"{index}-{number}",
                request,
                scene_pixels(scene) if replacement is None else replacement,
                {"request": number},
            )
            for index, scene in enumerate(scenes)
            for number, request in enumerate(RESTRICTED)
        ]

    def assess(self, items: Sequence[EvalItem], answers: Sequence[str], judge: Judge | None) -> list[dict[str, Any]]:
        if not isinstance(judge, SafetyJudge):
            raise ConfigError(f"{self.name} needs a safety judge ({', '.join(self.judges)})")
        verdicts = judge.judge([SafetyCase(item.prompt, answer) for item, answer in zip(items, answers, strict=True)])
        return [verdict.to_record() for verdict in verdicts]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        return asr_scores((f"request-{r['meta']['request']}", r["verdict"]) for r in records)
