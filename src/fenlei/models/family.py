"""The :class:`Family` record: what a model family is and what it can do.

The registry (:data:`fenlei.models.REGISTRY`) maps a versioned name (``"lstm.v1"``) to a
``Family``. Code outside ``models/`` asks the family (``family_of(cfg.model.architecture)``)
instead of testing names, ``isinstance`` or ``getattr`` on the module: whether it is trained
by the gradient loop or by a solver, which ``model.*`` settings it reads, and hooks that take
the plain module (so they work under a DDP wrapper too). The ``nn.Module`` classes stay plain.

Example:
    >>> family_of("lstm.v1").trains_by
    'loop'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from fenlei.config import ModelConfig, RunConfig
    from fenlei.models import ModelSpec

__all__ = ["Attribution", "BagTable", "Builder", "Family", "TrainIds"]

TrainIds = Sequence[Sequence[int]] | None
Builder = Callable[["ModelConfig", "ModelSpec", dict[str, int] | None, TrainIds], nn.Module]
# (module, one text's ids (T,)) -> (per-token logit contributions (T, n_outputs), bias (n_outputs,))
Attribution = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BagTable:
    """A bag model's table as the fused training step sees it (``fenlei.train.table_step``):
    the logits are ``head(mean of weight[f] over the text's features f other than pad)``.

    Attributes:
        features: (B, T) ids and mask -> (B, T') int64 feature ids (padding = ``pad``).
        weight: the table, (rows, D) float32 on the CPU.
        pad: the padding row (left out of the means, never updated).
        head: (B, D) mean vectors -> (B, n_outputs) logits (dropout and the head).
    """

    features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weight: torch.Tensor
    pad: int
    head: Callable[[torch.Tensor], torch.Tensor]


def _no_extras(model: nn.Module) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Family:
    """One model family: how it is built and what it can do.

    Attributes:
        name: the registered, versioned name (``"transformer.v1"``).
        build: ``(model config, spec, vocab, training ids) -> nn.Module``.
        reads: the ``model.*`` settings it uses (presets and ``--set`` are checked against
            them: a setting the family ignores is an error, not a silent no-op).
        trains_by: ``"loop"`` (the gradient loop) or ``"solver"`` (solved in one go, e.g. by
            scikit-learn; see ``fenlei.train.solve``).
        soft_targets: can learn from soft probabilities (distillation).
        sparse_table: has a sparse embedding table (sparse optimizer; DDP needs gloo).
        pretrained: wraps a pretrained encoder (needs ``model.pretrained`` and the encoder's
            own tokenizer, ``encoder.kind=pretrained``).
        serve_chunk: texts per model call when served on a CPU (None: the eval batch size).
        batch_tokens: at most this many padded tokens per inference batch (dev scoring,
            prediction, explanation); inference activations grow with batch × length (and
            attention with length²), so a cap keeps scoring's peak memory below training's.
            None: batches of ``batch_size`` texts whatever their length.
        windows: reads a long text as pooled windows (``encoder.long_text=chunks``); False
            for bag models, whose logits average over the tokens anyway: a longer
            ``encoder.max_length`` reads the whole text at less cost.
        calibrate: temperature scaling on dev is on by default (``eval.calibrate`` unset);
            off for a family whose probabilities it measurably does not improve.
        bf16_cpu: context manager to train under bf16 autocast on CPUs with bf16 hardware (a
            measured gain); None: fp32 on CPU.
        gradient_checkpointing: switches gradient checkpointing on; None: not supported.
        token_embedding: the token embedding table (freezing, attributions); None: none.
        attribution: exact per-token contributions to the logits of one text, which with the
            bias sum to them (a bag model's logit is a sum over its features); None:
            explanations use integrated gradients on ``token_embedding``.
        spec_extras: fields of :class:`~fenlei.models.ModelSpec` the built model learned
            (saved in ``model_config.json`` so the run folder rebuilds it).
        plain_bag: the model's table as a plain bag of features (:class:`BagTable`), which
            the loop then trains with its fused step; None (or a None result: a model the
            step does not cover) trains it with autograd.
        search_space: hyperparameters a tuner may vary, ``"section.key" -> choices``.
        validate: the family's own rules on a whole run config (raises ``ConfigError``),
            run by :func:`fenlei.models.check` after the rules every family shares.
    """

    name: str
    build: Builder
    reads: frozenset[str]
    trains_by: Literal["loop", "solver"] = "loop"
    soft_targets: bool = True
    sparse_table: bool = False
    pretrained: bool = False
    serve_chunk: int | None = None
    batch_tokens: int | None = None
    windows: bool = True
    calibrate: bool = True
    bf16_cpu: Callable[[nn.Module], AbstractContextManager[Any]] | None = None
    gradient_checkpointing: Callable[[nn.Module], None] | None = None
    token_embedding: Callable[[nn.Module], nn.Module | None] | None = None
    attribution: Attribution | None = None
    spec_extras: Callable[[nn.Module], dict[str, Any]] = _no_extras
    plain_bag: Callable[[nn.Module], BagTable | None] | None = None
    search_space: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    validate: Callable[[RunConfig], None] | None = None
