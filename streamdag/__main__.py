"""``python -m streamdag`` is the ``streamdag`` command."""

import sys

from .cli import main

sys.exit(main())
