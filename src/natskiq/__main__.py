"""``python -m natskiq``: the same as the ``natskiq`` command."""

from __future__ import annotations

import sys

from natskiq.cli import main

sys.exit(main())
