"""SmoothGuard: defend multimodal LLMs with noise perturbation and clustering aggregation."""

from smoothguard.errors import (
    ConfigError,
    InputError,
    ModelLoadError,
    SmoothGuardError,
    UnsupportedError,
)
from smoothguard.guard import GuardResult, SmoothGuard
from smoothguard.models import MLLMAdapter, load_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GuardResult",
    "InputError",
    "MLLMAdapter",
    "ModelLoadError",
    "SmoothGuard",
    "SmoothGuardError",
    "UnsupportedError",
    "__version__",
    "load_model",
]
