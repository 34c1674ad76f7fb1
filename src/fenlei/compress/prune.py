"""Pruning: what ``--prune`` may ask of each model family, and pruning the bag models.

A bag model (``linear``, ``nbsvm``) keeps only the table rows that move its logits most and
drops the rest (fastText.zip's idea): a row's importance is the norm of what it adds to the
logits (``head @ row`` for ``linear``, the row itself for ``nbsvm``, whose rows are logits).
The kept rows are renumbered and found through a :class:`~fenlei.models.compact.FeatureMap`
(a token id, or ``vocab_size + bucket`` of an n-gram -> row); a dropped token or n-gram maps
to nothing and leaves the bag, as an n-gram never seen in training does.

Transformers drop encoder layers instead (:mod:`~fenlei.compress.layers`); LSTMs are not
pruned (docs/compression.md says why).

Example:
    >>> parse_prune("rows=50000")
    PruneSpec(rows=50000, fraction=None, layers=None)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from fenlei.config import ModelConfig
from fenlei.errors import ConfigError
from fenlei.models import ModelSpec, build_model
from fenlei.models.compact import CompactBag, FeatureMap, Int8EmbeddingBag

__all__ = [
    "BAG_FAMILIES",
    "Bag",
    "PruneSpec",
    "bag_table",
    "parse_prune",
    "prune_bag",
    "row_keys",
    "table_weight",
]

logger = logging.getLogger(__name__)

BAG_FAMILIES = ("linear.v1", "linear.v2", "nbsvm.v1")
Bag = CompactBag


@dataclass(frozen=True)
class PruneSpec:
    """What pruning keeps: table rows of a bag model (a count, or a fraction of its rows),
    or encoder layers of a transformer."""

    rows: int | None = None
    fraction: float | None = None
    layers: int | None = None

    @property
    def kind(self) -> str:
        """``layers`` (a transformer's encoder) or ``rows`` (a bag model's table)."""
        return "layers" if self.layers is not None else "rows"

    def count(self, available: int) -> int:
        """Rows to keep out of ``available``."""
        if self.rows is not None:
            return min(self.rows, available)
        assert self.fraction is not None
        return max(1, round(self.fraction * available))


_USAGE = (
    "--prune takes rows=N (table rows to keep, e.g. rows=50000), rows=F (a fraction, 0.05) "
    "or layers=K (encoder layers a transformer keeps, e.g. layers=3)"
)


def parse_prune(text: str) -> PruneSpec:
    """``rows=N`` (keep N table rows), ``rows=F`` with 0 < F < 1 (keep that fraction) or
    ``layers=K`` (keep K encoder layers).

    Raises:
        ConfigError: any other form (the message shows the accepted ones).
    """
    key, _, value = (part.strip() for part in text.partition("="))
    if key not in ("rows", "layers") or not value:
        raise ConfigError(f"{_USAGE}, not {text!r}")
    try:
        number = float(value)
    except ValueError as exc:
        raise ConfigError(f"{_USAGE}, not {text!r}") from exc
    whole = number >= 1 and number == int(number)
    if key == "layers" and whole:
        return PruneSpec(layers=int(number))
    if key == "rows" and 0 < number < 1:
        return PruneSpec(fraction=number)
    if key == "rows" and whole:
        return PruneSpec(rows=int(number))
    raise ConfigError(f"{_USAGE}, not {text!r}")


def bag_table(model: Bag) -> nn.EmbeddingBag | Int8EmbeddingBag:
    """The model's table: ``embed`` of ``linear``, ``table`` of ``nbsvm``."""
    return model.bag_table


def table_weight(model: Bag) -> torch.Tensor:
    """The model's table as float32 (rows, width), padding row last."""
    weight: torch.Tensor = bag_table(model).weight
    return weight.detach().float()


def _feature_map(model: Bag) -> FeatureMap:
    """A pruned model's map from feature keys to its table's rows."""
    fmap = getattr(model, "feature_map", None)
    assert isinstance(fmap, FeatureMap), "only a pruned table (kept rows) has a feature map"
    return fmap


