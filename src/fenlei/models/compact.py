"""Compressed tables of the bag models (``linear``, ``nbsvm``): int8 rows and pruned features.

:class:`Int8EmbeddingBag` stores a table as int8 rows with one float32 scale per row
(``row ≈ qweight[row] * scale[row]``) and sums the rows of a bag like an
``EmbeddingBag(mode="sum")``, dequantizing only the rows it gathers; the PyTorch model and
its ONNX export (traced from it) read the same int8 tensors.

:class:`FeatureMap` maps the features a pruned table kept to its rows and every other
feature to padding (fastText.zip's pruning): a feature's key is a token id, or
``vocab_size + bucket`` for a hashed n-gram. The keys sit in an open-addressing hash table of
:func:`slots_for` slots probed :data:`PROBES` times (gathers and comparisons, which export to
ONNX), a few bytes per kept row instead of a dense map over millions of buckets.

Both are built from a run folder's ``model_config.json`` (``kept_rows``, ``int8_table``);
:mod:`fenlei.compress` fills them.

Example:
    >>> bag = Int8EmbeddingBag(3, 2, padding_idx=2)
    >>> bag.load_float(torch.tensor([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]]))
    >>> bag(torch.tensor([[0, 1, 2]])).round(decimals=2)
    tensor([[ 1.5000, -1.7500]])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import torch
from torch import nn

__all__ = [
    "PROBES",
    "CompactBag",
    "FeatureMap",
    "Int8EmbeddingBag",
    "quantize_rows",
    "slots_for",
]

PROBES = 16  # slots tried per key (linear probing from a scrambled home slot)
_SCRAMBLE = 2_654_435_761  # Knuth's multiplier: token ids are consecutive, homes must not be


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 rows and their scales: ``weight ≈ q * scale[:, None]``.

    Example:
        >>> q, s = quantize_rows(torch.tensor([[127.0, -63.5]]))
        >>> q.tolist(), s.tolist()
        ([[127, -64]], [1.0])
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8EmbeddingBag(nn.Module):
    """A sum-mode bag over an int8 table with a float32 scale per row (padding row zero)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, padding_idx: int) -> None:
        super().__init__()
        self.padding_idx = padding_idx
        self.register_buffer(
            "qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8)
        )
        self.register_buffer("scale", torch.ones(num_embeddings))

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (num_embeddings, dim), for explanations and inspection."""
        qweight: torch.Tensor = self.qweight  # type: ignore[assignment]
        scale: torch.Tensor = self.scale  # type: ignore[assignment]
        return qweight.float() * scale[:, None]

    @torch.no_grad()
    def load_float(self, weight: torch.Tensor) -> None:
        """Quantize ``weight`` (num_embeddings, dim) into this table."""
        q, scale = quantize_rows(weight)
        q[self.padding_idx] = 0
        self.qweight.copy_(q)  # type: ignore[operator]
        self.scale.copy_(scale)  # type: ignore[operator]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T) row ids -> (B, dim) sums of their dequantized rows."""
        qweight: torch.Tensor = self.qweight  # type: ignore[assignment]
        scale: torch.Tensor = self.scale  # type: ignore[assignment]
        rows = qweight[features].float() * scale[features][..., None]  # (B, T, dim)
        return rows.sum(dim=1)


def slots_for(rows: int) -> int:
    """Hash-table slots for ``rows`` keys: twice as many (at half load, 16 probes place all
    but about 0.1 % of keys)."""
    return 2 * rows + 16


def _home(keys: torch.Tensor | np.ndarray, n: int) -> torch.Tensor | np.ndarray:
    """The first slot a key tries (keys below 2**31: the product stays below 2**63)."""
    return (keys * _SCRAMBLE) % n


