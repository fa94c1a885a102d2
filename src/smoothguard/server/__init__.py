"""OpenAI-compatible serving: ``create_app`` for a local model or, with a remote model, a guard proxy.

``smoothguard serve`` (``server/cli.py``) runs it with uvicorn; ``BackgroundServer`` runs it in a
thread on a loopback port.
"""

from smoothguard.server.app import create_app
from smoothguard.server.background import BackgroundServer
from smoothguard.server.settings import ServerSettings

__all__ = ["BackgroundServer", "ServerSettings", "create_app"]
