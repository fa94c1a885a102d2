"""SmoothGuard: defend multimodal LLMs with noise perturbation and clustering aggregation.

Public names are imported on first use: ``import smoothguard`` costs nothing heavy.
"""

from smoothguard.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "AdaptiveSampling": "smoothguard.sampling",
    "ConfigError": "smoothguard.errors",
    "GuardConfig": "smoothguard.config",
    "GuardResult": "smoothguard.guard",
    "InputError": "smoothguard.errors",
    "MLLMAdapter": "smoothguard.models.base",
    "ModelLoadError": "smoothguard.errors",
    "SmoothGuard": "smoothguard.guard",
    "SmoothGuardError": "smoothguard.errors",
    "UnsupportedError": "smoothguard.errors",
    "load_model": "smoothguard.models.auto",
}
__all__ = [*_EXPORTS, "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