class FeatureMap(nn.Module):
    """Feature key -> row of a pruned table (``pad`` for a key it does not hold)."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        n = slots_for(rows)
        # int32: keys are below vocab_size + buckets, far under 2**31
        self.register_buffer("slot_keys", torch.full((n,), -1, dtype=torch.int32))
        self.register_buffer("slot_rows", torch.zeros(n, dtype=torch.int32))

    def forward(self, keys: torch.Tensor, pad: int) -> torch.Tensor:
        """(B, T) int64 keys (negative: none) -> (B, T) int64 rows, ``pad`` where unknown."""
        slot_keys: torch.Tensor = self.slot_keys  # type: ignore[assignment]
        slot_rows: torch.Tensor = self.slot_rows  # type: ignore[assignment]
        n = slot_keys.shape[0]
        found = torch.full_like(keys, pad)
        home = _home(keys.clamp(min=0), n)
        for k in range(PROBES):
            slot = (home + k) % n
            hit = (slot_keys[slot].long() == keys) & (keys >= 0)
            found = torch.where(hit, slot_rows[slot].long(), found)
        return found

    @torch.no_grad()
    def fill(self, keys: np.ndarray) -> np.ndarray:
        """Place distinct ``keys``, earlier ones first; return the indices of those placed.

        Row ``i`` of the table is the ``i``-th placed key. A key that finds no free slot in
        :data:`PROBES` tries is left out (the caller drops its row), so pass the most
        important keys first.
        """
        n = int(self.slot_keys.shape[0])  # type: ignore[index]
        slot_keys = np.full(n, -1, dtype=np.int64)
        owner = np.full(n, -1, dtype=np.int64)  # which key index holds each slot
        waiting = np.arange(len(keys))
        home = _home(keys.astype(np.int64), n)
        for k in range(PROBES):
            if len(waiting) == 0:
                break
            slot = (home[waiting] + k) % n
            free = slot_keys[slot] == -1
            cand, cslot = waiting[free], slot[free]
            _, first = np.unique(cslot, return_index=True)  # one key per free slot
            slot_keys[cslot[first]] = keys[cand[first]]
            owner[cslot[first]] = cand[first]
            waiting = np.setdiff1d(waiting, cand[first], assume_unique=True)
        placed = np.sort(owner[owner >= 0])
        row_of = np.full(len(keys), -1, dtype=np.int64)
        row_of[placed] = np.arange(len(placed))
        taken = owner >= 0
        rows = np.zeros(n, dtype=np.int64)
        rows[taken] = row_of[owner[taken]]
        self.slot_keys.copy_(torch.from_numpy(slot_keys.astype(np.int32)))  # type: ignore[operator]
        self.slot_rows.copy_(torch.from_numpy(rows.astype(np.int32)))  # type: ignore[operator]
        return placed


@runtime_checkable
class CompactBag(Protocol):
    """What :mod:`fenlei.compress` needs of a bag model to prune and quantize its table
    (``linear``'s :class:`~fenlei.models.linear.BagOfNgrams`, ``nbsvm``'s
    :class:`~fenlei.models.nbsvm.NBLogistic`): each model says how its rows reach the logits
    and what besides the table it carries, so the pruner names no model class."""

    vocab_size: int
    pad_index: int
    kept: int | None  # rows of a pruned table, found through its ``feature_map``

    @property
    def bag_table(self) -> nn.EmbeddingBag | Int8EmbeddingBag:
        """The table whose rows are pruned and quantized."""
        ...

    def row_logits(self, weight: torch.Tensor) -> torch.Tensor:
        """(rows, C): what each row of ``weight`` (shaped like the table) adds to the logits."""
        ...

    def copy_outputs(self, source: nn.Module, old_rows: np.ndarray) -> None:
        """Copy what ``source`` (the unpruned model) has besides its table, given that row
        ``i`` of this model's table is row ``old_rows[i]`` of the source's."""
        ...

    # the nn.Module methods the compressor calls
    def eval(self) -> Self: ...

    def state_dict(self) -> dict[str, Any]: ...

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...
