"""The gradient loop: optimizers, schedule, mixed precision, epochs, early stopping.

Batches group texts of similar length (no compute spent on padding); the optimizer is Adam
or AdamW (plus Adagrad, SparseAdam or SGD for sparse embedding tables) with warm-up and
decay; gradients are clipped; the dev metric drives early stopping and the best weights are
restored. After each epoch the main rank rewrites ``metrics.jsonl`` and may checkpoint
(:mod:`fenlei.train.checkpoint`). Enter through :func:`fit_by_gradient` (via
:func:`fenlei.train.fit`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fenlei.artifact import CheckpointSnapshot
from fenlei.config import TrainConfig
from fenlei.decision import DecisionRule
from fenlei.models import Family
from fenlei.progress import ProgressReporter
from fenlei.records import EpochRecord
from fenlei.runtime import Dist
from fenlei.train.checkpoint import (
    CheckpointWriter,
    best_weights,
    checkpoint,
    copy_weights,
    restore,
    should_checkpoint,
    write_history,
)
from fenlei.train.data import TrainData
from fenlei.train.objective import Loss, Targets
from fenlei.train.shapes import few_shapes
from fenlei.train.state import EpochHook, LoopState, Run, call_epoch_hook, dev_metrics, improved
from fenlei.train.table_step import FusedTableStep, fused_table_step

__all__ = ["batch_for_data", "fit_by_gradient", "use_mixed_precision"]


def _split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    sparse_ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse
    }
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    sparse = [p for p in model.parameters() if p.requires_grad and id(p) in sparse_ids]
    return dense, sparse


def _optimizers(
    model: nn.Module, cfg: TrainConfig, family: Family | None = None
) -> list[torch.optim.Optimizer]:
    dense, sparse = _split_params(model)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel (CPU and CUDA) updates every tensor in one pass: on MiniLM's 22.7M
    # parameters 17 ms per step instead of 107 ms; HF Trainer uses it by default too.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in dense)
    optimizers: list[torch.optim.Optimizer] = [
        opt_cls(
            _lr_groups(model, dense, cfg, family),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=fused,
        )
    ]
    if sparse:
        optimizers.append(_sparse_optimizer(sparse, cfg))
    return optimizers


def batch_for_data(cfg: TrainConfig, rows: int) -> int:
    """``train.batch_size``, halved (not below 32) while an epoch of ``rows`` texts would
    take fewer than ``train.min_steps_per_epoch`` steps.

    Example:
        >>> from fenlei.config import load_config
        >>> cfg = load_config("linear").train
        >>> batch_for_data(cfg, 900), batch_for_data(cfg, 3_000), batch_for_data(cfg, 60_000)
        (32, 64, 128)
    """
    batch = cfg.batch_size
    floor = min(batch, 32)
    while cfg.min_steps_per_epoch and batch // 2 >= floor:
        if math.ceil(rows / batch) >= cfg.min_steps_per_epoch:
            break
        batch //= 2
    return batch


def _lr_groups(
    model: nn.Module, dense: list[nn.Parameter], cfg: TrainConfig, family: Family | None = None
) -> list[dict[str, Any]]:
    """The dense parameters as optimizer groups: the head's own at ``train.head_lr``, the
    token embedding table's at ``train.embedding_lr``, the rest at ``train.lr``."""
    own: list[tuple[set[int], float]] = []
    head = getattr(model, "head", None)
    if cfg.head_lr is not None and isinstance(head, nn.Module):
        own.append(({id(p) for p in head.parameters()}, cfg.head_lr))
    table = _token_table(model, family)
    if cfg.embedding_lr is not None and table is not None:
        own.append(({id(p) for p in table.parameters()}, cfg.embedding_lr))
    if not own:
        return [{"params": dense}]
    taken = set().union(*(ids for ids, _ in own))
    groups: list[dict[str, Any]] = [{"params": [p for p in dense if id(p) not in taken]}]
    groups += [{"params": [p for p in dense if id(p) in ids], "lr": lr} for ids, lr in own]
    return [g for g in groups if g["params"]]


def _token_table(model: nn.Module, family: Family | None) -> nn.Module | None:
    """The family's token embedding table, if it has one (``Family.token_embedding``)."""
    if family is None or family.token_embedding is None:
        return None
    return family.token_embedding(model)


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


