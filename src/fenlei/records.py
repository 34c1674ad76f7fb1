"""Typed records that training writes and everyone else reads (base layer: no fenlei imports).

:class:`EpochRecord` is one line of a run folder's ``metrics.jsonl``: one epoch of the
gradient loop, or one solve of a solved family (``param`` names the value it was solved
with, ``{"c": 0.3}``). The progress bar, the CLI, the plots and the bench read it the same
way, whichever family wrote it. Enter through :meth:`EpochRecord.to_json` /
:meth:`EpochRecord.from_json` and :func:`read_history`.

Example:
    >>> EpochRecord.from_json({"epoch": 1, "c": 0.3, "train_loss": 0.5, "dev": {},
    ...                        "seconds": 1.0, "precision": "fp32", "is_best": True}).param
    {'c': 0.3}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EpochRecord", "history_lines", "read_history"]

# Keys an older solved-family record carried at the top level instead of in "param".
_LEGACY_PARAMS = ("c",)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch (or one solve) of training.

    Attributes:
        epoch: counts from 1; for a solved family, the number of the solve.
        train_loss: mean training loss of the epoch (of the solved model, for a solve).
        dev: dev metrics: ``loss``, ``accuracy``, ``macro_f1``.
        seconds: wall time of the epoch, dev scoring included.
        precision: ``"fp32"`` or ``"bf16-mixed"``.
        is_best: the best dev value so far (its weights are the ones kept).
        lr: learning rate at the end of the epoch (None for a solve).
        param: the setting a solve used (``{"c": 0.3}``); None for a loop epoch.
    """

    epoch: int
    train_loss: float
    dev: dict[str, float]
    seconds: float
    precision: str = "fp32"
    is_best: bool = False
    lr: float | None = None
    param: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form: one line of ``metrics.jsonl`` (absent fields left out)."""
        out: dict[str, Any] = {"epoch": self.epoch, "train_loss": self.train_loss}
        out["dev"] = dict(self.dev)
        if self.lr is not None:
            out["lr"] = self.lr
        out |= {"seconds": self.seconds, "precision": self.precision, "is_best": self.is_best}
        if self.param is not None:
            out["param"] = dict(self.param)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EpochRecord:
        """Read a record written by :meth:`to_json`, or by an older fenlei (``"c"``).

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not an epoch record.
        """
        param = data.get("param")
        if param is None:
            legacy = {k: float(data[k]) for k in _LEGACY_PARAMS if k in data}
            param = legacy or None
        lr = data.get("lr")
        return cls(
            epoch=int(data["epoch"]),
            train_loss=float(data["train_loss"]),
            dev={str(k): float(v) for k, v in dict(data["dev"]).items()},
            seconds=float(data["seconds"]),
            precision=str(data.get("precision", "fp32")),
            is_best=bool(data.get("is_best", False)),
            lr=None if lr is None else float(lr),
            param=None if param is None else {str(k): float(v) for k, v in param.items()},
        )

    def param_text(self) -> str:
        """``param`` for people: ``"c=0.3"`` (empty for a loop epoch)."""
        return ", ".join(f"{k}={v:g}" for k, v in (self.param or {}).items())


def history_lines(history: Iterable[EpochRecord]) -> str:
    """The text of ``metrics.jsonl``: one JSON object per record and line."""
    return "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in history)


def read_history(path: str | Path) -> list[EpochRecord]:
    """Read a ``metrics.jsonl`` (today's or an older fenlei's).

    Raises:
        OSError: the file cannot be read.
        ValueError, KeyError, TypeError: a line is not an epoch record.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [EpochRecord.from_json(json.loads(line)) for line in lines if line.strip()]