@torch.no_grad()
def row_keys(model: Bag) -> np.ndarray:
    """The feature key of every table row (pad row excluded); -1 for a row no feature uses.

    A key is a token id, or ``vocab_size + bucket`` for a hashed n-gram.
    """
    keys = np.full(model.pad_index, -1, dtype=np.int64)
    if model.kept is not None:
        fmap = _feature_map(model)
        slot_keys = fmap.slot_keys.numpy().astype(np.int64)  # type: ignore[operator]
        slot_rows = fmap.slot_rows.numpy().astype(np.int64)  # type: ignore[operator]
        used = slot_keys >= 0
        keys[slot_rows[used]] = slot_keys[used]
        return keys
    keys[: model.vocab_size] = np.arange(model.vocab_size)
    bucket_rows = getattr(model, "bucket_rows", None)
    if bucket_rows is None:  # one row per bucket: the row is the key
        keys[model.vocab_size :] = np.arange(model.vocab_size, model.pad_index)
    else:
        rows = bucket_rows.numpy()
        held = np.flatnonzero(rows != model.pad_index)
        keys[rows[held]] = model.vocab_size + held
    return keys


@torch.no_grad()
def _importance(model: Bag) -> np.ndarray:
    """How much each row (pad excluded) can move the logits: ``|head @ row|`` or ``|row|``."""
    weight = model.row_logits(table_weight(model)[: model.pad_index])  # (rows, C)
    return weight.norm(dim=1).numpy()  # type: ignore[no-any-return]


def _choose(model: Bag, prune: PruneSpec | None) -> np.ndarray:
    """Old rows to keep, the most important first (the feature map places them first)."""
    candidates = np.flatnonzero(row_keys(model) >= 0)
    best = np.argsort(-_importance(model)[candidates], kind="stable")
    if prune is not None:
        best = best[: prune.count(len(candidates))]
    return candidates[best]


def _placed_model(
    cfg: ModelConfig, spec: ModelSpec, keys: np.ndarray, int8: bool
) -> tuple[Bag, np.ndarray]:
    """A compact model whose feature map holds ``keys``; the indices of the keys it placed.

    The table keeps ``len(keys)`` rows: the few keys that find no slot (about 0.1 %) leave
    their rows at the end unused, rather than a smaller map dropping more keys again.
    """
    new_spec = replace(spec, ngram_rows=None, kept_rows=len(keys), int8_table=int8)
    model = build_model(cfg, new_spec)
    assert isinstance(model, CompactBag)
    placed = _feature_map(model).fill(keys)
    if len(placed) < len(keys):
        dropped = len(keys) - len(placed)
        logger.info("%d of %d keys found no slot and are dropped", dropped, len(keys))
    return model, placed


@torch.no_grad()
def prune_bag(
    model: Bag, cfg: ModelConfig, spec: ModelSpec, *, prune: PruneSpec | None, int8: bool
) -> tuple[Bag, ModelSpec]:
    """A compact copy of a bag model: the rows ``prune`` keeps (all used rows when None),
    renumbered behind a feature map, as float32 or int8 rows.

    Returns:
        The new model (eval mode) and the spec that rebuilds it.

    Example:
        >>> small, spec = prune_bag(model, cfg.model, spec, prune=PruneSpec(rows=5000),
        ...                         int8=True)  # doctest: +SKIP
    """
    old_rows = _choose(model, prune)
    keys = row_keys(model)[old_rows]
    new, placed = _placed_model(cfg, spec, keys, int8)
    old_rows = old_rows[placed]  # row i of the new table is the i-th placed key's
    weight = table_weight(model)
    table = torch.zeros(len(keys) + 1, weight.shape[1])
    table[: len(old_rows)] = weight[torch.from_numpy(old_rows)]
    _load_table(bag_table(new), table)
    new.copy_outputs(model, old_rows)  # type: ignore[arg-type]
    assert new.kept is not None
    return new.eval(), replace(spec, ngram_rows=None, kept_rows=new.kept, int8_table=int8)


def _load_table(table: nn.Module, weight: torch.Tensor) -> None:
    if isinstance(table, Int8EmbeddingBag):
        table.load_float(weight)
    else:
        assert isinstance(table, nn.EmbeddingBag)
        table.weight.copy_(weight)
