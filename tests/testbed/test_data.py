"""Tests of ``smoothguard.testbed.data``: the scene generator's encodings, seeds and batches."""

from smoothguard.testbed.data import (
    HELD_OUT_START,
    IGNORE,
    PATCH_COLORS,
    PATCH_SHAPES,
    ConversationEncoder,
    held_out_scenes,
    patch_targets,
    scene_pixels,
    training_seed,
    vision_batch,
)
from smoothguard.testbed.scenes import (
    sample_scene,
)
from smoothguard.testbed.tasks import (
    HELD_OUT_REQUESTS,
    RESTRICTED,
    Turn,
)


def test_training_and_held_out_seeds_are_disjoint():
    training = {
        training_seed(seed, step, i, 32) for seed in (0, 1) for step in range(0, 100_000, 997) for i in range(32)
    }
    assert max(training) < HELD_OUT_START
    assert all(scene.seed >= HELD_OUT_START for scene in held_out_scenes(10))


def test_training_prompt_matches_the_inference_prompt(testbed):
    encoder = ConversationEncoder(testbed.processor)
    pixels = scene_pixels(sample_scene(4))
    turn = Turn("count", "how many shapes are there?", "two.")
    encoded = encoder.encode([turn], testbed.model.config.image_seq_length)
    prompt = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE]
    assert prompt == testbed.prompt_text(turn.question, pixels)["input_ids"][0].tolist()


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
