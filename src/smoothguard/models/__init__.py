"""Model adapters, one per family, and ``load_model`` to pick the right one."""

from smoothguard.models.auto import AutoImageTextAdapter, load_model
from smoothguard.models.base import MLLMAdapter, Query
from smoothguard.models.llava import LlavaAdapter

__all__ = ["AutoImageTextAdapter", "LlavaAdapter", "MLLMAdapter", "Query", "load_model"]
