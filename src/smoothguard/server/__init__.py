"""OpenAI-compatible serving: ``create_app`` for a local model or, with a remote model, a guard proxy.

``smoothguard serve`` (``cli/serve.py``) runs it with uvicorn; ``BackgroundServer`` runs it in a
thread on a loopback port.
"""

from smoothguard.lazy import lazy_exports

_EXPORTS = {
    "BackgroundServer": "smoothguard.server.background",
    "ServerSettings": "smoothguard.server.settings",
    "create_app": "smoothguard.server.app",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