def _cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware: AMX tiles or AVX-512 BF16 (AMD Zen 4+)."""
    try:  # private helpers, but the only way torch exposes these checks
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def use_mixed_precision(cfg: TrainConfig, device: torch.device, family: Family) -> bool:
    """Whether training runs under bf16 autocast.

    On CUDA whenever ``train.amp`` is on. On CPU only for families that declare a measured
    gain (``Family.bf16_cpu``: the transformers) and only on CPUs that multiply bf16 in
    hardware: AMX tiles (Intel Xeon 4th generation and later) or AVX-512 BF16 (AMD Zen 4
    and later), where bf16 matmuls are several times faster than fp32; elsewhere bf16 on CPU
    is emulated and slower.
    """
    if not cfg.amp:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and family.bf16_cpu is not None and _cpu_has_native_bf16()


@dataclass
class _Context:
    """What every step of one training run shares."""

    cfg: TrainConfig
    device: torch.device
    loss: Loss
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LambdaLR]
    dense_params: list[nn.Parameter]
    progress: ProgressReporter | None
    use_amp: bool
    dist: Dist
    batch_tokens: int | None = None  # the family's cap on padded tokens per scoring batch
    table_step: FusedTableStep | None = None  # a bag model's compiled table step

    def forward(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The training forward: through the fused table step when there is one."""
        if self.table_step is not None:
            return self.table_step.logits(ids, mask)
        return model(ids.to(self.device), mask.to(self.device))  # type: ignore[no-any-return]

    def autocast(self) -> AbstractContextManager[Any]:
        # bf16 autocast needs no gradient scaler (its exponent range is fp32's).
        if not self.use_amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def _context(
    model: nn.Module,
    family: Family,
    data: TrainData,
    cfg: TrainConfig,
    loss: Loss,
    device: torch.device,
    progress: ProgressReporter | None,
    dist: Dist,
) -> _Context:
    optimizers = _optimizers(model, cfg, family)
    factor = _lr_factor(cfg, cfg.epochs * data.steps_per_epoch(cfg.batch_size, dist))
    use_amp = use_mixed_precision(cfg, device, family)
    table_step = fused_table_step(
        model,
        family,
        cfg,
        optimizers,
        device=device,
        mixed_precision=use_amp,
        distributed=dist.active,
    )
    return _Context(
        cfg=cfg,
        device=device,
        loss=loss.to(device),
        optimizers=optimizers,
        schedulers=[torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers],
        dense_params=_split_params(model)[0],
        progress=progress,
        use_amp=use_amp,
        dist=dist,
        batch_tokens=family.batch_tokens,
        table_step=table_step,
    )


def _precision_setup(
    model: nn.Module, family: Family, ctx: _Context
) -> AbstractContextManager[Any]:
    if ctx.use_amp and ctx.device.type == "cpu" and family.bf16_cpu is not None:
        return family.bf16_cpu(model)
    return nullcontext()


def _step(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, target: Targets, ctx: _Context
) -> float:
    """One optimisation step; returns its loss."""
    for opt in ctx.optimizers:  # (already none after a step; a model may arrive with some)
        opt.zero_grad(set_to_none=True)
    with ctx.autocast():
        loss = ctx.loss(ctx.forward(model, ids, mask), target.to(ctx.device))
    loss.backward()  # type: ignore[no-untyped-call]
    if ctx.cfg.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(ctx.dense_params, ctx.cfg.clip_grad_norm)
    with warnings.catch_warnings():
        # torch's sparse Adagrad builds COO tensors and warns that it skips their checks
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        for opt in ctx.optimizers:
            opt.step()
    if ctx.table_step is not None:  # torch's Adagrad skipped the table: it has no gradient
        ctx.table_step.update()
    for opt in ctx.optimizers:  # free the gradients now, not at the next step: dev scoring,
        opt.zero_grad(set_to_none=True)  # checkpoints and the trained model never hold them
    for sched in ctx.schedulers:
        sched.step()
    return float(loss.detach())


def _train_epoch(
    model: nn.Module, data: TrainData, batches: list[list[int]], ctx: _Context, state: LoopState
) -> float:
    model.train()
    total = 0.0
    for index in batches:
        ids, mask, target = data.batch(index, seed=(ctx.cfg.seed, state.step))
        value = _step(model, ids, mask, target, ctx)
        state.step += 1
        total += value
        if ctx.progress is not None:
            ctx.progress.step(value)
    return total / max(1, len(batches))


def _run_epoch(
    model: nn.Module,
    data: TrainData,
    dev: TrainData,
    rule: DecisionRule,
    ctx: _Context,
    state: LoopState,
    stepped: nn.Module | None = None,
) -> EpochRecord:
    """Train one epoch, score dev, update the early-stopping state; return the epoch record.

    ``stepped`` is the module the steps call (a DistributedDataParallel wrapper of ``model``
    in a data-parallel job); dev scoring always uses ``model`` itself.
    """
    cfg = ctx.cfg
    epoch = state.epoch + 1
    batches = data.batches(
        cfg.batch_size, epoch_seed=cfg.seed + epoch, bucket=cfg.bucket_by_length, dist=ctx.dist
    )
    if ctx.progress is not None:
        ctx.progress.epoch_start(epoch, cfg.epochs, len(batches))
    started = time.perf_counter()
    train_loss = ctx.dist.mean(_train_epoch(stepped or model, data, batches, ctx, state))
    with ctx.autocast():
        scores = dev_metrics(model, dev, ctx.loss, rule, ctx.device, max_tokens=ctx.batch_tokens)
    value = ctx.dist.mean(scores[cfg.monitor])  # every rank takes the same decision
    is_best = improved(cfg.monitor, value, state.best)
    if is_best:
        state.best, state.best_epoch, state.bad_epochs = value, epoch, 0
    else:
        state.bad_epochs += 1
    record = EpochRecord(
        epoch=epoch,
        train_loss=train_loss,
        dev=scores,
        seconds=time.perf_counter() - started,
        precision="bf16-mixed" if ctx.use_amp else "fp32",
        is_best=is_best,
        lr=ctx.optimizers[0].param_groups[0]["lr"],
    )
    state.history.append(record)
    state.epoch = epoch
    return record


