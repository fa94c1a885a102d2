"""``load_model``: a hub id or local folder -> the adapter of its family.

Families are chosen by the checkpoint's ``config.model_type``; any other model that
``AutoModelForImageTextToText`` can load and whose image processor is CLIP-style runs through the
generic adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from smoothguard.errors import ConfigError, ModelLoadError, check_int, first_line
from smoothguard.models import REMOTE_PREFIX
from smoothguard.models.base import MLLMAdapter
from smoothguard.models.llava import ClipStyleImageAdapter
from smoothguard.models.remote import RemoteAdapter, load_remote
from smoothguard.registry import Registry

#: Model plug-ins (``smoothguard.models`` entry points): name -> zero-argument callable returning the model folder.
MODELS: Registry[Any] = Registry("model plug-in", group="smoothguard.models")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class AutoImageTextAdapter(ClipStyleImageAdapter):
    """Generic fallback for ``AutoModelForImageTextToText`` checkpoints with a CLIP-style processor."""

    family = "auto"


#: config.model_type -> the adapter class, as "module:Class" (imported only when that family is loaded).
ADAPTERS: Registry[type[MLLMAdapter]] = Registry(
    "model family",
    entries={
        "llava": "smoothguard.models.llava:LlavaAdapter",
        "qwen2_vl": "smoothguard.models.qwen_vl:QwenVLAdapter",
        "qwen2_5_vl": "smoothguard.models.qwen_vl:QwenVLAdapter",
        "qwen2_audio": "smoothguard.models.qwen_audio:QwenAudioAdapter",
    },
)


def adapter_class_for(model_type: str) -> type[MLLMAdapter]:
    """The adapter class of a ``config.model_type``; the generic adapter for unknown types."""
    return ADAPTERS.get(model_type) if model_type in ADAPTERS else AutoImageTextAdapter


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` -> first CUDA device if there is one, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` -> bfloat16 on CUDA, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def model_plugin_names() -> list[str]:
    """Names of the installed model plug-ins (``smoothguard.models`` entry points)."""
    return MODELS.names()


def _plugin_folder(name: str) -> Path | None:
    """The folder of the model plug-in called ``name``, or ``None`` when no plug-in has that name."""
    if name not in MODELS:
        return None
    plugin = MODELS.get(name)
    try:
        folder = Path(plugin())
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"model plug-in {name!r} ({MODELS.target(name)}) failed: {first_line(exc)}") from exc
    if not folder.is_dir():
        raise ModelLoadError(f"model plug-in {name!r} ({MODELS.target(name)}) gave {folder}, which is not a folder")
    return folder


def load_model(
    source: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    attn_implementation: str | None = None,
    compile_decode: bool = False,
    threads: int | None = None,
    **from_pretrained_kwargs: Any,
) -> MLLMAdapter:
    """Load a multimodal model and its processor behind the adapter of its family.

    ``source``: a HuggingFace hub id (e.g. ``"llava-hf/llava-1.5-7b-hf"``), a local folder saved
    with ``save_pretrained``, the name of a model plug-in, or ``"openai:URL#MODEL"``, a remote
    OpenAI-compatible endpoint (``smoothguard.models.remote``; extra keyword arguments then go to
    ``RemoteAdapter``).
    Model plug-ins are entry points of the ``smoothguard.models`` group: name -> a zero-argument
    callable returning the model folder (a ``Path``; it raises ``ModelLoadError`` when it cannot).
    A name that is not an existing path is looked up there; its folder is loaded and the adapter keeps
    the plug-in name as its display name. This package registers ``testbed`` (the small LLaVA it
    trains and ships).
    ``dtype``: ``auto`` | ``float32`` | ``float16`` | ``bfloat16``. ``device``: ``auto`` | ``cpu`` | ``cuda[:N]``.
    ``device_map`` (instead of ``device``): ``"auto"`` or a dict, as ``from_pretrained`` takes it (the
    weights go straight to their devices, sharded across GPUs or offloaded; needs ``accelerate``).
    ``attn_implementation``: ``sdpa`` | ``flash_attention_2`` | ``eager`` (default: transformers').
    ``compile_decode``: opt in to a static KV cache and ``torch.compile`` of the forward pass for decoding
    (pays a compile per new shape; for long GPU runs). ``threads``: set torch's CPU threads first
    (:func:`set_threads`). Extra keyword arguments go to ``from_pretrained`` (model, config and processor).
    """
    if threads is not None:
        set_threads(threads)
    if str(source).startswith(REMOTE_PREFIX):
        if device_map is not None or attn_implementation is not None or compile_decode:
            raise ConfigError(f"{source} runs on its server: drop device_map, attn_implementation and compile")
        return load_remote(str(source), dtype=dtype, device=device, **from_pretrained_kwargs)
    if device_map is not None and device not in (None, "auto"):
        raise ConfigError("pass a device or a device_map, not both")
    name = _checkpoint(source)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = _model_config(name, **from_pretrained_kwargs)
    adapter_class = adapter_class_for(config.model_type)
    model_options = {
        key: value
        for key, value in (("device_map", device_map), ("attn_implementation", attn_implementation))
        if value is not None
    }
    try:
        processor = adapter_class.load_processor(name, **from_pretrained_kwargs)
        model = adapter_class.model_class().from_pretrained(
            name, dtype=torch_dtype, **model_options, **from_pretrained_kwargs
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ModelLoadError(
            f"cannot load {config.model_type} model {name!r} with {adapter_class.__name__}: {first_line(exc)}"
        ) from exc
    if device_map is None:
        model.to(torch_device)
    model.eval().requires_grad_(False)  # frozen: attacks need input gradients only
    if compile_decode:
        model.generation_config.cache_implementation = "static"
        model.forward = torch.compile(model.forward, mode="reduce-overhead")
    return adapter_class(model, processor, str(source))


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's operators in this process (``torch.set_num_threads``). On a
    shared machine, give each process its share of the cores: torch's default (every core) oversubscribes
    them when several processes run, and everything slows down many times over."""
    check_int("threads", threads, minimum=1)
    torch.set_num_threads(threads)


def resolve_noise_space(source: str | Path, noise_space: str | None = None) -> str:
    """The noise space a guard uses on the model ``load_model(source)`` loads: ``noise_space`` when given,
    else the family's default, read from the checkpoint's ``config.json`` alone (no weights loaded)."""
    if noise_space is not None:
        return noise_space
    if str(source).startswith(REMOTE_PREFIX):
        return RemoteAdapter.noise_spaces[0]
    return adapter_class_for(_model_config(_checkpoint(source)).model_type).noise_spaces[0]


def _checkpoint(source: str | Path) -> str:
    """The hub id or folder ``source`` names (a model plug-in's folder for a plug-in name); ModelLoadError
    for a folder that is missing or has no ``config.json``."""
    name = str(source)
    path = Path(name).expanduser()
    if not path.exists() and (plugin_folder := _plugin_folder(name)) is not None:
        name, path = str(plugin_folder), plugin_folder
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{name} is not a model folder: it has no config.json")
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelLoadError(f"model folder {name} does not exist")
    return name


def _model_config(name: str, **from_pretrained_kwargs: Any) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, **from_pretrained_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load model {name!r}: {first_line(exc)} "
            "(pass a hub id reachable from here, a local folder saved with save_pretrained, "
            f"or a model plug-in: {', '.join(model_plugin_names()) or 'none installed'})"
        ) from exc
