"""Few batch shapes for oneDNN: batch lengths rounded up while training under bf16 on CPU.

On CPUs with AMX or AVX-512 BF16, torch runs bf16 matmuls through oneDNN, which builds a
primitive (JIT kernels and their buffers) for every distinct matrix shape and keeps up to
1,024 of them.
Length-bucketed batches bring a new length nearly every step, so a run keeps adding
primitives, and peak memory grows with the number of lengths seen (docs/architecture.md,
the training loop). :func:`few_shapes` pads every batch the model sees to one of four
lengths per doubling (:func:`rounded_length`): the extra positions are masked, so the
logits stay the same, and on the benchmark sets it costs 0.4-6 % more tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["few_shapes", "rounded_length"]


def rounded_length(length: int) -> int:
    """``length`` rounded up to one of four steps per doubling: 1-8 exactly, then 10, 12,
    14, 16, 20, 24, 28, 32, 40, ... 112, 128, 160, ... (at most 25 % longer)."""
    grain = 1 << max(0, (length - 1).bit_length() - 3)
    return -(-length // grain) * grain


@contextmanager
def few_shapes(model: nn.Module, *, pad_id: int, limit: int, active: bool) -> Iterator[None]:
    """While open (and ``active``), pad each ``model(ids, mask)`` call's (B, T) inputs up to
    ``min(rounded_length(T), limit)`` positions: ids with ``pad_id``, mask with 0.

    ``limit`` is the longest length the caller will pass (never padded beyond, so a model's
    position table is never overrun). Only for models whose padding is masked everywhere
    (attention and pooling): their logits do not change.

    Example:
        >>> with few_shapes(model, pad_id=0, limit=128, active=True):  # doctest: +SKIP
        ...     model(ids, mask)  # a (B, 100) batch runs as (B, 112)
    """
    if not active:
        yield
        return

    def pad(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if len(args) < 2:
            return None
        ids, mask = args[0], args[1]
        extra = min(rounded_length(ids.shape[1]), limit) - ids.shape[1]
        if extra <= 0:
            return None
        ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)  # (B, T) -> (B, T')
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
        return (ids, mask, *args[2:])

    handle = model.register_forward_pre_hook(pad)
    try:
        yield
    finally:
        handle.remove()
