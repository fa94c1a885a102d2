"""Model adapters, one per family, and ``load_model`` to pick the right one."""

from smoothguard.lazy import lazy_exports

#: ``load_model("openai:URL#MODEL")`` loads a remote OpenAI-compatible endpoint (``models/remote.py``).
REMOTE_PREFIX = "openai:"

_EXPORTS = {
    "AutoImageTextAdapter": "smoothguard.models.auto",
    "LlavaAdapter": "smoothguard.models.llava",
    "MLLMAdapter": "smoothguard.models.base",
    "Query": "smoothguard.models.base",
    "load_model": "smoothguard.models.auto",
}
__all__ = ["REMOTE_PREFIX", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
