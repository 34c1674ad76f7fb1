"""Solved families (``Family.trains_by == "solver"``, e.g. ``nbsvm.v1``): a sweep, not epochs.

The feature matrix is built once; the model solves itself (scikit-learn) once per value of
its regularisation ``C`` and each solve is scored on dev. Each solve is one
:class:`~fenlei.records.EpochRecord` with ``param={"c": C}``, the same record the gradient
loop writes, so the progress bar, the CLI, the plots and the bench read it like an epoch.
Nothing is checkpointed: a solve is rerun, not resumed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
from torch import nn

from fenlei.config import TrainConfig
from fenlei.decision import DecisionRule
from fenlei.errors import ConfigError
from fenlei.models import Family
from fenlei.progress import ProgressReporter
from fenlei.records import EpochRecord
from fenlei.runtime import Dist
from fenlei.train.checkpoint import write_history
from fenlei.train.data import TrainData
from fenlei.train.objective import Loss, Targets
from fenlei.train.state import EpochHook, LoopState, Run, call_epoch_hook, dev_metrics, improved

__all__ = ["Solvable", "fit_by_solving", "solver_targets"]


@runtime_checkable
class Solvable(Protocol):
    """What a solved family's module offers the sweep (see ``models/nbsvm.py``)."""

    c_values: tuple[float, ...]
    n_outputs: int

    def feature_matrix(self, id_lists: Sequence[Sequence[int]], *, pad_id: int) -> Any:
        """Binary (N, features) matrix of the texts."""

    def feature_logits(self, features: Any) -> torch.Tensor:
        """Logits (N, n_outputs) of a feature matrix."""

    def solve(
        self,
        features: Any,
        positives: Sequence[tuple[int, np.ndarray]],
        *,
        c: float,
        class_weight: str | None = None,
        seed: int = 0,
        cache: dict[int, Any] | None = None,
    ) -> None:
        """Fit the weights for one ``c``; ``cache`` lives as long as the sweep (what does not
        depend on ``c``)."""


def solver_targets(targets: Targets, *, alpha: float = 1.0) -> list[tuple[int, np.ndarray]]:
    """(output column, target) pairs: one per label, or one for a binary task.

    Hard labels give boolean targets. With soft probabilities (distillation) a target is the
    probability (float64) each text has the label: the teacher's for a text without a hard
    label, ``alpha`` of the teacher's plus ``1 - alpha`` of the label for one with a label
    (the soft/hard mix the gradient loop's loss makes, folded into the target).
    """
    pairs = []
    for column in _output_columns(targets):
        hard = None if targets.hard is None else _hard_column(targets, column)
        if targets.soft is None:
            assert hard is not None
            pairs.append((column, hard))
            continue
        # a single-logit head's column 0 is the probability of class 1
        single_logit = targets.width == 1 and not targets.multi_label
        share = targets.soft[:, 1 if single_logit else column].double().numpy().copy()
        if hard is not None:
            known = slice(None) if targets.known is None else targets.known.numpy()
            share[known] = alpha * share[known] + (1.0 - alpha) * hard[known]
        pairs.append((column, np.clip(share, 0.0, 1.0)))
    return pairs


def _output_columns(targets: Targets) -> list[int]:
    """The columns a solver fits: every label's, or one of a binary task (a single logit, or
    column 1 of two softmax outputs, whose column 0 is its mirror)."""
    if targets.multi_label or targets.width > 2:
        return list(range(targets.width))
    return [targets.width - 1]


def _hard_column(targets: Targets, column: int) -> np.ndarray:
    assert targets.hard is not None
    values = targets.hard.numpy()
    if targets.multi_label:
        return values[:, column] > 0.5
    return values == (1 if targets.width <= 2 else column)  # type: ignore[no-any-return]


def _check_solvable(family: Family, data: TrainData) -> None:
    if data.augmenting:
        raise ConfigError(
            f"augment.* needs a family trained in batches; {family.name} is solved in one go "
            "(set augment.delete=0 and augment.swap=0)"
        )


def fit_by_solving(
    model: nn.Module,
    family: Family,
    data: TrainData,
    dev: TrainData,
    cfg: TrainConfig,
    *,
    loss: Loss,
    rule: DecisionRule,
    run_dir: Path | None = None,
    progress: ProgressReporter | None = None,
    on_epoch: EpochHook | None = None,
    dist: Dist | None = None,
) -> Run:
    """Solve once per C in ``model.c_values`` and keep the best on dev.

    Raises:
        ConfigError: augmentation is on (a solve sees each text once, as it is).
    """
    _check_solvable(family, data)
    assert isinstance(model, Solvable), f"{family.name} declares a solver but has no solve()"
    dist = dist or Dist()
    model.to("cpu")
    features = model.feature_matrix(data.ids, pad_id=data.pad_id)
    sweep = _Sweep(model, features, solver_targets(data.targets, alpha=loss.alpha), data, dev, cfg)
    best: dict[str, torch.Tensor] = {}
    stopped_by = None
    for trial, c in enumerate(model.c_values, start=1):
        if progress is not None:
            progress.epoch_start(trial, len(model.c_values), 1)
        record = sweep.solve(trial, c, loss, rule)
        if progress is not None:
            progress.step(record.train_loss)
        if record.is_best:
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if run_dir is not None and dist.is_main:
            write_history(run_dir, sweep.state.history)
        stop = call_epoch_hook(on_epoch, record, dist)
        if progress is not None:
            progress.epoch_end(record)
        if stop:
            stopped_by = "hook"
            break
    if cfg.restore_best:
        model.load_state_dict(best)
    model.eval()
    return Run(model, sweep.state.history, sweep.state.best_epoch, stopped_by)


@dataclass
class _Sweep:
    model: Solvable
    features: Any
    positives: list[tuple[int, np.ndarray]]
    data: TrainData
    dev: TrainData
    cfg: TrainConfig
    state: LoopState = field(default_factory=LoopState)
    cache: dict[int, Any] = field(default_factory=dict)

    def solve(self, trial: int, c: float, loss: Loss, rule: DecisionRule) -> EpochRecord:
        """Solve for ``c``, score dev, update the best; the solve's record."""
        cfg, state = self.cfg, self.state
        started = time.perf_counter()
        class_weight = "balanced" if cfg.class_weight == "balanced" else None
        self.model.solve(
            self.features,
            self.positives,
            c=c,
            class_weight=class_weight,
            seed=cfg.seed,
            cache=self.cache,
        )
        module = cast(nn.Module, self.model)
        module.eval()
        train_loss = float(loss(self.model.feature_logits(self.features), self.data.targets))
        scores = dev_metrics(module, self.dev, loss, rule, torch.device("cpu"))
        is_best = improved(cfg.monitor, scores[cfg.monitor], state.best)
        if is_best:
            state.best, state.best_epoch = scores[cfg.monitor], trial
        record = EpochRecord(
            epoch=trial,
            train_loss=train_loss,
            dev=scores,
            seconds=time.perf_counter() - started,
            is_best=is_best,
            param={"c": c},
        )
        state.history.append(record)
        state.epoch = trial
        return record
