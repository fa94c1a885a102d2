"""Helpers the tests import (``pythonpath = ["tests"]`` in pyproject.toml): ``from support.eval import ...``."""
