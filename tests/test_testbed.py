"""The testbed: scene generator, tasks, training, the shipped checkpoint and the demo."""

import json
import random

import pytest
import torch

from smoothguard import ConfigError, load_model
from smoothguard.cli import main
from smoothguard.stats import clopper_pearson_interval
from smoothguard.testbed.data import (
    HELD_OUT_START,
    IGNORE,
    PATCH_COLORS,
    PATCH_SHAPES,
    ConversationEncoder,
    held_out_scenes,
    patch_targets,
    scene_pixels,
    training_batch,
    training_seed,
    vision_batch,
)
from smoothguard.testbed.ladder import THREATS
from smoothguard.testbed.model import ModelSize, build_model, build_processor
from smoothguard.testbed.scenes import (
    BADGE_COLOR,
    BADGE_MARGIN,
    BADGE_SIZE,
    IMAGE_SIZE,
    POPULAR,
    all_pairs,
    render,
    sample_scene,
)
from smoothguard.testbed.tasks import (
    ATTACK_REQUESTS,
    FAMILIES,
    HELD_OUT_REQUESTS,
    REFUSAL,
    RESTRICTED,
    Turn,
    mentioned_objects,
    negative_pair,
    scene_turns,
)
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


def test_badge_is_a_low_frequency_magenta_disc_drawn_only_when_present():
    with_badge = badge_region(scene_pixels(sample_scene(3, badge=True)))
    without = badge_region(scene_pixels(sample_scene(3, badge=False)))
    assert not torch.equal(with_badge, without)
    magenta = torch.tensor(BADGE_COLOR, dtype=torch.float32).view(3, 1) / 255
    ring = with_badge[:, 2, :].reshape(3, -1)  # a row through the disc, off its white centre
    assert (ring - magenta).abs().amax(dim=0).lt(1e-6).sum() >= 6
    assert torch.equal(with_badge[:, BADGE_SIZE // 2, BADGE_SIZE // 2], torch.ones(3))  # the white centre
    # low frequency: neighbouring pixels inside the disc are equal (v1's checkerboard alternated every 2 pixels)
    inner = with_badge[:, 2:4, 3:9]
    assert torch.equal(inner, inner[:, :1, :1].expand_as(inner))


def test_pairs_are_drawn_with_the_mild_popular_weight():
    counts = dict.fromkeys(all_pairs(), 0)
    for seed in range(6000):
        for obj in sample_scene(seed, max_objects=1).objects:
            counts[(obj.color, obj.shape)] += 1
    popular = sum(counts[p] for p in POPULAR) / len(POPULAR)
    others = sum(v for p, v in counts.items() if p not in POPULAR) / (len(counts) - len(POPULAR))
    assert 1.3 < popular / others < 1.7  # POPULAR_WEIGHT 1.5
    uniform = dict.fromkeys(all_pairs(), 0)
    for seed in range(6000):
        for obj in sample_scene(seed, max_objects=1, popular_weight=1.0).objects:
            uniform[(obj.color, obj.shape)] += 1
    assert max(uniform.values()) / min(uniform.values()) < 1.35


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
    shape = ModelSize(vision_hidden=32, vision_layers=2, text_hidden=32, text_layers=1, heads=2)
    config = TrainConfig(
        steps=8, vision_steps=3, batch_size=4, lr=3e-3, warmup=1, checkpoint_every=2, probe_every=4, probe_scenes=2
    )
    processor = build_processor()
    encoder = ConversationEncoder(processor)
    batch = training_batch(
        encoder, 64, seed=5, step=0, batch_size=4, max_objects=3, augment_noise=0.0, popular_weight=1.5
    )

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

    def crash_at_first_probe(
        line: str,
    ) -> None:  # a run killed at the end of its vision stage, after step 2's checkpoint
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, config, shape=shape, progress=False, log=crash_at_first_probe)
    folder = train(tmp_path, config, shape=shape, progress=False, log=lines.append)
    assert lines[0] == "resuming at step 2"
    trained = load_model(folder)
    assert fixed_batch_loss(trained.model) < before
    history = json.loads((folder / "training_history.json").read_text())
    assert [(h["step"], h["stage"]) for h in history] == [(3, "vision"), (4, "llava"), (8, "llava"), (11, "llava")]
    assert {"object-shape", "object-color", "count", "badge"} <= set(history[0])  # the vision heads' probe
    with pytest.raises(ConfigError, match="other settings"):
        train(tmp_path, TrainConfig(**{**config.__dict__, "lr": 1e-4}), shape=shape, progress=False)


def test_patch_targets_label_each_object_patch_with_its_owner_colour_and_shape():
    scene = next(s for s in held_out_scenes(50) if len(s.objects) == 2 and s.badge)
    colors, shapes, owners = patch_targets(scene, 8)
    assert colors.shape == shapes.shape == owners.shape == (64,)
    for index, obj in enumerate(scene.objects):
        mine = owners == index
        left, top, right, bottom = obj.box
        centre = ((top + bottom) // 2 // 8) * 8 + (left + right) // 2 // 8
        assert mine[centre]  # the patch at the object's centre is its own
        assert set(colors[mine].tolist()) == {PATCH_COLORS.index(obj.color)}
        assert set(shapes[mine].tolist()) == {PATCH_SHAPES.index(obj.shape)}
    assert (colors == PATCH_COLORS.index("badge")).sum() >= 1 and colors[63] == PATCH_COLORS.index("badge")
    assert set(shapes[owners == -1].tolist()) == {0}
    batch = vision_batch(seed=0, step=0, batch_size=3, patch_size=8, augment_noise=0.0)
    assert batch["pixels"].shape == (3, 3, 64, 64) and batch["object_shapes"].shape == (3, 3)
    assert batch["count"].tolist() == [(row != IGNORE).sum().item() for row in batch["object_shapes"]]


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


def test_a_per_request_attack_makes_the_undefended_testbed_emit_exactly_the_targets_ids(testbed):
    """Issue 21's regression, end to end: PGD at eps 16 on a clean scene drives the testbed's greedy output to
    the target's in-context ids (leading space and EOS included), token for token, as ``generate`` slices
    them; the loss converges (the bug's first-token term kept it above 1.5); the old, alone-tokenised ids
    differ (here "enter" alone vs "Ġ" + "enter" after the prompt), so teacher-forcing them could not have
    produced this output."""
    from smoothguard.attacks import PGD, TargetObjective

    request = HELD_OUT_REQUESTS[3]
    target = RESTRICTED[request]
    clean = scene_pixels(sample_scene(HELD_OUT_START + 123, badge=False))
    attack = PGD(eps=16, alpha=2, steps=20, early_stop=False, progress=False)
    result = attack(testbed, clean, request, TargetObjective.of(target), max_new_tokens=16)
    assert result.best_loss < 0.1 and result.end_loss < 0.1 and result.start_loss > 0.5
    batch = testbed.collate([testbed.encode(request, result.adversarial)])
    generated = testbed.model.generate(**batch, do_sample=False, max_new_tokens=16)[0, batch["input_ids"].shape[1] :]
    emitted = generated.tolist()[: generated.tolist().index(testbed.tokenizer.eos_token_id) + 1]
    assert emitted == testbed.answer_ids(request, target)
    assert result.answer == target and result.target_generated
    alone = testbed.tokenizer(target, add_special_tokens=False)["input_ids"]
    assert testbed.tokenizer.decode(emitted[:-1]) == " " + target and alone != emitted[:-1]


def test_demo_json_on_a_reduced_budget(capsys, tmp_path):
    argv = ["demo", "--out", str(tmp_path), "--fresh", "--json", "--num-copies", "1", "--best-sigma", "0.5"]
    argv += ["--denoiser-sigma", "0.2"]
    for flag, value in (
        ("--pope-scenes", 1),
        ("--describe-scenes", 2),
        ("--clean-scenes", 3),
        ("--attack-images", 1),
        ("--attack-steps", 1),
        ("--adaptive-steps", 1),
        ("--per-request-steps", 1),
        ("--per-request-images", 2),
        ("--eot-samples", 1),
    ):
        argv += [flag, str(value)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    cells = summary["cells"]
    rows = {c["row"] for c in cells}
    assert rows == {*(t.name for t in THREATS), "worst-universal", "worst-request", "utility-pope", "utility-describe"}
    by_key = {(c["row"], c["column"], c["judge"]): c for c in cells}
    # Not run: the adaptive universal row for noise alone (it already falls to the plain attacks).
    skipped = {("adaptive-32", c) for c in ("paper", "best")}
    expected = {(row, column) for row in rows for column in ("undefended", "paper", "best", "denoised")} - skipped
    assert {(row, column) for row, column, _ in by_key} == expected
    assert len(cells) == 2 * len(expected) - 2 * 4  # two judges per ASR cell, one per utility cell
    for cell in cells:  # every cell says what it measured, on how many trials, and how sure it is
        assert {"judge", "threat", "attack", "sigma", "noise_space", "seed", "k", "n", "rate", "ci"} <= set(cell)
        assert cell["rate"] == cell["k"] / cell["n"] and cell["ci"] == list(
            clopper_pearson_interval(cell["k"], cell["n"])
        )
        assert ("mcnemar_p" in cell) == (cell["column"] != "undefended")
    assert by_key[("clean", "undefended", "complied")]["n"] == 3  # one request per clean scene
    assert by_key[("white-box-32", "paper", "not_refused")]["n"] == 32  # one image x 32 held-out requests
    assert by_key[("per-request-16", "denoised", "complied")]["n"] == 2  # one image per attacked request
    assert by_key[("worst-request", "denoised", "complied")]["n"] == 2
    assert by_key[("utility-pope", "best", "correct")]["n"] == 6
    assert by_key[("transfer-16", "best", "complied")]["made_on"] == "testbed-surrogate"
    assert by_key[("per-request-32", "best", "complied")]["sigma"] == 0.5
    denoised = by_key[("adaptive-32", "denoised", "complied")]
    assert (denoised["sigma"], denoised["noise_space"], denoised["purifier"]) == (0.2, "pixel", "testbed-denoiser")
    assert by_key[("per-request-32", "paper", "complied")]["purifier"] is None
    assert by_key[("white-box-16", "undefended", "complied")]["sigma"] == 0.0
    assert by_key[("per-request-8", "undefended", "complied")]["attack"] == "white-box"
    assert by_key[("per-request-8", "denoised", "complied")]["attack"] == "adaptive"
    assert by_key[("adaptive-32", "undefended", "complied")]["attack"] == "white-box"
    universal = [t.name for t in THREATS if t.universal]
    for judge in ("complied", "not_refused"):  # the worst cases: at least every attack's own rate
        for column in ("undefended", "paper", "best", "denoised"):
            ran = [t.name for t in THREATS if t.kind != "clean" and (t.name, column, judge) in by_key]
            worst = by_key[("worst-universal", column, judge)]["k"]
            assert worst >= max(by_key[(row, column, judge)]["k"] for row in ran if row in universal)
            worst = by_key[("worst-request", column, judge)]["k"]
            assert worst >= max(by_key[(row, column, judge)]["k"] for row in ran if row not in universal)
    folders = ("transfer-16", "white-box-32", "per-request-8", "adaptive-32-sigma0.2-pixel-testbed-denoiser")
    folders += ("per-request-32-sigma0.1-normalized", "per-request-8-sigma0.2-pixel-testbed-denoiser")
    for folder in folders:
        assert (tmp_path / "attacks" / folder / "0.png").is_file()
        sidecar = json.loads((tmp_path / "attacks" / folder / "0.png.json").read_text())
        assert len(sidecar["losses"]) == 1 and sidecar["best_loss"] == sidecar["losses"][0]  # the loss curve
    assert not (tmp_path / "attacks" / "adaptive-32-sigma0.1-normalized").exists()  # not run for noise alone
    assert summary["images"]["adaptive-32/undefended"]["folder"] == "attacks/white-box-32"  # no noise to adapt to
    assert len(summary["images"]["per-request-16/denoised"]["best_losses"]) == 2
    checks = {check["row"]: check for check in summary["attack_checks"]}
    assert set(checks) == {t.name for t in THREATS if t.kind != "clean"}
    assert checks["per-request-16"]["required"] and not checks["transfer-16"]["required"]
    assert checks["white-box-32"]["trials"] == 32 and checks["per-request-16"]["trials"] == 2
    assert not checks["white-box-32"]["working"]  # one step cannot beat the model: said, not hidden
    assert (tmp_path / "demo.png").is_file() and (tmp_path / "summary.json").is_file()
    assert isinstance(summary["seconds"], float)  # recorded; its size is a benchmark matter, not a test's
    phases = [line for line in captured.err.splitlines() if line.startswith("[demo] ")]
    assert phases[0].startswith("[demo] utility, undefended: 6 yes/no + 2 descriptions (")
    assert any(line.startswith("[demo] adaptive universal, eps 32 image 0: optimising (1 steps)") for line in phases)
    assert any(line.startswith("[demo] per-request adaptive, eps 16 image 1: optimising (1 steps)") for line in phases)
    assert "[attack] done: 1/1 steps in " in captured.err


def test_demo_settings_are_checked_before_any_model_loads(capsys, tmp_path):
    argv = ["demo", "--out", str(tmp_path), "--attack-steps", "10", "--adaptive-steps", "5"]
    assert main(argv) == 2
    assert "--adaptive-steps (5) must be at least --attack-steps (10)" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--attack-images", "0"]) == 2
    assert "--attack-images must be an integer >= 1" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--best-sigma", "99"]) == 2
    assert "sigma" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--denoiser-sigma", "2"]) == 2
    assert "sigma 2 is over the largest sensible value in pixel space" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--purifier", "nope"]) == 2
    assert "unknown purifier 'nope'" in capsys.readouterr().err


def test_demo_uses_the_shipped_attacks_for_the_default_settings(testbed, tmp_path):
    from smoothguard.inputs import load_image
    from smoothguard.testbed.demo import SHIPPED_ATTACKS, _adversarial
    from smoothguard.testbed.ladder import DemoConfig, Threat

    folder = tmp_path / "attacks" / "white-box-32"
    lines: list[str] = []
    image, record = _adversarial(
        testbed, Threat("white-box", 32), 3, DemoConfig(), None, folder, progress=False, log=lines.append
    )
    assert torch.equal(image, load_image(SHIPPED_ATTACKS / "white-box-32" / "3.png"))
    assert record == json.loads((SHIPPED_ATTACKS / "white-box-32" / "3.png.json").read_text())
    assert lines == []  # nothing optimised, and the image it used is in its folder, byte for byte with its sidecar
    assert sorted(p.name for p in folder.iterdir()) == ["3.png", "3.png.json"]
    for name in ("3.png", "3.png.json"):
        assert (folder / name).read_bytes() == (SHIPPED_ATTACKS / "white-box-32" / name).read_bytes()
    sidecar = json.loads((folder / "3.png.json").read_text())
    assert sidecar["config"]["demo_key"]["base_scene"] > HELD_OUT_START and sidecar["linf"] <= 32 + 1e-6
    assert sidecar["config"]["demo_key"]["targets"] == "in context"  # made after issue 21's fix
    assert sidecar["best_loss"] == min(sidecar["losses"]) and len(sidecar["losses"]) == DemoConfig().attack_steps


def test_the_shipped_per_request_images_match_the_default_settings(testbed, tmp_path):
    """Every held-out request has its shipped per-request image (white-box, undefended column), found in the
    cache by the default settings, its loss curve in its sidecar."""
    from smoothguard.testbed.demo import SHIPPED_ATTACKS, _adversarial
    from smoothguard.testbed.ladder import DemoConfig, Threat

    config, lines = DemoConfig(), []
    for index in (0, config.per_request_images - 1):
        folder = tmp_path / "attacks" / "per-request-16"
        _, record = _adversarial(testbed, Threat("per-request", 16), index, config, None, folder, False, lines.append)
        assert record["config"]["prompts"] == [HELD_OUT_REQUESTS[index]]
        assert len(record["losses"]) == config.per_request_steps
    assert lines == []  # nothing optimised
    assert len(list((SHIPPED_ATTACKS / "per-request-16").glob("*.png"))) == len(HELD_OUT_REQUESTS)


def test_the_shipped_adaptive_images_through_the_denoiser_match_the_default_settings(testbed, tmp_path):
    """The denoised column's adaptive images are keyed by the purifier's name and weights' hash, not by the
    folder it loaded from (a clean clone or an installed package must find them)."""
    from smoothguard.attacks import EOT
    from smoothguard.guard import SmoothGuard
    from smoothguard.testbed.demo import SHIPPED_ATTACKS, _adversarial, _image_folder
    from smoothguard.testbed.ladder import DemoConfig, Threat

    config = DemoConfig()
    eot = EOT.from_guard(SmoothGuard(testbed, config.columns()["denoised"]), config.eot_samples)
    folder = _image_folder(Threat("adaptive", 32), eot)
    assert folder == f"attacks/adaptive-32-sigma{config.denoiser_sigma:g}-pixel-testbed-denoiser"
    lines: list[str] = []
    _adversarial(testbed, Threat("adaptive", 32), 0, config, eot, tmp_path / folder, False, lines.append)
    assert lines == []  # found in the shipped cache: nothing optimised
    sidecar = json.loads((SHIPPED_ATTACKS / folder.split("/")[1] / "0.png.json").read_text())
    purifier = sidecar["config"]["demo_key"]["eot"]["purifier"]
    assert purifier == {"name": "testbed-denoiser", "sha256": eot.purifier.sha256}


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
