"""Purifiers for denoised smoothing (Salman et al. 2020; Carlini et al. 2023): noisy pixels -> clean pixels.

A purifier sits between the noise and the model: ``purifier(images, sigma)`` maps images [B, 3, H, W] in
[0, 1] (pixel space) that carry Gaussian noise of std ``sigma`` ([0, 1] pixel units; 0 for a clean image)
to cleaned images of the same shape in [0, 1]. It is differentiable, so the attacks' gradients pass
through it (EOT through noise and purifier is the adaptive attack on the whole defense), and it has a
``name``, written into every result's config.

Specs taken by :func:`load_purifier`:

- a plug-in name of the ``smoothguard.purifiers`` entry-point group (the testbed's ``testbed-denoiser``);
- ``diffusion:HUB_ID_OR_FOLDER[@K]``: a DDPM UNet as a one-shot (default) or K-step denoiser
  (:class:`DiffusionPurifier`, needs the ``diffusion`` extra), e.g. ``diffusion:google/ddpm-cifar10-32@10``;
- a folder holding ``purifier.json`` (``{"purifier": PLUGIN}``): that plug-in's weights trained elsewhere
  (what ``smoothguard testbed train-denoiser`` writes);
- an object: a purifier (``name`` + ``__call__(images, sigma)``), or any ``torch.nn.Module`` / callable of
  images alone (wrapped; named by its class).

A plug-in's entry point is a factory ``load(path: str | None = None)`` returning the purifier (its own
weights when ``path`` is ``None``).
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from smoothguard.errors import ConfigError, InputError, ModelLoadError, check_int, check_seed, first_line
from smoothguard.noise import validate_sigma
from smoothguard.registry import Registry

if TYPE_CHECKING:
    import torch

#: Purifier plug-ins (``smoothguard.purifiers`` entry points): name -> callable taking the folder or None.
PURIFIERS: Registry[Any] = Registry("purifier plug-in", group="smoothguard.purifiers")
DIFFUSION_PREFIX = "diffusion:"
#: The file naming a purifier folder's plug-in.
PURIFIER_FILE = "purifier.json"


@runtime_checkable
class Purifier(Protocol):
    """``name`` and ``__call__(images [B, 3, H, W] in [0, 1], sigma: float) -> [B, 3, H, W] in [0, 1]``."""

    name: str

    def __call__(self, images: torch.Tensor, sigma: float) -> torch.Tensor: ...


class CallablePurifier:
    """A user's callable as a purifier: ``fn(images, sigma)`` when it takes two arguments (or ``sigma=``),
    else ``fn(images)``. Named ``name`` (default: the callable's class or function name)."""

    def __init__(self, fn: Callable[..., torch.Tensor], name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"a purifier must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__
        self._takes_sigma = _takes_sigma(fn)

    def __call__(self, images: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.fn(images, sigma) if self._takes_sigma else self.fn(images)

    def to(self, device: Any) -> CallablePurifier:
        mover = getattr(self.fn, "to", None)
        if callable(mover):
            self.fn = mover(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "callable"}


def _takes_sigma(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a second positional argument or a ``sigma`` keyword."""
    target = fn.forward if hasattr(fn, "forward") else fn
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in parameters) or any(p.name == "sigma" for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def purifier_names() -> list[str]:
    """Names of the installed purifier plug-ins."""
    return PURIFIERS.names()


def check_purifier_spec(spec: str) -> str:
    """``spec`` stripped; ConfigError unless it names a plug-in, a ``diffusion:`` source or an existing
    folder (cheap: nothing is loaded, for the command line's checks before a model loads)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"purifier must be a non-empty name, diffusion:SOURCE or folder, got {spec!r}")
    spec = spec.strip()
    if spec.startswith(DIFFUSION_PREFIX):
        _diffusion_source(spec)
        return spec
    if spec in PURIFIERS or Path(spec).is_dir():
        return spec
    known = ", ".join(purifier_names()) or "none installed"
    raise ConfigError(
        f"unknown purifier {spec!r}: not a plug-in ({known}), not diffusion:SOURCE and not a folder holding "
        f"{PURIFIER_FILE}"
    )


def load_purifier(spec: str | Any, *, device: str | None = None) -> Any:
    """The purifier named by ``spec`` (see the module docstring), on ``device`` when given. Errors are one
    line: ``ConfigError`` for an unknown name, ``ModelLoadError`` for weights that cannot be loaded."""
    if not isinstance(spec, str):
        purifier = spec if isinstance(spec, Purifier) and _takes_sigma(spec) else CallablePurifier(spec)
    else:
        spec = check_purifier_spec(spec)
        if spec.startswith(DIFFUSION_PREFIX):
            source, steps = _diffusion_source(spec)
            purifier = DiffusionPurifier.from_pretrained(source, steps=steps)
        elif spec in PURIFIERS:
            purifier = _plugin(spec, None)
        else:
            purifier = _plugin(_folder_plugin(Path(spec)), spec)
    mover = getattr(purifier, "to", None)
    if device is not None and callable(mover):
        purifier = mover(device)
    return purifier


def identity(purifier: Any) -> dict[str, Any]:
    """What a result records of ``purifier``: its ``describe()`` when it has one, else its name."""
    describe = getattr(purifier, "describe", None)
    return describe() if callable(describe) else {"name": purifier.name}


def _folder_plugin(folder: Path) -> str:
    path = folder / PURIFIER_FILE
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["purifier"]
    except FileNotFoundError:
        raise ConfigError(f"{folder} is not a purifier folder: it holds no {PURIFIER_FILE}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f'{path} is not a valid {PURIFIER_FILE} ({exc}); expected {{"purifier": NAME}}') from exc
    if name not in PURIFIERS:
        raise ConfigError(f"{path} names purifier plug-in {name!r}, which is not installed")
    return name


def _plugin(name: str, path: str | None) -> Any:
    plugin = PURIFIERS.get(name)
    try:
        return plugin(path)
    except (ModelLoadError, ConfigError):
        raise
    except Exception as exc:
        raise ModelLoadError(f"purifier plug-in {name!r} ({PURIFIERS.target(name)}) failed: {first_line(exc)}") from exc


#: The most images one UNet call sees; a larger batch is purified in chunks of this size.
DIFFUSION_CHUNK = 16
#: The prediction targets the diffusion purifier can turn into an x0 estimate.
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class DiffusionPurifier:
    """Denoised smoothing with an off-the-shelf DDPM ``UNet2DModel`` (diffusers): Carlini et al. (ICLR 2023,
    "(Certified!!) Adversarial Robustness for Free!") one-shot, or DiffPure-style (Nie et al. 2022) K steps.

    ``purifier(images, sigma)``: images [B, 3, H, W] in [0, 1] carrying Gaussian noise of std ``sigma`` ([0, 1]
    pixel units) -> [B, 3, H, W] in [0, 1]. In the model's [-1, 1] range that noise has std ``2 * sigma``, the
    noise level of timestep ``t* = timestep(sigma)``; ``x_t* = sqrt(abar_t*) * (2 x - 1)``, resized (bilinear) to
    the UNet's ``sample_size``. ``steps=1``: the one-shot x0 estimate; ``steps=K > 1``: DDPM ancestral steps
    (posterior sampling, fixed-small variance) on K timesteps evenly spaced from t* down to 0 (fewer when t* < K - 1),
    the last one returning its x0 estimate. Their noise comes from a CPU generator seeded with ``seed`` on every
    call, so the same batch gives the same output. Each x0 estimate is clamped to [-1, 1]; the result is resized
    back to H, W. ``sigma`` 0 returns the images themselves. Differentiable w.r.t. the images (the UNet's weights
    are frozen); the UNet sees at most ``DIFFUSION_CHUNK`` images per call.

    t* is chosen for ``sigma`` as given (as Carlini et al. do for ImageNet): resizing to ``sample_size`` averages
    neighbouring pixels, so an input of another size carries less noise than t* assumes (a little more smoothing).
    """

    def __init__(self, unet: Any, scheduler: Any, *, source: str, steps: int = 1, seed: int = 0) -> None:
        """``unet``: a diffusers ``UNet2DModel`` (3 channels in and out, unconditional); ``scheduler``: a DDPM-type
        diffusers scheduler (its ``alphas_cumprod`` and ``prediction_type`` are used, not its ``step``)."""
        self.steps = check_int("steps", steps, minimum=1)
        self.seed = check_seed(seed)
        config = unet.config
        if (config.in_channels, config.out_channels) != (3, 3):
            raise ModelLoadError(
                f"diffusion model {source!r} maps {config.in_channels} to {config.out_channels} channels; the "
                "purifier needs an RGB UNet with 3 in and 3 out (learned-variance models are not supported)"
            )
        if getattr(config, "num_class_embeds", None) is not None or getattr(config, "class_embed_type", None):
            raise ModelLoadError(
                f"diffusion model {source!r} is class-conditional; the purifier needs an unconditional one"
            )
        self.prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"diffusion model {source!r} predicts {self.prediction_type!r}; supported {', '.join(PREDICTION_TYPES)}"
            )
        self.unet = unet.eval().requires_grad_(False)
        self.source = source
        self.name = DIFFUSION_PREFIX + source + (f"@{self.steps}" if self.steps > 1 else "")
        self._alphas_cumprod = [float(a) for a in scheduler.alphas_cumprod.double()]
        self._noise_levels = [((1 - a) / a) ** 0.5 for a in self._alphas_cumprod]

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], *, steps: int = 1, seed: int = 0) -> DiffusionPurifier:
        """The purifier of ``source``: a hub id or a folder, either a pipeline folder (``unet/`` and ``scheduler/``)
        or a UNet folder (``config.json`` and weights, with its schedule in a ``scheduler_config.json`` beside them
        or else diffusers' default ``DDPMScheduler()``, linear, 1000 steps). One-line ``ModelLoadError`` when it
        cannot be loaded."""
        try:
            from diffusers import DDPMScheduler, UNet2DModel
        except ImportError:
            message = "the diffusion purifier needs diffusers: pip install 'smoothguard[diffusion]'"
            raise ModelLoadError(message) from None
        source = os.fspath(source)
        folder = Path(source).expanduser()
        local = folder.is_dir()
        if local:
            if (folder / "unet" / "config.json").is_file():
                layouts = [("unet", "scheduler")]
            elif (folder / "config.json").is_file():
                layouts = [(None, None)]
            else:
                raise ModelLoadError(
                    f"{folder} holds no diffusers UNet: expected unet/config.json (a pipeline folder) or config.json "
                    "(a UNet2DModel folder)"
                )
        elif folder.exists() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source):
            raise ModelLoadError(f"diffusion model {source!r}: no such folder; pass a folder or a hub id")
        else:
            layouts = [(None, None), ("unet", "scheduler")]  # google/ddpm-* keep their UNet at the top
        failure = ""
        for unet_folder, scheduler_folder in layouts:
            try:
                unet = UNet2DModel.from_pretrained(str(folder) if local else source, subfolder=unet_folder)
            except Exception as exc:
                failure = failure or first_line(exc)
                continue
            schedule = _schedule(DDPMScheduler, folder if local else source, scheduler_folder)
            return cls(unet, schedule, source=source, steps=steps, seed=seed)
        hint = "" if local else " (a hub id loads from the hub, or offline from its local cache)"
        raise ModelLoadError(f"cannot load diffusion model {source!r}: {failure}{hint}")

    def timestep(self, sigma: float) -> int | None:
        """The timestep whose noise level sqrt((1 - abar_t) / abar_t) is nearest ``2 * sigma`` (noise of std
        ``sigma`` in [0, 1] pixels is std ``2 * sigma`` in the model's [-1, 1]); ``None`` for ``sigma`` 0."""
        if validate_sigma(sigma) == 0:
            return None
        return min(range(len(self._noise_levels)), key=lambda t: abs(self._noise_levels[t] - 2 * sigma))

    def __call__(self, images: torch.Tensor, sigma: float) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] with noise of std ``sigma`` ([0, 1] pixels) -> purified, same shape, [0, 1]."""
        import torch
        import torch.nn.functional as F

        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"the diffusion purifier takes images [B, 3, H, W], got {shape}")
        start = self.timestep(sigma)
        if start is None:
            return images
        schedule = torch.linspace(start, 0, self.steps).round().long().unique_consecutive().tolist()
        weight = next(self.unet.parameters())
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        x = 2 * images.to(device=weight.device, dtype=weight.dtype) - 1
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        x = self._alphas_cumprod[start] ** 0.5 * x
        generator = torch.Generator().manual_seed(self.seed) if len(schedule) > 1 else None
        clean = torch.cat([self._denoise(chunk, schedule, generator) for chunk in x.split(DIFFUSION_CHUNK)])
        if tuple(clean.shape[-2:]) != tuple(images.shape[-2:]):
            clean = F.interpolate(clean, size=images.shape[-2:], mode="bilinear", align_corners=False, antialias=False)
        return ((clean + 1) / 2).clamp(0, 1).to(device=images.device, dtype=images.dtype)

    def _denoise(self, x: torch.Tensor, schedule: list[int], generator: torch.Generator | None) -> torch.Tensor:
        """x_t [b, 3, S, S] at ``schedule[0]`` -> the x0 estimate in [-1, 1] of the last of the reverse steps at the
        timesteps of ``schedule`` (descending; each but the last samples the DDPM posterior at the next timestep)."""
        import torch

        for t, following in zip(schedule, [*schedule[1:], None], strict=True):
            abar = self._alphas_cumprod[t]
            output = self.unet(x, t).sample
            if self.prediction_type == "epsilon":
                x0 = (x - (1 - abar) ** 0.5 * output) / abar**0.5
            elif self.prediction_type == "sample":
                x0 = output
            else:  # v_prediction
                x0 = abar**0.5 * x - (1 - abar) ** 0.5 * output
            x0 = x0.clamp(-1, 1)
            if following is not None:
                previous = self._alphas_cumprod[following]
                beta = 1 - abar / previous  # DDPM posterior q(x_s | x_t, x0), fixed-small variance
                keep, carry = previous**0.5 * beta / (1 - abar), (abar / previous) ** 0.5 * (1 - previous) / (1 - abar)
                noise = torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
                x = keep * x0 + carry * x + ((1 - previous) / (1 - abar) * beta) ** 0.5 * noise
        return x0

    def to(self, device: Any) -> DiffusionPurifier:
        """Moves the UNet to ``device``; returns ``self``."""
        self.unet.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """Name, source, steps, seed; the model's sample size, parameter count, prediction type, schedule length."""
        size = self.unet.config.sample_size
        return {
            "name": self.name,
            "kind": "diffusion",
            "source": self.source,
            "steps": self.steps,
            "seed": self.seed,
            "sample_size": size if isinstance(size, int) else list(size),
            "parameters": sum(p.numel() for p in self.unet.parameters()),
            "prediction_type": self.prediction_type,
            "num_train_timesteps": len(self._alphas_cumprod),
        }


def _schedule(scheduler_class: Any, source: Path | str, subfolder: str | None) -> Any:
    """The DDPM schedule saved at ``source`` (in ``subfolder``), or diffusers' default one when none is saved."""
    if isinstance(source, Path):
        path = source / (subfolder or "") / "scheduler_config.json"
        if not path.is_file():
            return scheduler_class()
        try:
            config = scheduler_class.load_config(str(path.parent))
        except Exception as exc:
            raise ModelLoadError(f"{path} is not a valid scheduler config ({first_line(exc)})") from exc
    else:
        try:
            config = scheduler_class.load_config(source, subfolder=subfolder)
        except OSError:
            return scheduler_class()
    if not {"beta_schedule", "beta_start", "trained_betas"} & config.keys():
        raise ModelLoadError(
            f"diffusion model {str(source)!r}: scheduler {config.get('_class_name')} has no beta schedule; the "
            "purifier needs a DDPM-type model"
        )
    return scheduler_class.from_config(config)


def _diffusion_source(spec: str) -> tuple[str, int]:
    """``diffusion:SOURCE[@K]`` -> (SOURCE, K, default 1); ConfigError for an empty SOURCE or a K that is not an
    integer >= 1 (the last ``@`` splits: a folder whose name holds one is ``FOLDER@1``)."""
    source, at, steps = spec[len(DIFFUSION_PREFIX) :].strip().rpartition("@")
    if not at:
        source, steps = steps, "1"
    if not source.strip():
        raise ConfigError("diffusion: needs a hub id or a folder, e.g. diffusion:google/ddpm-cifar10-32")
    if not re.fullmatch(r"[0-9]+", steps.strip()) or int(steps) < 1:
        raise ConfigError(f"diffusion:SOURCE@K needs K, the number of denoising steps, an integer >= 1; got {steps!r}")
    return source.strip(), int(steps)
