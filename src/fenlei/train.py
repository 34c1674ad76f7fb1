"""The one training loop, for every model family.

Enter through :func:`fit`. Batches group texts of similar length (no compute spent on
padding); the optimizer is Adam or AdamW (plus Adagrad, SparseAdam or SGD for sparse
embedding tables) with warm-up and decay; gradients are clipped; dropout and weight decay
come from config; the loss may be class-weighted; the dev metric drives early stopping and
the best weights are restored. A checkpoint is written atomically after every epoch, and
``resume=True`` continues from it exactly. ``metrics.jsonl`` gets one line per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
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
from fenlei.augment import augment_batch
from fenlei.config import AugmentConfig, TrainConfig
from fenlei.data import Dataset, LabelSet
from fenlei.errors import ConfigError
from fenlei.models import batched_logits, to_probs
from fenlei.models.nbsvm import NBLogistic
from fenlei.progress import ProgressReporter
from fenlei.tokenize import Encoder

__all__ = ["Run", "fit", "pick_device", "training_batches"]

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """What training produced: the model (best weights restored) and its history."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    @property
    def best_dev(self) -> dict[str, float]:
        """Dev metrics of the best epoch."""
        for record in self.history:
            if record["epoch"] == self.best_epoch:
                return dict(record["dev"])
        return {}


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_batches(
    lengths: Sequence[int], batch_size: int, *, epoch_seed: int, bucket: bool
) -> list[list[int]]:
    """Shuffled batches of indices; with ``bucket``, texts of similar length share a batch.

    Length bucketing sorts windows of 50 batches by length, then shuffles the batch order,
    so padding is small and every epoch still sees a new order.
    """
    rng = np.random.default_rng(epoch_seed)
    order = rng.permutation(len(lengths)).tolist()
    if bucket:
        window = batch_size * 50
        order = [
            i
            for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lambda j: lengths[j])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _targets(dataset: Dataset, labels: LabelSet, n_out: int) -> torch.Tensor:
    if labels.multi_label:
        y = torch.zeros((len(dataset), len(labels)))
        for row, ex in enumerate(dataset.examples):
            y[row, labels.encode(ex.labels)] = 1.0
        return y
    idx = torch.tensor([labels.index(ex.labels[0]) for ex in dataset.examples])
    return idx.float()[:, None] if n_out == 1 else idx


def _class_weights(y: torch.Tensor, n_labels: int, multi_label: bool) -> torch.Tensor:
    # sklearn's "balanced": n_samples / (n_classes * count); multi-label: neg/pos per label.
    if multi_label:
        pos = y.sum(dim=0).clamp(min=1)
        return (len(y) - pos).clamp(min=1) / pos
    counts = torch.bincount(y.long().view(-1), minlength=n_labels).float().clamp(min=1)
    return len(y) / (n_labels * counts)


class _Loss:
    """Per-example loss for softmax, single-logit and multi-label heads, optionally weighted."""

    def __init__(self, n_out: int, multi_label: bool, weights: torch.Tensor | None) -> None:
        self.n_out, self.multi_label, self.weights = n_out, multi_label, weights

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(
                logits, y, pos_weight=self.weights
            )
        if self.n_out == 1:
            per = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
            if self.weights is not None:
                per = per * self.weights[y.long()]
            return per.mean()
        return nn.functional.cross_entropy(logits, y, weight=self.weights)


def _split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    sparse_ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse
    }
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    sparse = [p for p in model.parameters() if p.requires_grad and id(p) in sparse_ids]
    return dense, sparse


def _optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    dense, sparse = _split_params(model)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel (CPU and CUDA) updates every tensor in one pass: on MiniLM's 22.7M
    # parameters 17 ms per step instead of 107 ms; HF Trainer uses it by default too.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in dense)
    optimizers: list[torch.optim.Optimizer] = [
        opt_cls(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    ]
    if sparse:
        optimizers.append(_sparse_optimizer(sparse, cfg))
    return optimizers


def _sparse_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    # Adagrad: one state tensor and the cheapest sparse step that converges in few epochs
    # (SparseAdam took ~40 % of the linear model's step; plain SGD needs more epochs).
    if cfg.sparse_optimizer == "adam":
        return torch.optim.SparseAdam(params, lr=cfg.sparse_lr)
    if cfg.sparse_optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.sparse_lr)
    return torch.optim.Adagrad(params, lr=cfg.sparse_lr)


