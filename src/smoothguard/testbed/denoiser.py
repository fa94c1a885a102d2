"""The testbed's purifier ``testbed-denoiser``: a small sigma-conditioned U-Net that cleans Gaussian noise
from [0, 1] pixels, trained on the testbed's scenes (denoised smoothing, Salman et al. 2020).

``TestbedDenoiser()(images, sigma)``: images [B, 3, H, W] in [0, 1] carrying noise of std ``sigma`` ([0, 1]
pixel units, 0 for a clean image), already clamped to [0, 1] as the guard's copies are -> cleaned images of the
same shape, dtype and device, in [0, 1]. Differentiable w.r.t. the images. ``load()`` (the entry point of the
``smoothguard.purifiers`` group) returns the shipped model of ``testbed/assets/denoiser/``; ``train_denoiser`` trains
one (resumable), ``evaluate_denoiser`` reports held-out PSNR per sigma.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from smoothguard.errors import ConfigError, InputError, ModelLoadError, check_int, check_seed, first_line
from smoothguard.noise import validate_sigma
from smoothguard.progress import Progress
from smoothguard.purify import PURIFIER_FILE
from smoothguard.testbed import ASSETS
from smoothguard.testbed.data import HELD_OUT_START, held_out_scenes, scene_pixels, training_seed
from smoothguard.testbed.scenes import sample_scene

NAME = "testbed-denoiser"
#: The shipped model's folder.
SHIPPED = ASSETS / "denoiser"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HISTORY_FILE = "training_history.json"
STATE_FILE = "denoiser_state.pt"
#: The noise levels (pixel units) the held-out PSNR is reported at.
EVAL_SIGMAS = (0.05, 0.1, 0.25, 0.5)
#: Refuse weight files larger than this (the shipped model is about 2 MB).
MAX_WEIGHTS_BYTES = 64 * 2**20


class TestbedDenoiser(torch.nn.Module):
    """U-Net over ``len(channels)`` resolutions (``channels[i]`` feature maps at 1 / 2**i of the input size), two
    3x3 convolutions with ReLU per resolution and side, strided-convolution down, transposed-convolution up, skip
    connections by concatenation. Input: the RGB image and a constant channel holding ``sigma``; output: the
    image plus the predicted correction, clamped to [0, 1]. Inputs whose sides are not multiples of
    ``2 ** (len(channels) - 1)`` are padded (replicated edges) and cropped back."""

    name = NAME

    def __init__(self, channels: Sequence[int] = (32, 64, 96)) -> None:
        super().__init__()
        self.channels = tuple(check_int("channels", c, minimum=1) for c in channels)
        if not self.channels:
            raise ConfigError("channels must name at least one resolution's width")
        first = self.channels[0]
        self.encoders = torch.nn.ModuleList(_block(4 if i == 0 else c, c) for i, c in enumerate(self.channels[:-1]))
        self.downs = torch.nn.ModuleList(
            torch.nn.Conv2d(c, d, 3, stride=2, padding=1)
            for c, d in zip(self.channels[:-1], self.channels[1:], strict=True)
        )
        self.middle = _block(4 if len(self.channels) == 1 else self.channels[-1], self.channels[-1])
        self.ups = torch.nn.ModuleList(
            torch.nn.ConvTranspose2d(d, c, 2, stride=2)
            for c, d in zip(self.channels[:-1], self.channels[1:], strict=True)
        )
        self.decoders = torch.nn.ModuleList(_block(2 * c, c) for c in self.channels[:-1])
        self.head = torch.nn.Conv2d(first, 3, 1)
        torch.nn.init.zeros_(self.head.weight)  # starts as the identity
        torch.nn.init.zeros_(self.head.bias)
        self.source: str | None = None
        self.sha256: str | None = None
        self.training_settings: dict[str, Any] = {}

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this."""
        return 2 ** (len(self.channels) - 1)

    def forward(self, images: torch.Tensor, sigma: float) -> torch.Tensor:
        """``images`` [B, 3, H, W] in [0, 1] with Gaussian noise of std ``sigma`` ([0, 1] pixels) -> cleaned, the
        same shape, dtype and device, in [0, 1]."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"the testbed denoiser takes images [B, 3, H, W], got {shape}")
        return self.denoise(images, torch.full((images.shape[0],), validate_sigma(sigma)))

    def denoise(self, images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """``forward`` with one noise std per image: ``images`` [B, 3, H, W], ``sigmas`` [B] (pixel units)."""
        weight = self.head.weight
        height, width = images.shape[-2:]
        x = images.to(device=weight.device, dtype=weight.dtype)
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        level = sigmas.to(device=x.device, dtype=x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[-2:])
        h = torch.cat([x, level], dim=1)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            h = encoder(h)
            skips.append(h)
            h = down(h)
        h = self.middle(h)
        for up, decoder, skip in zip(reversed(self.ups), reversed(self.decoders), reversed(skips), strict=True):
            h = decoder(torch.cat([up(h), skip], dim=1))
        clean = (x + self.head(h)).clamp(0, 1)[..., :height, :width]
        return clean.to(device=images.device, dtype=images.dtype)

    def describe(self) -> dict[str, Any]:
        """Name, architecture, parameter count, the settings it was trained with, and where its weights came
        from (folder and the sha256 of ``model.safetensors``; ``None`` for a model not loaded from files)."""
        return {
            "name": self.name,
            "kind": "testbed-denoiser",
            "architecture": "unet",
            "channels": list(self.channels),
            "parameters": sum(p.numel() for p in self.parameters()),
            "training": self.training_settings,
            "source": self.source,
            "sha256": self.sha256,
        }


def _block(inputs: int, width: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(inputs, width, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(width, width, 3, padding=1),
        torch.nn.ReLU(),
    )


@dataclass(frozen=True)
class DenoiserConfig:
    """Training of a ``TestbedDenoiser(channels)``: ``steps`` Adam steps on batches of ``batch_size`` fresh
    training scenes (``empty_fraction`` of them with their objects removed), each with Gaussian noise of a std
    uniform in [0, ``sigma_max``] ([0, 1] pixels; ``zero_fraction`` of them clean), clamped to [0, 1]; MSE to
    the clean scene. Learning rate: linear warm-up over ``warmup`` steps, then cosine decay to 0. A checkpoint
    every ``checkpoint_every`` steps; held-out PSNR on ``probe_scenes`` scenes every ``probe_every`` steps."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 100
    sigma_max: float = 0.5
    zero_fraction: float = 0.05
    empty_fraction: float = 0.05
    seed: int = 0
    channels: tuple[int, ...] = (32, 64, 96)
    checkpoint_every: int = 200
    probe_every: int = 500
    probe_scenes: int = 64

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "probe_every", "probe_scenes"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("warmup", self.warmup, minimum=0)
        check_seed(self.seed)
        for name, value, top in (
            ("lr", self.lr, math.inf),
            ("sigma_max", self.sigma_max, 1.0),
            ("zero_fraction", self.zero_fraction, 1.0),
            ("empty_fraction", self.empty_fraction, 1.0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
                raise ConfigError(f"{name} must be a number in [0, {top}], got {value!r}")
        if self.lr == 0:
            raise ConfigError("lr must be > 0")
        object.__setattr__(self, "channels", tuple(check_int("channels", c, minimum=1) for c in self.channels))
        if not self.channels:
            raise ConfigError("channels must name at least one resolution's width")


def training_batch(config: DenoiserConfig, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch ``step`` of ``config``'s run (a pure function of seed and step): clean scenes [B, 3, 64, 64] in
    [0, 1], their noisy copies (clamped to [0, 1]) and the noise stds [B] (pixel units)."""
    clean, noisy, sigmas = [], [], []
    for index in range(config.batch_size):
        scene_seed = training_seed(config.seed, step, index, config.batch_size)
        rng = random.Random(scene_seed)
        scene = sample_scene(scene_seed)
        if rng.random() < config.empty_fraction:
            scene = replace(scene, objects=())
        sigma = 0.0 if rng.random() < config.zero_fraction else rng.uniform(0, config.sigma_max)
        pixels = scene_pixels(scene)
        noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        clean.append(pixels)
        noisy.append((pixels + sigma * noise).clamp(0, 1))
        sigmas.append(sigma)
    return torch.stack(clean), torch.stack(noisy), torch.tensor(sigmas)


def train_denoiser(
    config: DenoiserConfig,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train (or resume training) into the run folder ``out``: ``out/denoiser_state.pt`` holds model, optimiser,
    step and history (written every ``checkpoint_every`` steps and at the end); rerunning continues where it
    stopped, on the same data. The finished model is exported to ``out/model`` (``model.safetensors``,
    ``config.json``, ``purifier.json``, ``training_history.json``), which is returned."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TestbedDenoiser(config.channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    settings = asdict(config)
    settings["channels"] = list(config.channels)
    state_path = out / STATE_FILE
    start, history, window = 0, [], [0.0, 0]
    if state_path.exists():
        try:
            state = torch.load(state_path, weights_only=True)
            saved = json.loads(state["settings"])
        except Exception as exc:
            raise ModelLoadError(f"{state_path} cannot be read ({exc}); delete it to start over") from None
        if saved != settings:
            raise ConfigError(f"{state_path} was trained with other settings; use another folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history, window = int(state["step"]), json.loads(state["history"]), json.loads(state["window"])
        log(f"resuming at step {start}")
    model.train()
    bar = Progress(config.steps, "train-denoiser", "step", initial=start, enabled=progress)
    started = time.perf_counter()
    for step in range(start, config.steps):
        clean, noisy, sigmas = training_batch(config, step)
        lr = _learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = F.mse_loss(model.denoise(noisy, sigmas), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window = [window[0] + loss.item(), window[1] + 1]
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.5f}")
        done = step + 1
        if done % config.probe_every == 0 or done == config.steps:
            scores = evaluate_denoiser(model, scenes=config.probe_scenes)["sigmas"]
            psnr = {sigma: round(s["psnr_denoised"], 2) for sigma, s in scores.items()}
            seconds = time.perf_counter() - started
            history.append({"step": done, "loss": window[0] / window[1], "lr": lr, "seconds": seconds, "psnr": psnr})
            window = [0.0, 0]
            log(f"step {done}: loss {history[-1]['loss']:.5f}, held-out PSNR " + _psnr_line(psnr))
            model.train()
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_state(state_path, model, optimizer, done, history, window, settings)
    bar.close()
    return export(model, out / "model", settings, history)


def _learning_rate(config: DenoiserConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _psnr_line(psnr: dict[str, float]) -> str:
    return ", ".join(f"sigma {sigma}: {value:.2f} dB" for sigma, value in psnr.items())


def _save_state(
    path: Path, model: TestbedDenoiser, optimizer: torch.optim.Optimizer, step: int, history, window, settings
) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": json.dumps(history),
            "window": json.dumps(window),
            "settings": json.dumps(settings),
        },
        partial,
    )
    partial.replace(path)


def export(model: TestbedDenoiser, folder: Path, settings: dict[str, Any], history: list[dict]) -> Path:
    """Write ``model`` as a loadable folder: fp32 safetensors, its sizes and training settings, the purifier
    name and the training history. Returns ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"purifier": NAME})
    config = {"architecture": "unet", "channels": list(model.channels), "training": settings}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    (folder / PURIFIER_FILE).write_text(json.dumps({"purifier": NAME}) + "\n")
    (folder / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
    return folder


def load(path: str | None = None) -> TestbedDenoiser:
    """The denoiser saved in the folder ``path`` (``None``: the shipped one), in eval mode with frozen weights
    (gradients still reach its input). One-line ``ModelLoadError`` for a missing folder or files, or corrupt ones."""
    from safetensors.torch import load as load_weights

    folder = SHIPPED if path is None else Path(path).expanduser()
    if not folder.is_dir():
        if path is None:
            raise ModelLoadError(f"the shipped testbed denoiser is missing from {folder}; reinstall smoothguard")
        raise ModelLoadError(
            f"testbed denoiser {str(folder)!r}: no such folder; pass a folder written by train-denoiser"
        )
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise ModelLoadError(f"testbed denoiser {folder}: {required.name} is missing; retrain or copy it back")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        channels = [int(c) for c in config["channels"]]
        model = TestbedDenoiser(channels)
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ModelLoadError(f"{config_path} is not a valid denoiser config ({first_line(exc)})") from None
    size = weights_path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ModelLoadError(f"{weights_path} is {size:,} bytes, over the {MAX_WEIGHTS_BYTES:,} a denoiser may have")
    data = weights_path.read_bytes()
    try:
        model.load_state_dict(load_weights(data))
    except Exception as exc:
        raise ModelLoadError(f"{weights_path} cannot be loaded ({first_line(exc)}); retrain or copy it back") from None
    model.source = str(folder)
    model.sha256 = hashlib.sha256(data).hexdigest()
    model.training_settings = config.get("training", {})
    return model.eval().requires_grad_(False)


@torch.no_grad()
def evaluate_denoiser(
    model: TestbedDenoiser, scenes: int = 200, sigmas: Sequence[float] = EVAL_SIGMAS, seed: int = 0
) -> dict[str, Any]:
    """Held-out quality of ``model``: on the first ``scenes`` held-out scenes (seeds from ``HELD_OUT_START``),
    per sigma (pixel units) the noise (seeded by ``seed`` and the sigma's position) clamped to [0, 1] as the
    guard's copies are, then the mean per-image PSNR (dB, peak 1) and mean MSE of the noisy and of the denoised
    images against the clean ones. Returns ``{"scenes", "seed", "first_scene", "sigmas": {str(sigma): {...}}}``."""
    check_int("scenes", scenes, minimum=1)
    was_training = model.training
    model.eval()
    weight = next(model.parameters())
    clean = torch.stack([scene_pixels(scene) for scene in held_out_scenes(scenes)]).to(weight.device)
    report: dict[str, Any] = {"scenes": scenes, "seed": seed, "first_scene": HELD_OUT_START, "sigmas": {}}
    for position, sigma in enumerate(sigmas):
        generator = torch.Generator().manual_seed(seed * 1_000 + position)
        noise = torch.randn(clean.shape, generator=generator).to(clean.device)
        noisy = (clean + float(sigma) * noise).clamp(0, 1)
        denoised = torch.cat([model(chunk, float(sigma)) for chunk in noisy.split(50)])
        row = {}
        for label, images in (("noisy", noisy), ("denoised", denoised)):
            mse = (images - clean).pow(2).flatten(1).mean(dim=1)
            row[f"psnr_{label}"] = (-10 * mse.clamp(min=1e-10).log10()).mean().item()
            row[f"mse_{label}"] = mse.mean().item()
        report["sigmas"][str(float(sigma))] = row
    model.train(was_training)
    return report


def format_report(report: dict[str, Any]) -> str:
    """``evaluate_denoiser``'s report as a table: per sigma the PSNR (dB) of the noisy and denoised images."""
    lines = [f"held-out PSNR (dB) on {report['scenes']} scenes", f"{'sigma':>6}  {'noisy':>6}  {'denoised':>8}  gain"]
    for sigma, row in report["sigmas"].items():
        noisy, denoised = row["psnr_noisy"], row["psnr_denoised"]
        lines.append(f"{sigma:>6}  {noisy:6.2f}  {denoised:8.2f}  {denoised - noisy:+.2f}")
    return "\n".join(lines)
