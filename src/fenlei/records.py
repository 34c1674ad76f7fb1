"""Typed records that training writes and everyone else reads (base layer: no fenlei imports).

:class:`EpochRecord` is one line of a run folder's ``metrics.jsonl``: one epoch of the
gradient loop, or one solve of a solved family (``param`` names the value it was solved
with, ``{"c": 0.3}``). The progress bar, the CLI, the plots and the bench read it the same
way, whichever family wrote it. Enter through :meth:`EpochRecord.to_json` /
:meth:`EpochRecord.from_json` and :func:`read_history`.

:class:`RunMetrics` is a run folder's ``metrics.json`` (with :class:`Scores` per labelled
split, :class:`ClassScores` per label, :class:`SplitCounts` per data split, and what was
fitted on dev after training: :class:`CalibrationScores` and :class:`DecisionScores`),
written by the pipeline; its ``to_json`` keeps the keys older readers know.

Example:
    >>> EpochRecord.from_json({"epoch": 1, "c": 0.3, "train_loss": 0.5, "dev": {},
    ...                        "seconds": 1.0, "precision": "fp32", "is_best": True}).param
    {'c': 0.3}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CalibrationScores",
    "ClassScores",
    "DecisionScores",
    "EpochRecord",
    "RunMetrics",
    "Scores",
    "SplitCounts",
    "history_lines",
    "read_history",
]

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


# ---------------------------------------------------------------- metrics (metrics.json)


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall, F1 and support of one label."""

    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form (``metrics.json``'s ``per_class`` entries)."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClassScores:
        """Read what :meth:`to_json` wrote."""
        return cls(
            precision=float(data["precision"]),
            recall=float(data["recall"]),
            f1=float(data["f1"]),
            support=int(data["support"]),
        )


@dataclass(frozen=True)
class Scores:
    """How well a model labels one labelled set (``metrics.json``'s ``dev`` / ``test``).

    Attributes:
        n: number of texts.
        accuracy: share of texts whose decided labels are exactly right.
        macro_f1, micro_f1: F1 averaged over labels, and over all decisions.
        per_class: label -> its scores.
        confusion_matrix: rows true, columns predicted, in label order (single-label only).
        roc_auc: binary tasks with both labels present only.
    """

    n: int
    accuracy: float
    macro_f1: float
    micro_f1: float
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]] | None = None
    roc_auc: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form, with the keys ``metrics.json`` has always had."""
        out: dict[str, Any] = {
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "micro_f1": self.micro_f1,
            "per_class": {name: s.to_json() for name, s in self.per_class.items()},
        }
        if self.confusion_matrix is not None:
            out["confusion_matrix"] = [list(row) for row in self.confusion_matrix]
        if self.roc_auc is not None:
            out["roc_auc"] = self.roc_auc
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scores:
        """Read what :meth:`to_json` (or an older fenlei) wrote."""
        matrix = data.get("confusion_matrix")
        auc = data.get("roc_auc")
        return cls(
            n=int(data["n"]),
            accuracy=float(data["accuracy"]),
            macro_f1=float(data["macro_f1"]),
            micro_f1=float(data["micro_f1"]),
            per_class={
                str(k): ClassScores.from_json(v) for k, v in dict(data["per_class"]).items()
            },
            confusion_matrix=None if matrix is None else [[int(c) for c in r] for r in matrix],
            roc_auc=None if auc is None else float(auc),
        )


@dataclass(frozen=True)
class SplitCounts:
    """Rows and rows per label of one data split (``metrics.json``'s ``data``)."""

    rows: int
    labels: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form."""
        return {"rows": self.rows, "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SplitCounts:
        """Read what :meth:`to_json` wrote."""
        return cls(int(data["rows"]), {str(k): int(v) for k, v in dict(data["labels"]).items()})


@dataclass(frozen=True)
class CalibrationScores:
    """Temperature scaling on dev and what it did (``metrics.json``'s ``calibration``).

    Attributes:
        temperature: the fitted temperature (1.0: not calibrated).
        bins: confidence bins of the expected calibration error.
        ece_before, ece_after: split name -> expected calibration error at T=1 and at
            ``temperature``.
        nll_before, nll_after: mean dev negative log-likelihood at T=1 and at ``temperature``.
        note: why no temperature was fitted (None when one was).
    """

    temperature: float
    bins: int
    ece_before: dict[str, float]
    ece_after: dict[str, float]
    nll_before: float
    nll_after: float
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form."""
        out: dict[str, Any] = {
            "temperature": self.temperature,
            "bins": self.bins,
            "ece_before": dict(self.ece_before),
            "ece_after": dict(self.ece_after),
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
        }
        if self.note is not None:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CalibrationScores:
        """Read what :meth:`to_json` wrote."""
        note = data.get("note")
        return cls(
            temperature=float(data["temperature"]),
            bins=int(data["bins"]),
            ece_before={str(k): float(v) for k, v in dict(data["ece_before"]).items()},
            ece_after={str(k): float(v) for k, v in dict(data["ece_after"]).items()},
            nll_before=float(data["nll_before"]),
            nll_after=float(data["nll_after"]),
            note=None if note is None else str(note),
        )


@dataclass(frozen=True)
class DecisionScores:
    """How the decision rule was tuned on dev (``metrics.json``'s ``decision``).

    Attributes:
        thresholds: multi-label: label -> its tuned threshold.
        min_precision: the target precision the thresholds were tuned for (None: best F1).
        unmet: label -> the best dev precision it reaches, for labels that miss
            ``min_precision`` (they keep their best-F1 threshold).
        abstain_below: single-label: the reject point (None: never abstains).
        target_accuracy: the accuracy the reject point was chosen for.
        coverage: split name -> ``{"coverage": ..., "accuracy": ...}`` at the reject point.
        note: why a requested tuning could not be met.
    """

    thresholds: dict[str, float] | None = None
    min_precision: float | None = None
    unmet: dict[str, float] = field(default_factory=dict)
    abstain_below: float | None = None
    target_accuracy: float | None = None
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form (fields that are unset left out)."""
        out: dict[str, Any] = {}
        if self.thresholds is not None:
            out["thresholds"] = dict(self.thresholds)
        for key in ("min_precision", "abstain_below", "target_accuracy", "note"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.unmet:
            out["unmet"] = dict(self.unmet)
        if self.coverage:
            out["coverage"] = {k: dict(v) for k, v in self.coverage.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionScores:
        """Read what :meth:`to_json` wrote."""

        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        thresholds = data.get("thresholds")
        note = data.get("note")
        return cls(
            thresholds=None
            if thresholds is None
            else {str(k): float(v) for k, v in dict(thresholds).items()},
            min_precision=number("min_precision"),
            unmet={str(k): float(v) for k, v in dict(data.get("unmet", {})).items()},
            abstain_below=number("abstain_below"),
            target_accuracy=number("target_accuracy"),
            coverage={
                str(k): {str(a): float(b) for a, b in dict(v).items()}
                for k, v in dict(data.get("coverage", {})).items()
            },
            note=None if note is None else str(note),
        )


@dataclass(frozen=True)
class RunMetrics:
    """A run's ``metrics.json``: how training went and how the model scores.

    Attributes:
        best_epoch: the epoch (or solve) whose weights were kept.
        epochs_run: epochs (or solves) run.
        stopped_early: training stopped on ``train.patience``.
        train_seconds: wall time from the start of the run to the trained model.
        data: split source -> its row counts.
        dev: scores on the dev split.
        test: scores on the test split, when there is one.
        calibration: temperature scaling and the calibration error before and after.
        decision: per-label thresholds or the reject point, as tuned on dev.
    """

    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    data: dict[str, SplitCounts]
    dev: Scores
    test: Scores | None = None
    calibration: CalibrationScores | None = None
    decision: DecisionScores | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form: ``metrics.json``, keys as they have always been."""
        out: dict[str, Any] = {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "train_seconds": self.train_seconds,
            "data": {source: counts.to_json() for source, counts in self.data.items()},
            "dev": self.dev.to_json(),
        }
        if self.test is not None:
            out["test"] = self.test.to_json()
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_json()
        if self.decision is not None:
            out["decision"] = self.decision.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunMetrics:
        """Read a ``metrics.json`` (today's or an older fenlei's).

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not a run's metrics.
        """
        test = data.get("test")
        calibration = data.get("calibration")
        decision = data.get("decision")
        return cls(
            best_epoch=int(data["best_epoch"]),
            epochs_run=int(data["epochs_run"]),
            stopped_early=bool(data["stopped_early"]),
            train_seconds=float(data["train_seconds"]),
            data={str(k): SplitCounts.from_json(v) for k, v in dict(data.get("data", {})).items()},
            dev=Scores.from_json(data["dev"]),
            test=None if test is None else Scores.from_json(test),
            calibration=None if calibration is None else CalibrationScores.from_json(calibration),
            decision=None if decision is None else DecisionScores.from_json(decision),
        )