def _lr_factor(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _dev_metrics(
    model: nn.Module,
    dev_ids: list[list[int]],
    y_dev: torch.Tensor,
    loss_fn: _Loss,
    labels: LabelSet,
    pad_id: int,
    device: torch.device,
) -> dict[str, float]:
    model.eval()
    logits = batched_logits(model, dev_ids, pad_id=pad_id, batch_size=256, device=device)
    loss = float(loss_fn(logits, y_dev))
    probs = to_probs(logits, multi_label=labels.multi_label).numpy()
    if labels.multi_label:
        pred, true = (probs >= 0.5).astype(int), y_dev.numpy().astype(int)
    else:
        pred = probs.argmax(axis=1)
        true = y_dev.view(-1).long().numpy()
    return {
        "loss": loss,
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)),
    }


def _improved(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _best_weights(
    run_dir: Path | None, memory: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    if memory:
        return memory
    return load_best_weights(run_dir) if run_dir is not None else None


def _write_history(run_dir: Path | None, history: list[dict[str, Any]]) -> None:
    if run_dir is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in history)
        atomic_write_text(run_dir / "metrics.jsonl", lines, durable=False)


def _train_epoch(
    model: nn.Module,
    batches: list[list[int]],
    train_ids: list[list[int]],
    y: torch.Tensor,
    ctx: _Context,
    state: _State,
) -> float:
    model.train()
    total = 0.0
    for batch in batches:
        seqs = [train_ids[i] for i in batch]
        if ctx.augment is not None and ctx.augment.active:
            seqs = augment_batch(seqs, ctx.augment, (ctx.cfg.seed, state.step), protect=ctx.protect)
        ids, mask = ctx.encoder.pad(seqs)
        target = y[batch].to(ctx.device)
        for opt in ctx.optimizers:
            opt.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss = ctx.loss_fn(model(ids.to(ctx.device), mask.to(ctx.device)), target)
        loss.backward()  # type: ignore[no-untyped-call]
        if ctx.cfg.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(ctx.dense_params, ctx.cfg.clip_grad_norm)
        with warnings.catch_warnings():
            # torch's sparse Adagrad builds COO tensors and warns that it skips their checks
            warnings.filterwarnings("ignore", message="Sparse invariant checks")
            for opt in ctx.optimizers:
                opt.step()
        for sched in ctx.schedulers:
            sched.step()
        state.step += 1
        value = float(loss.detach())
        total += value
        if ctx.progress is not None:
            ctx.progress.step(value)
    return total / max(1, len(batches))


@dataclass
class _Context:
    cfg: TrainConfig
    encoder: Encoder
    device: torch.device
    loss_fn: _Loss
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LambdaLR]
    dense_params: list[nn.Parameter]
    progress: ProgressReporter | None
    use_amp: bool
    augment: AugmentConfig | None = None
    protect: int = 0

    def autocast(self) -> Any:
        # bf16 autocast needs no gradient scaler (its exponent range is fp32's).
        if not self.use_amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def _cpu_has_amx() -> bool:
    try:  # a private helper, but the only way torch exposes the AMX check
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def use_mixed_precision(cfg: TrainConfig, device: torch.device, model: nn.Module) -> bool:
    """Whether training runs under bf16 autocast.

    On CUDA whenever ``train.amp`` is on. On CPU only for model families that declare a
    measured gain (a ``bf16_cpu_training`` hook: the transformers) and only on CPUs with AMX tiles
    (Intel Xeon 4th generation and later), where bf16 matmuls are several times faster than
    fp32; elsewhere bf16 on CPU is emulated and slower.
    """
    if not cfg.amp:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and hasattr(model, "bf16_cpu_training") and _cpu_has_amx()


def _precision_setup(model: nn.Module, ctx: _Context) -> AbstractContextManager[Any]:
    hook = getattr(model, "bf16_cpu_training", None)
    if ctx.use_amp and ctx.device.type == "cpu" and hook is not None:
        return hook()  # type: ignore[no-any-return]
    return nullcontext()


