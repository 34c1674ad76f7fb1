"""The entry of training: :func:`fit` picks the solver or the gradient loop for a family.

Everything else in :mod:`fenlei.train` is reached through it. It resolves the device, applies
the family's hooks, chooses the loss from the targets when none is given, and reports a
failure to the ``on_error`` hook before it propagates. It sets no process-wide torch state
(threads, flush-denormal, seeds): entry points do, through
:func:`fenlei.runtime.configure_torch`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from fenlei.config import TrainConfig
from fenlei.decision import DecisionRule
from fenlei.errors import ConfigError
from fenlei.models import Family
from fenlei.progress import ProgressReporter
from fenlei.runtime import Dist, resolve_device
from fenlei.train.data import TrainData
from fenlei.train.loop import fit_by_gradient
from fenlei.train.objective import Loss, loss_for
from fenlei.train.solve import fit_by_solving
from fenlei.train.state import EpochHook, ErrorHook, Run

__all__ = ["fit"]

logger = logging.getLogger(__name__)


def fit(
    model: nn.Module,
    family: Family,
    data: TrainData,
    dev: TrainData,
    cfg: TrainConfig,
    *,
    rule: DecisionRule | None = None,
    loss: Loss | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    progress: ProgressReporter | None = None,
    on_epoch: EpochHook | None = None,
    on_error: ErrorHook | None = None,
    dist: Dist | None = None,
) -> Run:
    """Train ``model`` on ``data``, choosing the best epoch on ``dev``.

    Args:
        model: a network from :func:`fenlei.models.build_model`.
        family: its family (:func:`fenlei.models.family_of`): loop or solver, and hooks.
        data: training ids and targets (hard labels, soft probabilities or both).
        dev: dev ids and hard labels; they drive early stopping and the best epoch.
        cfg: the ``train`` section of the run config.
        rule: how dev probabilities become labels (give ``eval.threshold`` for multi-label);
            default: argmax, or 0.5 per label.
        loss: default: chosen from ``data.targets`` (:func:`~fenlei.train.objective.loss_for`,
            with ``cfg.class_weight``).
        run_dir: where checkpoints and ``metrics.jsonl`` go (None: keep nothing on disk).
        resume: continue from ``run_dir/checkpoint`` when there is one.
        progress: receives epoch and step events (a progress bar).
        on_epoch: called with each :class:`~fenlei.records.EpochRecord`; raising
            :class:`~fenlei.train.state.StopTraining` ends training cleanly after it.
        on_error: called with the exception when training fails, before it propagates.
        dist: this process's rank; only the main rank writes files.

    Returns:
        The run, with the best dev epoch's weights loaded when ``cfg.restore_best``.

    Raises:
        ConfigError: a device that is not there, soft targets for a family that cannot
            learn them, or a setting the family does not support.

    Example:
        >>> run = fit(model, family_of("lstm.v1"), data, dev, cfg.train)  # doctest: +SKIP
    """
    try:
        device = resolve_device(cfg.device)
        _check_targets(family, data)
        loss = loss or loss_for(data.targets, class_weight=cfg.class_weight)
        rule = rule or DecisionRule(multi_label=data.targets.multi_label)
        if family.trains_by == "solver":
            return fit_by_solving(
                model,
                family,
                data,
                dev,
                cfg,
                loss=loss,
                rule=rule,
                run_dir=run_dir,
                progress=progress,
                on_epoch=on_epoch,
                dist=dist,
            )
        _enable_gradient_checkpointing(model, family, cfg)
        return fit_by_gradient(
            model,
            family,
            data,
            dev,
            cfg,
            loss=loss,
            rule=rule,
            device=device,
            run_dir=run_dir,
            resume=resume,
            progress=progress,
            on_epoch=on_epoch,
            dist=dist,
        )
    except BaseException as exc:
        _report_failure(on_error, exc)
        raise


def _check_targets(family: Family, data: TrainData) -> None:
    if data.targets.soft is not None and not family.soft_targets:
        raise ConfigError(
            f"{family.name} learns from hard labels only, not soft targets; "
            "distil into a family that learns from soft targets (Family.soft_targets)"
        )


def _enable_gradient_checkpointing(model: nn.Module, family: Family, cfg: TrainConfig) -> None:
    if not cfg.gradient_checkpointing:
        return
    if family.gradient_checkpointing is None:
        raise ConfigError(
            f"train.gradient_checkpointing=true: {family.name} has no gradient checkpointing; "
            "set train.gradient_checkpointing=false"
        )
    family.gradient_checkpointing(model)


def _report_failure(hook: ErrorHook | None, exc: BaseException) -> None:
    if hook is None:
        return
    try:
        hook(exc)
    except Exception:  # the training error matters more than the hook's
        logger.exception("the on_error hook failed")
