"""Records shared by the training modules: the run, the loop's state, hooks and the dev metric.

Below the loop, the solver and checkpointing; above only ``data`` and ``objective``.
:func:`dev_metrics` scores the dev set with the run's :class:`~fenlei.decision.DecisionRule`,
so early stopping judges by the rule that prediction and evaluation use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fenlei.decision import DecisionRule
from fenlei.models import batched_logits, to_probs
from fenlei.records import EpochRecord
from fenlei.runtime import Dist
from fenlei.train.data import TrainData
from fenlei.train.objective import Loss

__all__ = [
    "EpochHook",
    "ErrorHook",
    "LoopState",
    "Run",
    "StopTraining",
    "call_epoch_hook",
    "dev_metrics",
    "improved",
]

logger = logging.getLogger(__name__)

EpochHook = Callable[[EpochRecord], None]
"""Called after every epoch (or solve) with its record; may raise :class:`StopTraining`."""

ErrorHook = Callable[[BaseException], None]
"""Called when training fails, before the error propagates."""


class StopTraining(Exception):
    """Raised by an ``on_epoch`` hook to end training after this epoch (pruning, a budget).

    Training then ends like a finished run: the best weights so far are kept, the
    checkpoint writer is closed, and :attr:`Run.stopped_by` is ``"hook"``.

    Example:
        >>> def prune(record):
        ...     if record.dev["accuracy"] < 0.2:
        ...         raise StopTraining("no better than chance")
    """


@dataclass
class Run:
    """What training produced: the model (best weights restored) and its history."""

    model: nn.Module
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_by: str | None = None  # "patience", "hook", or None when every epoch ran

    @property
    def stopped_early(self) -> bool:
        """Whether training ended before its last epoch (patience, or a hook)."""
        return self.stopped_by is not None

    @property
    def best_dev(self) -> dict[str, float]:
        """Dev metrics of the best epoch."""
        for record in self.history:
            if record.epoch == self.best_epoch:
                return dict(record.dev)
        return {}

    @property
    def best_record(self) -> EpochRecord | None:
        """The best epoch's record (None before any epoch)."""
        return next((r for r in self.history if r.epoch == self.best_epoch), None)


@dataclass
class LoopState:
    """Where training is: what a checkpoint saves and a resume restores."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[EpochRecord] = field(default_factory=list)

    def finished(self, epochs: int, patience: int | None) -> bool:
        """Whether no epoch is left: all ran, or patience ran out."""
        return self.epoch >= epochs or (patience is not None and self.bad_epochs >= patience)


def call_epoch_hook(hook: EpochHook | None, record: EpochRecord, dist: Dist) -> bool:
    """Run the per-epoch hook; True when it asked to stop (on any rank: all ranks stop)."""
    stop = False
    if hook is not None:
        try:
            hook(record)
        except StopTraining as why:
            logger.info("a hook stopped training after epoch %d: %s", record.epoch, why)
            stop = True
    return dist.mean(float(stop)) > 0 if dist.active else stop


def improved(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` (lower loss, higher anything else)."""
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def dev_metrics(
    model: nn.Module,
    dev: TrainData,
    loss_fn: Loss,
    rule: DecisionRule,
    device: torch.device,
    *,
    max_tokens: int | None = None,
) -> dict[str, float]:
    """Dev loss, accuracy and macro-F1, the labels chosen by ``rule`` (its threshold).

    ``dev.targets`` must hold hard labels; the model is left in eval mode. A text read as
    several windows is scored by its pooled logits, as prediction scores it.
    """
    model.eval()
    logits = batched_logits(
        model, dev.ids, pad_id=dev.pad_id, batch_size=256, max_tokens=max_tokens, device=device
    )
    if dev.windows is not None:
        logits = dev.windows.pool_logits(logits)
    targets = dev.targets.to(device)
    loss = float(loss_fn(logits.to(device), targets))
    probs = to_probs(logits, multi_label=rule.multi_label).numpy()
    pred, true = rule.predicted(probs), dev.targets.label_indices()
    accuracy, macro_f1 = accuracy_and_macro_f1(np.asarray(true), np.asarray(pred))
    return {"loss": loss, "accuracy": accuracy, "macro_f1": macro_f1}


def accuracy_and_macro_f1(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 as scikit-learn's ``accuracy_score`` and ``f1_score(average=
    "macro", zero_division=0)`` give them: label indices (N,), over the labels that occur in
    either; or 0/1 indicators (N, C), exact-set accuracy and F1 over every column.

    Not scikit-learn's own: importing ``sklearn.metrics`` (with the scipy, pandas and pyarrow
    it loads) held 140 MB of a training run's peak memory for two numbers an epoch
    (docs/benchmarks.md, "Training memory"); tests check both agree.

    Example:
        >>> accuracy_and_macro_f1(np.array([0, 1, 1]), np.array([0, 1, 0]))
        (0.6666666666666666, 0.6666666666666666)
    """
    if true.ndim == 2:
        accuracy = float(np.mean(np.all(true == pred, axis=1)))
        hit, said = true.astype(bool), pred.astype(bool)
        tp = (hit & said).sum(axis=0)
        fp, fn = (~hit & said).sum(axis=0), (hit & ~said).sum(axis=0)
    else:
        accuracy = float(np.mean(true == pred))
        labels = np.union1d(true, pred)
        tp = np.array([np.sum((true == k) & (pred == k)) for k in labels])
        fp = np.array([np.sum((true != k) & (pred == k)) for k in labels])
        fn = np.array([np.sum((true == k) & (pred != k)) for k in labels])
    denominator = 2 * tp + fp + fn  # F1 = 2PR / (P + R) = 2tp / (2tp + fp + fn)
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)
    return accuracy, float(f1.mean()) if len(f1) else 0.0
