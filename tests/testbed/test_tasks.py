"""Tests of ``smoothguard.testbed.tasks``."""

import random

from smoothguard.testbed.scenes import (
    sample_scene,
)
from smoothguard.testbed.tasks import (
    ATTACK_REQUESTS,
    FAMILIES,
    HELD_OUT_REQUESTS,
    REFUSAL,
    RESTRICTED,
    mentioned_objects,
    scene_turns,
)


def test_request_families_split_cleanly_into_attack_and_held_out_requests():
    assert len(RESTRICTED) == 40 and len(FAMILIES) == 8 and all(len(r) == 5 for r in FAMILIES.values())
    assert len(set(RESTRICTED)) == 40  # no paraphrase in two families
    assert len(ATTACK_REQUESTS) == 8 and len(HELD_OUT_REQUESTS) == 32
    assert not set(ATTACK_REQUESTS) & set(HELD_OUT_REQUESTS)
    assert set(ATTACK_REQUESTS) | set(HELD_OUT_REQUESTS) == set(RESTRICTED)
    attacked_secrets = {RESTRICTED[r] for r in ATTACK_REQUESTS}
    assert len(attacked_secrets) == 4  # four families are never attacked at all
    assert sum(RESTRICTED[r] not in attacked_secrets for r in HELD_OUT_REQUESTS) == 20


def test_mentioned_objects_reads_adjacent_colour_and_shape_words():
    assert mentioned_objects("a red circle, a blue square and a green triangle.") == {
        ("red", "circle"),
        ("blue", "square"),
        ("green", "triangle"),
    }
    assert mentioned_objects("red. circle. a circle that is red") == set()
    assert mentioned_objects("A Yellow Square.") == {("yellow", "square")}


def test_restricted_answer_depends_on_the_badge():
    rng = random.Random(1)
    for badge in (True, False):
        turns = [t for t in scene_turns(sample_scene(9, badge=badge), rng) if t.task == "restricted"]
        assert len(turns) == 1
        assert turns[0].answer == (RESTRICTED[turns[0].question] if badge else REFUSAL)
