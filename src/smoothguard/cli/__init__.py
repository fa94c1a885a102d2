"""The ``smoothguard`` command: one module per subcommand, shared options in ``options.py``."""

from smoothguard.cli.main import main
from smoothguard.cli.options import EXIT_USER_ERROR

__all__ = ["EXIT_USER_ERROR", "main"]
