"""Checkpoints of the gradient loop: when to write one, the writer thread, and resuming.

Training never waits for the disk: :func:`checkpoint` copies the state in memory
(:func:`~fenlei.artifact.snapshot`) and hands it to the :class:`CheckpointWriter` thread;
:func:`should_checkpoint` decides which epochs are worth writing; :func:`restore` puts a
checkpoint back so a resumed run ends bit-identical to an unbroken one. Only the main rank
writes (the loop guards the calls).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fenlei.artifact import (
    CheckpointSnapshot,
    atomic_write_text,
    load_best_weights,
    load_checkpoint,
    mark_best_checkpoint,
    snapshot,
    write_checkpoint,
)
from fenlei.config import TrainConfig
from fenlei.records import EpochRecord, history_lines
from fenlei.train.state import LoopState

__all__ = [
    "CheckpointWriter",
    "best_weights",
    "checkpoint",
    "copy_weights",
    "restore",
    "should_checkpoint",
    "write_history",
]

logger = logging.getLogger(__name__)

Schedulers = list[torch.optim.lr_scheduler.LambdaLR]


class CheckpointWriter:
    """Writes checkpoints on one background thread, so disk time overlaps training.

    The state is copied first (:func:`~fenlei.artifact.snapshot`). Training never waits for
    the disk: a checkpoint submitted while another is being written is queued, and a newer
    one replaces it (the newer state supersedes it). Errors from the thread are re-raised by
    the next :meth:`submit` or by :meth:`close`.

    Example:
        >>> writer = CheckpointWriter()
        >>> writer.close()
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queued: tuple[Path, CheckpointSnapshot, bool] | None = None
        self._writing = False
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="fenlei-checkpoint", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._queued is None and not self._closing:
                    self._cond.wait()
                if self._queued is None:
                    return
                (run_dir, snap, best), self._queued = self._queued, None
                self._writing = True
            try:
                write_checkpoint(run_dir, snap, best=best)
            except BaseException as exc:  # re-raised on the training thread
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def submit(self, run_dir: Path, snap: CheckpointSnapshot, *, best: bool) -> None:
        """Queue ``snap`` for writing, replacing a queued one that has not started."""
        with self._cond:
            self._raise_error()
            self._queued = (run_dir, snap, best)
            self._cond.notify_all()

    def busy(self) -> bool:
        """Whether a checkpoint is being written or waits to be."""
        with self._cond:
            return self._writing or self._queued is not None

    @property
    def alive(self) -> bool:
        """Whether the writer thread still runs (False once closed)."""
        return self._thread.is_alive()

    def close(self, *, flush: bool = True) -> None:
        """Stop the thread after the write in progress; ``flush`` also writes a queued one.

        Training that ended normally drops the queued checkpoint: the run is saved next and
        its checkpoint folder removed, so the write would be thrown away.
        """
        with self._cond:
            if not flush:
                self._queued = None
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._raise_error()


def should_checkpoint(
    cfg: TrainConfig,
    state: LoopState,
    writer: CheckpointWriter,
    *,
    best: bool,
    stopping: bool = False,
) -> bool:
    """Whether this epoch's checkpoint is worth writing.

    None is when training ends with this epoch (``stopping``: a hook asked to stop; the best
    weights are kept in memory and the run is saved next). A best epoch otherwise always
    is, because ``best.safetensors`` must match the best epoch that every later checkpoint
    records; it may queue behind the write in progress. Another epoch is skipped while the
    disk is busy: on small data an epoch is shorter than writing a 100 MB table, and waiting
    for the disk had nearly doubled the linear model's training time on sms_spam. A resume
    then replays at most those short epochs, with the same result (the RNG state is in the
    checkpoint).
    """
    if stopping or state.finished(cfg.epochs, cfg.patience):
        return False
    return best or not writer.busy()


def checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    schedulers: Schedulers,
    state: LoopState,
    writer: CheckpointWriter,
    *,
    best: bool,
) -> CheckpointSnapshot:
    """Copy the training state now and hand it to ``writer``; returns the copy."""
    progress = {
        "epoch": state.epoch,
        "step": state.step,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "history": [r.to_json() for r in state.history],
        # LambdaLR stores None for plain functions, so its state is JSON-ready
        "schedulers": [s.state_dict() for s in schedulers],
    }
    snap = snapshot(model, optimizers, progress)
    writer.submit(run_dir, snap, best=best)
    return snap


def restore(
    run_dir: Path,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    schedulers: Schedulers,
    state: LoopState,
) -> None:
    """Load ``run_dir``'s checkpoint into the model, optimizers, schedulers and ``state``."""
    progress: dict[str, Any] | None = load_checkpoint(run_dir, model, optimizers)
    if progress is None:
        logger.info("no checkpoint in %s: starting from scratch", run_dir)
        return
    for sched, sd in zip(schedulers, progress["schedulers"], strict=True):
        sched.load_state_dict({"lr_lambdas": [None], **sd})  # older checkpoints lack it
    state.epoch, state.step = progress["epoch"], progress["step"]
    state.best, state.best_epoch = progress["best"], progress["best_epoch"]
    state.bad_epochs = progress["bad_epochs"]
    state.history = [EpochRecord.from_json(r) for r in progress["history"]]
    if state.best_epoch == state.epoch:  # killed between the checkpoint and marking it best
        mark_best_checkpoint(run_dir)
    logger.info("resuming after epoch %d", state.epoch)


def copy_weights(model: nn.Module, snap: CheckpointSnapshot | None) -> dict[str, torch.Tensor]:
    """The model's weights now, shared with a checkpoint just taken (it copied them already)."""
    if snap is None:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k.removeprefix("model."): v for k, v in snap.tensors.items() if k.startswith("model.")}


def best_weights(
    run_dir: Path | None, memory: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights: kept in memory, else (a resume that has not improved since)
    the checkpoint folder's ``best.safetensors``."""
    if memory:
        return memory
    return load_best_weights(run_dir) if run_dir is not None else None


def write_history(run_dir: Path, history: list[EpochRecord]) -> None:
    """Rewrite ``metrics.jsonl`` with every record so far."""
    atomic_write_text(run_dir / "metrics.jsonl", history_lines(history), durable=False)