def _restore(run_dir: Path | None, ctx: _Context, model: nn.Module, state: _State) -> None:
    if run_dir is None:
        return
    progress = load_checkpoint(run_dir, model, ctx.optimizers)
    if progress is None:
        logger.info("no checkpoint in %s: starting from scratch", run_dir)
        return
    for sched, sd in zip(ctx.schedulers, progress["schedulers"], strict=True):
        sched.load_state_dict({"lr_lambdas": [None], **sd})  # older checkpoints lack it
    state.epoch, state.step = progress["epoch"], progress["step"]
    state.best, state.best_epoch = progress["best"], progress["best_epoch"]
    state.bad_epochs, state.history = progress["bad_epochs"], progress["history"]
    if state.best_epoch == state.epoch:  # killed between the checkpoint and marking it best
        mark_best_checkpoint(run_dir)
    logger.info("resuming after epoch %d", state.epoch)


def _run_epoch(
    model: nn.Module,
    train_ids: list[list[int]],
    lengths: list[int],
    y: torch.Tensor,
    dev_ids: list[list[int]],
    y_dev: torch.Tensor,
    labels: LabelSet,
    ctx: _Context,
    state: _State,
) -> dict[str, Any]:
    """Train one epoch, score dev, update the early-stopping state; return the epoch record."""
    cfg = ctx.cfg
    epoch = state.epoch + 1
    batches = training_batches(
        lengths, cfg.batch_size, epoch_seed=cfg.seed + epoch, bucket=cfg.bucket_by_length
    )
    if ctx.progress is not None:
        ctx.progress.epoch_start(epoch, cfg.epochs, len(batches))
    started = time.perf_counter()
    train_loss = _train_epoch(model, batches, train_ids, y, ctx, state)
    with ctx.autocast():
        dev_metrics = _dev_metrics(
            model,
            dev_ids,
            y_dev.to(ctx.device),
            ctx.loss_fn,
            labels,
            ctx.encoder.pad_id,
            ctx.device,
        )
    value = dev_metrics[cfg.monitor]
    is_best = _improved(cfg.monitor, value, state.best)
    if is_best:
        state.best, state.best_epoch, state.bad_epochs = value, epoch, 0
    else:
        state.bad_epochs += 1
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "dev": dev_metrics,
        "lr": ctx.optimizers[0].param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
        "precision": "bf16-mixed" if ctx.use_amp else "fp32",
        "is_best": is_best,
    }
    state.history.append(record)
    state.epoch = epoch
    return record


class _CheckpointWriter:
    """Writes checkpoints on one background thread, so disk time overlaps training.

    The state is copied first (:func:`snapshot`). Training never waits for the disk: a
    checkpoint submitted while another is being written is queued, and a newer one replaces
    it (the newer state supersedes it). Errors from the thread are re-raised by the next
    :meth:`submit` or by :meth:`close`.
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


def _should_checkpoint(
    cfg: TrainConfig, state: _State, writer: _CheckpointWriter, *, best: bool
) -> bool:
    """Whether this epoch's checkpoint is worth writing.

    None is when training ends with this epoch (the best weights are kept in memory and the
    run is saved next). A best epoch otherwise always is, because ``best.safetensors`` must
    match the best epoch that every later checkpoint records; it may queue behind the write
    in progress. Another epoch is skipped while the disk is busy: on small data an epoch is
    shorter than writing a 100 MB table, and waiting for the disk had nearly doubled the
    linear model's training time on sms_spam. A resume then replays at most those short
    epochs, with the same result (the RNG state is in the checkpoint).
    """
    finished = state.epoch >= cfg.epochs or (
        cfg.patience is not None and state.bad_epochs >= cfg.patience
    )
    if finished:
        return False
    return best or not writer.busy()


def _checkpoint(
    run_dir: Path | None,
    model: nn.Module,
    ctx: _Context,
    state: _State,
    writer: _CheckpointWriter,
    *,
    best: bool,
) -> CheckpointSnapshot | None:
    if run_dir is None:
        return None
    # LambdaLR stores None for plain functions, so its state is JSON-ready
    schedulers = [s.state_dict() for s in ctx.schedulers]
    progress = {
        "epoch": state.epoch,
        "step": state.step,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "history": state.history,
        "schedulers": schedulers,
    }
    snap = snapshot(model, ctx.optimizers, progress)
    writer.submit(run_dir, snap, best=best)
    return snap


def _copy_weights(model: nn.Module, snap: CheckpointSnapshot | None) -> dict[str, torch.Tensor]:
    """The model's weights now, shared with a checkpoint just taken (it copied them already)."""
    if snap is None:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {k.removeprefix("model."): v for k, v in snap.tensors.items() if k.startswith("model.")}