@dataclass
class _Epochs:
    """The epoch loop of one run, with what it writes and keeps between epochs."""

    model: nn.Module
    data: TrainData
    dev: TrainData
    rule: DecisionRule
    ctx: _Context
    state: LoopState
    run_dir: Path | None
    writer: CheckpointWriter | None
    on_epoch: EpochHook | None
    stepped: nn.Module | None = None

    def run(self) -> tuple[str | None, dict[str, torch.Tensor]]:
        """Train until the last epoch, patience or a hook; why it stopped, and the best
        weights seen (empty when no epoch improved in this process)."""
        cfg, state = self.ctx.cfg, self.state
        best: dict[str, torch.Tensor] = {}
        while state.epoch < cfg.epochs:
            if cfg.patience is not None and state.bad_epochs >= cfg.patience:
                return "patience", best
            record = _run_epoch(
                self.model, self.data, self.dev, self.rule, self.ctx, state, self.stepped
            )
            if self.run_dir is not None and self.ctx.dist.is_main:
                write_history(self.run_dir, state.history)
            stop = call_epoch_hook(self.on_epoch, record, self.ctx.dist)
            snap = self._checkpoint(record, stop)
            if record.is_best:
                ending = stop or state.finished(cfg.epochs, cfg.patience)
                # the last epoch's weights are the model's own: no copy to hold beside them
                best = dict(self.model.state_dict()) if ending else copy_weights(self.model, snap)
            if self.ctx.progress is not None:
                self.ctx.progress.epoch_end(record)
            if stop:
                return "hook", best
        return None, best

    def _checkpoint(self, record: EpochRecord, stopping: bool) -> CheckpointSnapshot | None:
        if self.writer is None or self.run_dir is None:
            return None
        cfg, best = self.ctx.cfg, record.is_best
        if not should_checkpoint(cfg, self.state, self.writer, best=best, stopping=stopping):
            return None
        ctx = self.ctx
        return checkpoint(
            self.run_dir,
            self.model,
            ctx.optimizers,
            ctx.schedulers,
            self.state,
            self.writer,
            best=best,
        )


def _data_parallel(model: nn.Module, device: torch.device, dist: Dist) -> nn.Module | None:
    """A DistributedDataParallel wrapper whose backward averages gradients over the ranks
    (and whose construction copies rank 0's weights to all), or None in a single process.

    Only the steps go through it: checkpoints, dev scoring and the returned model use the
    plain module, so state-dict keys and the run folder are those of a local run.
    """
    if not dist.active:
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def fit_by_gradient(
    model: nn.Module,
    family: Family,
    data: TrainData,
    dev: TrainData,
    cfg: TrainConfig,
    *,
    loss: Loss,
    rule: DecisionRule,
    device: torch.device,
    run_dir: Path | None = None,
    resume: bool = False,
    progress: ProgressReporter | None = None,
    on_epoch: EpochHook | None = None,
    dist: Dist | None = None,
) -> Run:
    """Train ``model`` by gradient steps; see :func:`fenlei.train.fit` for the arguments."""
    dist = dist or Dist()
    cfg = cfg.model_copy(update={"batch_size": batch_for_data(cfg, len(data))})
    model.to(device)
    ctx = _context(model, family, data, cfg, loss, device, progress, dist)
    state = LoopState()
    if resume and run_dir is not None:
        restore(run_dir, model, ctx.optimizers, ctx.schedulers, state)
    writer = CheckpointWriter() if run_dir is not None and dist.is_main else None
    stepped = _data_parallel(model, device, dist)  # after restore: rank 0's state wins
    epochs = _Epochs(model, data, dev, rule, ctx, state, run_dir, writer, on_epoch, stepped)
    try:
        rounding = ctx.use_amp and device.type == "cpu" and cfg.round_lengths  # oneDNN's shapes
        limit = max([*data.lengths, *dev.lengths], default=1)
        with (
            _precision_setup(model, family, ctx),
            few_shapes(model, pad_id=data.pad_id, limit=limit, active=rounding),
        ):
            stopped_by, memory = epochs.run()
    except BaseException:
        if writer is not None:
            with suppress(Exception):  # the training error matters more than a checkpoint's
                writer.close(flush=True)  # an interrupted run keeps its newest state for --resume
        raise
    if writer is not None:
        writer.close(flush=False)
    for opt in ctx.optimizers:  # freed now, not when the garbage collector finds the
        opt.state.clear()  # scheduler-optimizer cycle: scoring and the report reuse it
    weights = best_weights(run_dir, memory) if cfg.restore_best else None
    if weights:
        model.load_state_dict(weights)
    model.to("cpu").eval()
    return Run(model, state.history, state.best_epoch or state.epoch, stopped_by)
