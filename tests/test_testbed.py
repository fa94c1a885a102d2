"""The testbed: scene generator, tasks, training, the shipped checkpoint and the demo."""

import json
import random

import pytest
import torch

from smoothguard import ConfigError, load_model
from smoothguard.cli import main
from smoothguard.testbed.data import (
    HELD_OUT_START,
    IGNORE,
    ConversationEncoder,
    held_out_scenes,
    scene_pixels,
    training_batch,
    training_seed,
)
from smoothguard.testbed.model import ModelSize, build_model, build_processor
from smoothguard.testbed.scenes import BADGE_MARGIN, BADGE_SIZE, IMAGE_SIZE, POPULAR, render, sample_scene
from smoothguard.testbed.tasks import REFUSAL, RESTRICTED, Turn, negative_pair, scene_turns
from smoothguard.testbed.train import TrainConfig, train, turn_weighted_loss


@pytest.fixture(scope="module")
def testbed():
    return load_model("testbed")


def badge_region(pixels: torch.Tensor) -> torch.Tensor:
    start = IMAGE_SIZE - BADGE_SIZE - BADGE_MARGIN
    return pixels[:, start : start + BADGE_SIZE, start : start + BADGE_SIZE]


def test_scenes_are_a_function_of_their_seed():
    assert sample_scene(17) == sample_scene(17)
    assert torch.equal(scene_pixels(sample_scene(17)), scene_pixels(sample_scene(17)))
    assert sample_scene(17) != sample_scene(18)
    assert render(sample_scene(5)).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_every_seed_gives_one_to_three_separate_objects():
    for seed in range(3000):
        boxes = [o.box for o in sample_scene(seed).objects]
        assert 1 <= len(boxes) <= 3
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_training_and_held_out_seeds_are_disjoint():
    training = {
        training_seed(seed, step, i, 32) for seed in (0, 1) for step in range(0, 100_000, 997) for i in range(32)
    }
    assert max(training) < HELD_OUT_START
    assert all(scene.seed >= HELD_OUT_START for scene in held_out_scenes(10))


def test_badge_is_drawn_only_when_present():
    with_badge = badge_region(scene_pixels(sample_scene(3, badge=True)))
    without = badge_region(scene_pixels(sample_scene(3, badge=False)))
    assert set(with_badge.unique().tolist()) == {0.0, 1.0}  # black-and-white checkerboard
    assert not torch.equal(with_badge, without)
    assert with_badge[:, 0, 0].sum() == 0 and with_badge[:, 0, 2].sum() == 3


def test_negatives_of_each_kind():
    rng = random.Random(0)
    for seed in range(200):
        scene = sample_scene(seed)
        for kind in ("random", "popular", "adversarial"):
            pair = negative_pair(scene, kind, rng)
            if pair is None:
                continue
            assert pair not in scene.pairs
            if kind == "popular":
                assert pair in POPULAR
            if kind == "adversarial":
                assert any(pair[0] == o.color or pair[1] == o.shape for o in scene.objects)


def test_restricted_answer_depends_on_the_badge():
    rng = random.Random(1)
    for badge in (True, False):
        turns = [t for t in scene_turns(sample_scene(9, badge=badge), rng) if t.task == "restricted"]
        assert len(turns) == 1
        assert turns[0].answer == (RESTRICTED[turns[0].question] if badge else REFUSAL)


def test_training_prompt_matches_the_inference_prompt(testbed):
    encoder = ConversationEncoder(testbed.processor)
    pixels = scene_pixels(sample_scene(4))
    turn = Turn("count", "how many shapes are there?", "two.")
    encoded = encoder.encode([turn], testbed.model.config.image_seq_length)
    prompt = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE]
    assert prompt == testbed.prompt_text(turn.question, pixels)["input_ids"][0].tolist()


def test_turn_weighted_loss_weighs_every_turn_equally():
    logits = torch.zeros(1, 6, 5)
    logits[0, 0, 1] = 5.0  # predicts the one-token turn well
    labels = torch.tensor([[IGNORE, 1, IGNORE, 2, 2, 2]])
    turns = torch.tensor([[-1, 0, -1, 1, 1, 1]])
    loss = turn_weighted_loss(logits, labels, turns)
    per_token = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE, reduction="none")
    # each turn weighs 1: half on its first (deciding) token, half shared by all its tokens
    one_token_turn = per_token[0]
    three_token_turn = 0.5 * per_token[2] + 0.5 * per_token[2:5].mean()
    assert loss.item() == pytest.approx(((one_token_turn + three_token_turn) / 2).item())


