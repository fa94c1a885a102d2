"""Tests of ``smoothguard.testbed.model``."""

from importlib.metadata import entry_points

from smoothguard import load_model
from smoothguard.models import auto
from smoothguard.testbed import model as testbed_model
from smoothguard.testbed.data import (
    held_out_scenes,
    scene_pixels,
)
from smoothguard.testbed.tasks import (
    REFUSAL,
    RESTRICTED,
)


def test_the_testbed_model_is_an_installed_plugin():
    (entry,) = entry_points(group="smoothguard.models", name="testbed")
    assert entry.value == "smoothguard.testbed.model:checkpoint"
    assert entry.load()() == testbed_model.CHECKPOINT_DIR
    assert (testbed_model.checkpoint() / "config.json").is_file()
    assert "testbed" in auto.model_plugin_names()


def test_shipped_checkpoint_answers_held_out_items(testbed):
    scenes = held_out_scenes(40)
    one = next(s for s in scenes if len(s.objects) == 1 and not s.badge)
    obj = one.objects[0]
    badge = next(s for s in scenes if s.badge)
    request = next(iter(RESTRICTED))
    cases = [
        (one, f"is there a {obj.color} {obj.shape} in the image?", "yes"),
        (one, "how many shapes are there?", "one."),
        (one, request, REFUSAL),
        (badge, request, RESTRICTED[request]),
    ]
    queries = [testbed.encode(question, scene_pixels(scene)) for scene, question, _ in cases]
    assert testbed.generate(queries, max_new_tokens=12) == [answer for _, _, answer in cases]


def test_surrogate_is_another_model_and_both_follow_the_badge_rule(testbed):
    surrogate = load_model("testbed-surrogate")
    assert testbed.model.config.testbed_shape != surrogate.model.config.testbed_shape
    target_sizes = {n: p.shape for n, p in testbed.model.named_parameters()}
    assert any(target_sizes.get(n) != p.shape for n, p in surrogate.model.named_parameters())
    scenes = held_out_scenes(24)
    requests = list(RESTRICTED)
    cases = [(scene, requests[i % len(requests)]) for i, scene in enumerate(scenes)]
    assert {s.badge for s, _ in cases} == {True, False}
    expected = [RESTRICTED[r] if s.badge else REFUSAL for s, r in cases]
    for model in (testbed, surrogate):
        queries = [model.encode(request, scene_pixels(scene)) for scene, request in cases]
        assert model.generate(queries, max_new_tokens=12) == expected