def fit(
    model: nn.Module,
    encoder: Encoder,
    train: Dataset,
    dev: Dataset,
    labels: LabelSet,
    cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    progress: ProgressReporter | None = None,
    augment: AugmentConfig | None = None,
    train_ids: list[list[int]] | None = None,
) -> Run:
    """Train ``model`` on ``train``, choosing the best epoch on ``dev``.

    Args:
        model: a network from :func:`fenlei.models.build_model`.
        encoder: turns texts into ids (already fitted).
        train, dev: validated datasets; dev labels must all occur in train.
        labels: the label set fitted on train.
        cfg: the ``train`` section of the run config.
        run_dir: where checkpoints and ``metrics.jsonl`` go (None: keep nothing on disk).
        resume: continue from ``run_dir/checkpoint`` when there is one.
        progress: receives epoch and step events (a progress bar).
        augment: token deletion/swap applied to each training batch (seeded by step).
        train_ids: ``encoder.encode_ids(train.texts)`` when the caller has it already.

    Returns:
        The run, with the best dev epoch's weights loaded when ``cfg.restore_best``.

    Example:
        >>> run = fit(model, encoder, train, dev, labels, cfg.train)  # doctest: +SKIP
    """
    torch.set_flush_denormal(True)  # LSTM backward slows 5-12x on denormals (MODELS.md)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model.to(device)
    if cfg.gradient_checkpointing:
        enable = getattr(model, "enable_gradient_checkpointing", None)
        if enable is None:
            raise ConfigError(
                f"train.gradient_checkpointing=true: {type(model).__name__} has no "
                "checkpointing; use it with transformer.v1"
            )
        enable()
    if train_ids is None:
        train_ids = encoder.encode_ids(train.texts)
    dev_ids = encoder.encode_ids(dev.texts)
    n_out = _head_width(model)
    y, y_dev = _targets(train, labels, n_out), _targets(dev, labels, n_out)
    weights = (
        _class_weights(y, len(labels), labels.multi_label).to(device)
        if cfg.class_weight == "balanced"
        else None
    )
    if isinstance(model, NBLogistic):
        if augment is not None and augment.active:
            raise ConfigError(
                "augment.* needs a family trained in batches; nbsvm.v1 is solved in one go "
                "(set augment.delete=0 and augment.swap=0)"
            )
        loss_fn = _Loss(n_out, labels.multi_label, weights)
        solved = _SolveInputs(train_ids, y, dev_ids, y_dev, labels, loss_fn, encoder.pad_id)
        return _fit_by_solving(model, solved, cfg, run_dir=run_dir, progress=progress)
    optimizers = _optimizers(model, cfg)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    factor = _lr_factor(cfg, cfg.epochs * steps_per_epoch)
    use_amp = use_mixed_precision(cfg, device, model)
    ctx = _Context(
        cfg=cfg,
        encoder=encoder,
        device=device,
        loss_fn=_Loss(n_out, labels.multi_label, weights),
        optimizers=optimizers,
        schedulers=[torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers],
        dense_params=_split_params(model)[0],
        progress=progress,
        use_amp=use_amp,
        augment=augment,
        protect=1 if encoder.cfg.kind == "pretrained" else 0,
    )
    state = _State()
    best_weights: dict[str, torch.Tensor] = {}
    if resume:
        _restore(run_dir, ctx, model, state)
    lengths = [len(ids) for ids in train_ids]
    stopped_early = False
    writer = _CheckpointWriter()
    try:
        with _precision_setup(model, ctx):
            while state.epoch < cfg.epochs:
                if cfg.patience is not None and state.bad_epochs >= cfg.patience:
                    stopped_early = True
                    break
                record = _run_epoch(
                    model, train_ids, lengths, y, dev_ids, y_dev, labels, ctx, state
                )
                _write_history(run_dir, state.history)
                snap = None
                if _should_checkpoint(cfg, state, writer, best=record["is_best"]):
                    snap = _checkpoint(run_dir, model, ctx, state, writer, best=record["is_best"])
                if record["is_best"]:
                    best_weights = _copy_weights(model, snap)
                if progress is not None:
                    progress.epoch_end(record)
    except BaseException:
        with suppress(Exception):  # the training error matters more than a checkpoint's
            writer.close(flush=True)  # an interrupted run keeps its newest state for --resume
        raise
    writer.close(flush=False)
    best = _best_weights(run_dir, best_weights) if cfg.restore_best else None
    if best:
        model.load_state_dict(best)
    model.to("cpu").eval()
    return Run(model, state.history, state.best_epoch or state.epoch, stopped_early)


