"""The ``fenlei`` command: a thin typer skin over the library.

Each command parses its options, loads the config, calls one library function and shows
the result with rich. A user's mistake (any :class:`~fenlei.errors.FenleiError`) becomes one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

# isort: off
# Each module registers its commands on the app; this order is `fenlei --help`'s.
from fenlei.cli import (  # noqa: F401
    training,
    using,
    serving,
    combining,
    compressing,
    distilling,
    tuning,
    reporting,
    auditing,
    datasets,
)

# isort: on
from fenlei.cli._app import app, err, main, out
from fenlei.cli.training import DEMO_LINEAR_SETTINGS

__all__ = ["DEMO_LINEAR_SETTINGS", "app", "err", "main", "out"]
