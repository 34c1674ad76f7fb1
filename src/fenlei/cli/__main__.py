"""``python -m fenlei.cli``."""

from __future__ import annotations

import sys

from fenlei.cli import main

sys.exit(main())