@dataclass
class _SolveInputs:
    train_ids: list[list[int]]
    y: torch.Tensor
    dev_ids: list[list[int]]
    y_dev: torch.Tensor
    labels: LabelSet
    loss_fn: _Loss
    pad_id: int


def _solver_targets(y: torch.Tensor, labels: LabelSet, n_out: int) -> list[tuple[int, Any]]:
    """(output column, boolean target) pairs: one per label, or one for a binary task."""
    values = y.numpy()
    if labels.multi_label:
        return [(k, values[:, k] > 0.5) for k in range(values.shape[1])]
    if n_out == 1:
        return [(0, values[:, 0] > 0.5)]
    if n_out == 2:
        return [(1, values == 1)]
    return [(k, values == k) for k in range(n_out)]


def _fit_by_solving(
    model: NBLogistic,
    data: _SolveInputs,
    cfg: TrainConfig,
    *,
    run_dir: Path | None,
    progress: ProgressReporter | None,
) -> Run:
    """Solve a family without epochs once per C in ``model.c_values``; keep the best on dev.

    Each solve is one record of ``metrics.jsonl`` (``epoch`` numbers the solves, ``c`` gives
    its value), so the progress bar, early stopping's best choice and the training-curve plot
    read it like an epoch. Nothing is checkpointed: a solve is restarted, not resumed.
    """
    model.to("cpu")
    features = model.feature_matrix(data.train_ids, pad_id=data.pad_id)
    positives = _solver_targets(data.y, data.labels, model.n_outputs)
    class_weight = "balanced" if cfg.class_weight == "balanced" else None
    state = _State()
    best_weights: dict[str, torch.Tensor] = {}
    for trial, c in enumerate(model.c_values, start=1):
        if progress is not None:
            progress.epoch_start(trial, len(model.c_values), 1)
        started = time.perf_counter()
        model.solve(features, positives, c=c, class_weight=class_weight, seed=cfg.seed)
        model.eval()
        train_loss = float(data.loss_fn(model.feature_logits(features), data.y))
        if progress is not None:
            progress.step(train_loss)
        cpu = torch.device("cpu")
        dev = _dev_metrics(
            model, data.dev_ids, data.y_dev, data.loss_fn, data.labels, data.pad_id, cpu
        )
        is_best = _improved(cfg.monitor, dev[cfg.monitor], state.best)
        if is_best:
            state.best, state.best_epoch = dev[cfg.monitor], trial
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        record = {
            "epoch": trial,
            "c": c,
            "train_loss": train_loss,
            "dev": dev,
            "seconds": time.perf_counter() - started,
            "precision": "fp32",
            "is_best": is_best,
        }
        state.history.append(record)
        _write_history(run_dir, state.history)
        if progress is not None:
            progress.epoch_end(record)
    if cfg.restore_best:
        model.load_state_dict(best_weights)
    model.eval()
    return Run(model, state.history, state.best_epoch, False)


def _head_width(model: nn.Module) -> int:
    if isinstance(model, NBLogistic):
        return model.n_outputs
    head = getattr(model, "head", None)
    assert isinstance(head, nn.Linear), "every fenlei model ends in a Linear called head"
    return int(head.out_features)
