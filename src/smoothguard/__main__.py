"""``python -m smoothguard`` = the ``smoothguard`` command."""

import sys

from smoothguard.cli import main

sys.exit(main())