def test_short_training_lowers_the_loss_resumes_and_exports(tmp_path):
    shape = ModelSize(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, heads=2)
    config = TrainConfig(steps=8, batch_size=4, lr=3e-3, warmup=1, checkpoint_every=2, probe_every=4, probe_scenes=2)
    processor = build_processor()
    encoder = ConversationEncoder(processor)
    batch = training_batch(encoder, 64, seed=5, step=0, batch_size=4, max_objects=3, augment_noise=0.0)

    def fixed_batch_loss(model) -> float:
        from smoothguard.models.image_ops import ClipStylePreprocessor

        pixel_path = ClipStylePreprocessor.from_image_processor(processor.image_processor)
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=pixel_path(batch["pixels"]),
            ).logits
        return turn_weighted_loss(logits.float(), batch["labels"], batch["turn_ids"]).item()

    before = fixed_batch_loss(build_model(processor, shape, seed=config.seed))
    lines: list[str] = []

    def crash_at_first_probe(line: str) -> None:  # a run killed after its step-2 checkpoint
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, config, shape=shape, progress=False, log=crash_at_first_probe)
    folder = train(tmp_path, config, shape=shape, progress=False, log=lines.append)
    assert lines[0] == "resuming at step 2"
    trained = load_model(folder)
    assert fixed_batch_loss(trained.model) < before
    history = json.loads((folder / "training_history.json").read_text())
    assert [h["step"] for h in history] == [4, 8]
    with pytest.raises(ConfigError, match="other settings"):
        train(tmp_path, TrainConfig(**{**config.__dict__, "lr": 1e-4}), shape=shape, progress=False)


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


def test_demo_json_on_a_reduced_budget(capsys, tmp_path):
    argv = [
        "demo",
        "--out",
        str(tmp_path),
        "--pope-scenes",
        "2",
        "--attack-steps",
        "2",
        "--adaptive-steps",
        "1",
        "--eot-samples",
        "2",
        "--num-copies",
        "2",
        "--json",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    for key in ("utility", "asr", "asr_adaptive", "asr_clean"):
        assert set(summary[key]) == {"undefended", "smoothguard"}
        assert all(0.0 <= v <= 1.0 for v in summary[key].values())
    recorded_duration = summary["seconds"]  # present and positive; its size is a benchmark matter
    assert recorded_duration > 0 and summary["counts"]["safety_items"] == len(RESTRICTED)
    for name in ("clean.png", "universal.png", "adaptive.png", "demo.png", "summary.json", "universal.png.json"):
        assert (tmp_path / name).is_file()
    assert all((tmp_path / name).is_file() for name in summary["images"].values())  # every image it lists
    # its phases, one line each on stderr (not a terminal here), and the attacks' own progress lines
    phases = [line for line in captured.err.splitlines() if line.startswith("[demo] ")]
    assert [line.split(":")[0].split(" (")[0] for line in phases] == [
        "[demo] measuring utility on 12 testbed-pope items, undefended and through SmoothGuard",
        "[demo] utility, 12 testbed-pope items",
        "[demo] universal image",
        "[demo] universal image",
        "[demo] adaptive image",
        "[demo] adaptive image",
        f"[demo] ASR, clean image, {len(RESTRICTED)} restricted requests",
        f"[demo] ASR, universal image, {len(RESTRICTED)} restricted requests",
        f"[demo] ASR, adaptive image, {len(RESTRICTED)} restricted requests",
    ]
    u, s = summary["utility"]["undefended"], summary["utility"]["smoothguard"]
    assert phases[0].endswith("(sigma 0.1 normalized, 2 copies + the clean one)")
    assert phases[1].startswith(f"[demo] utility, 12 testbed-pope items: undefended {u:.3f}, SmoothGuard {s:.3f} (")
    assert "optimising (2 steps)" in phases[2] and phases[3].endswith(str(tmp_path / "universal.png"))
    assert "optimising (1 steps)" in phases[4] and phases[5].endswith(str(tmp_path / "adaptive.png"))
    assert "[attack] 0/2 steps" in captured.err and "[attack] done: 1/1 steps in " in captured.err


def test_demo_uses_the_shipped_attacks_for_the_default_settings(testbed, tmp_path):
    from smoothguard.inputs import load_image
    from smoothguard.testbed.demo import SHIPPED_ATTACKS, DemoConfig, _adversarial

    clean = scene_pixels(held_out_scenes(1, badge=False)[0])
    lines: list[str] = []
    image = _adversarial(testbed, clean, "universal", DemoConfig(), None, tmp_path, progress=False, log=lines.append)
    assert torch.equal(image, load_image(SHIPPED_ATTACKS / "universal.png"))
    # nothing optimised (no checkpoint), and the image it used is in the out folder, byte for byte with its sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["universal.png", "universal.png.json"]
    for name in ("universal.png", "universal.png.json"):
        assert (tmp_path / name).read_bytes() == (SHIPPED_ATTACKS / name).read_bytes()
    assert lines == [
        f"[demo] universal image: shipped with the package (eps 32/255, 300 steps) -> {tmp_path}/universal.png"
    ]
    # a second call finds the copy in the out folder
    again = _adversarial(testbed, clean, "universal", DemoConfig(), None, tmp_path, progress=False, log=lines.append)
    assert torch.equal(again, image) and lines[-1].startswith(f"[demo] universal image: cached in {tmp_path} ")
