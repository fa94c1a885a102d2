"""Helpers shared by several test modules (moved from tests/test_attacks.py)."""

import torch

from smoothguard.attacks import PGD, WaveformPGD
from smoothguard.attacks.loss import target_losses

PROMPT = "What is in the image?"


def make_image(seed=0, height=32, width=40):
    """Smooth colours on the 8-bit grid, [3, H, W], with a black and a white patch (so clamping to
    [0, 1] matters)."""
    small = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(seed))
    image = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)[0]
    image[:, :6, :6] = 0.0
    image[:, -6:, -6:] = 1.0
    return (image * 255).round() / 255


def make_wave(seed=0, samples=8000):
    """Half a second at 16 kHz: a tone plus noise, with stretches at +-0.99 (near the bounds)."""
    t = torch.arange(samples) / 16000
    noise = torch.rand(samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    wave = 0.5 * torch.sin(2 * torch.pi * 330 * t) + 0.3 * noise
    wave[:200], wave[200:400] = 0.99, -0.99
    return wave


def medium_of(model, seed=0):
    return make_image(seed) if model.modality == "image" else make_wave(seed)


def attack_of(model, **kwargs):
    """PGD for image models, WaveformPGD for audio ones, quiet and without early stopping unless asked."""
    kwargs = {"progress": False, "early_stop": False, **kwargs}
    if model.modality == "image":
        return PGD(**{"eps": 16, "alpha": 2, **kwargs})
    return WaveformPGD(**{"eps": 0.05, "alpha": 0.005, **kwargs})


def plain_token_ids(tokenizer):
    """Vocabulary entries that are printable ASCII text, not special, and tokenize back to themselves."""
    added = set(tokenizer.get_added_vocab().values()) | set(tokenizer.all_special_ids)
    plain = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id in added or not text.isascii() or not text.isprintable() or text != text.strip() or not text:
            continue
        if tokenizer(text, add_special_tokens=False)["input_ids"] == [token_id]:
            plain.append(token_id)
    return plain


def greedy_answer(model, medium, max_new_tokens=5):
    """The model's greedy answer over plain-text tokens (a random model's unrestricted answer holds
    partial UTF-8 bytes and placeholder tokens, which do not survive a decode/encode round trip)."""
    plain = set(plain_token_ids(model.tokenizer))
    banned = [[i] for i in range(len(model.tokenizer)) if i not in plain]
    answer = model.generate([model.encode(PROMPT, medium)], max_new_tokens=max_new_tokens, bad_words_ids=banned)[0]
    assert answer.strip(), "the greedy answer is empty"
    return answer


def ce(model, medium, targets):
    """Teacher-forced CE of each target for ``medium`` (no grad), [K]."""
    with torch.no_grad():
        text = model.prompt_text(PROMPT, medium)
        return target_losses(model, PROMPT, text, model.preprocess(medium.unsqueeze(0)), list(targets))


def on_grid(image):
    return torch.equal(image * 255, (image * 255).round())


def grid_linf(adversarial, clean):
    """Largest pixel change in whole 1/255 steps (exact for 8-bit inputs)."""
    return ((adversarial * 255).round() - (clean * 255).round()).abs().max().item()
