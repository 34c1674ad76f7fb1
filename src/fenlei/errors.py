"""The exceptions fenlei users see, each with a message they can act on.

Hierarchy::

    FenleiError
    ├── ConfigError        a setting is unknown, mistyped or inconsistent
    ├── DataError          an input table is unreadable or invalid (names file, row, column)
    ├── ArtifactError      a run folder is missing, truncated, altered or incompatible
    ├── NotFittedError     a classifier was used before ``fit`` or ``load``
    └── MissingExtraError  an optional dependency is not installed
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "FenleiError",
    "MissingExtraError",
    "NotFittedError",
]


class FenleiError(Exception):
    """Base class of every error fenlei raises on purpose."""


class ConfigError(FenleiError):
    """A configuration value is unknown, has the wrong type or contradicts another."""


class DataError(FenleiError):
    """An input table cannot be read or fails validation.

    The message names the file, and where it applies the row and the column.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.row = row
        self.column = column


class ArtifactError(FenleiError):
    """A run folder or one of its files is missing, truncated, altered or incompatible."""


class NotFittedError(FenleiError):
    """A classifier was asked to predict before it was fitted or loaded."""


class MissingExtraError(FenleiError):
    """An optional dependency is needed for this feature but is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the package {package!r}, which is not installed; "
            f"install it with: pip install 'fenlei[{extra}]'"
        )
