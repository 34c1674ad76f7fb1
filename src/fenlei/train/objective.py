"""What the model learns from: targets, class weights and the loss chosen from them.

:class:`Targets` holds one row per training text, hard labels, soft probabilities (a
teacher's, for distillation) or both. :class:`Loss` follows what the targets carry:
softmax cross-entropy, one sigmoid logit or one per label (binary cross-entropy) for hard
labels; a temperature-scaled KL divergence (or cross-entropy) against soft probabilities,
mixed with the hard-label loss by ``alpha`` when both are given. Enter through
:func:`targets_from_labels`, :func:`soft_targets`, :func:`teacher_targets` (a teacher's
:class:`SoftLabels` of labelled and extra texts) and :func:`loss_for`.

Example:
    >>> t = soft_targets(torch.tensor([[0.9, 0.1]]), width=2)
    >>> float(Loss()(torch.tensor([[2.0, 0.0]]), t)) >= 0
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from fenlei.data import Dataset, LabelSet
from fenlei.errors import ConfigError, DataError

__all__ = [
    "Loss",
    "SoftLabels",
    "Targets",
    "class_weights",
    "loss_for",
    "soft_targets",
    "targets_from_labels",
    "teacher_targets",
]

Divergence = Literal["kl", "ce"]


@dataclass(frozen=True)
class Targets:
    """What each training text should produce, shaped for a head of ``width`` outputs.

    Attributes:
        width: the head's outputs: classes (softmax), 1 (one sigmoid logit, two classes) or
            labels (multi-label).
        multi_label: each label is its own yes/no decision.
        hard: (N,) int64 class indices, or (N, C) float 0/1 for multi-label; None when only
            soft targets are known.
        soft: (N, C) float probabilities to match (C = classes, 2 for a single logit; rows
            sum to 1 unless multi-label); None for plain labelled training.
        known: (N,) bool, the rows whose hard label is known (a distillation transfer set
            mixes labelled texts with unlabelled ones and augmented copies, which learn from
            ``soft`` only); None: every row's.
    """

    width: int
    multi_label: bool = False
    hard: torch.Tensor | None = None
    soft: torch.Tensor | None = None
    known: torch.Tensor | None = None

    def __post_init__(self) -> None:
        assert self.hard is not None or self.soft is not None, "targets need hard or soft rows"
        assert self.known is None or (self.hard is not None and self.soft is not None), (
            "rows without a hard label need soft targets"
        )

    def __len__(self) -> int:
        rows = self.hard if self.hard is not None else self.soft
        assert rows is not None
        return int(rows.shape[0])

    @property
    def n_classes(self) -> int:
        """Columns of the probabilities: classes or labels (2 for a single-logit head)."""
        return 2 if self.width == 1 and not self.multi_label else self.width

    def rows(self, index: Sequence[int]) -> Targets:
        """The targets of these rows, in this order."""
        pick = torch.as_tensor(list(index), dtype=torch.long)
        return replace(
            self,
            hard=None if self.hard is None else self.hard[pick],
            soft=None if self.soft is None else self.soft[pick],
            known=None if self.known is None else self.known[pick],
        )

    def labelled(self) -> Targets | None:
        """The rows whose hard label is known (all of them when ``known`` is None); None
        when there are none or no hard labels at all."""
        if self.hard is None:
            return None
        if self.known is None:
            return self
        if not bool(self.known.any()):
            return None
        keep = self.known
        return replace(
            self,
            hard=self.hard[keep],
            soft=None if self.soft is None else self.soft[keep],
            known=None,
        )

    def to(self, device: torch.device) -> Targets:
        """The same targets on ``device``."""
        return replace(
            self,
            hard=None if self.hard is None else self.hard.to(device),
            soft=None if self.soft is None else self.soft.to(device),
            known=None if self.known is None else self.known.to(device),
        )

    def with_soft(
        self, probs: torch.Tensor | np.ndarray, *, known: Sequence[bool] | None = None
    ) -> Targets:
        """These hard labels plus soft probabilities (N, C) to match (distillation).

        Args:
            probs: the probabilities, one row per text.
            known: which rows' hard labels are real (None: all); the others learn from
                ``probs`` only.

        Raises:
            DataError: ``probs`` has the wrong shape or is not a probability table.
        """
        soft = _checked_probs(probs, len(self), self.n_classes, multi_label=self.multi_label)
        mask = None if known is None else torch.as_tensor(list(known), dtype=torch.bool)
        if mask is not None and len(mask) != len(self):
            raise DataError(f"known must have {len(self)} rows, not {len(mask)}")
        return replace(self, soft=soft, known=mask)

    def label_indices(self) -> np.ndarray:
        """Hard labels in scikit-learn's shape: (N,) class indices, or (N, C) 0/1."""
        assert self.hard is not None, "scoring needs hard labels"
        values = self.hard.detach().cpu()
        return values.long().numpy() if self.multi_label else values.view(-1).long().numpy()


@dataclass(frozen=True)
class SoftLabels:
    """A teacher's probabilities to distil: of the training texts, then of ``extra`` texts.

    Attributes:
        probs: (N_train + len(extra), C) probabilities, already at the distillation
            temperature; columns in the training label set's order.
        extra: texts beyond the training split (augmented copies, unlabelled texts); they
            have no hard label and learn from ``probs`` only.
        temperature: the student's logits are divided by it in the soft loss (Hinton et al.).
        alpha: weight of the soft loss; ``1 - alpha`` goes to the true labels of the
            training texts.
        divergence: ``"kl"`` or ``"ce"`` (see :class:`Loss`).
    """

    probs: np.ndarray
    extra: Sequence[str] = ()
    temperature: float = 1.0
    alpha: float = 0.5
    divergence: Divergence = "kl"

    def loss(self, targets: Targets, *, class_weight: Literal["none", "balanced"]) -> Loss:
        """The loss these soft labels are learnt with (:func:`loss_for`)."""
        return loss_for(
            targets,
            class_weight=class_weight,
            temperature=self.temperature,
            alpha=self.alpha,
            divergence=self.divergence,
        )


def teacher_targets(dataset: Dataset, labels: LabelSet, n_out: int, soft: SoftLabels) -> Targets:
    """Targets of ``dataset``'s texts (hard and soft) followed by ``soft.extra`` (soft only),
    in the order of ``[*dataset.texts, *soft.extra]``.

    Raises:
        DataError: ``soft.probs`` is not one probability row per text.
    """
    hard = targets_from_labels(dataset, labels, n_out)
    assert hard.hard is not None
    filler = torch.zeros((len(soft.extra), *hard.hard.shape[1:]), dtype=hard.hard.dtype)
    every = replace(hard, hard=torch.cat([hard.hard, filler]))
    return every.with_soft(soft.probs, known=[True] * len(dataset) + [False] * len(soft.extra))


def targets_from_labels(dataset: Dataset, labels: LabelSet, n_out: int) -> Targets:
    """Hard targets of a labelled dataset for a head of ``n_out`` outputs.

    Example:
        >>> targets_from_labels(ds, LabelSet.fit(ds), 2).hard  # doctest: +SKIP
        tensor([0, 1, 1])
    """
    if labels.multi_label:
        y = torch.zeros((len(dataset), len(labels)))
        for row, ex in enumerate(dataset.examples):
            y[row, labels.encode(ex.labels)] = 1.0
        return Targets(width=n_out, multi_label=True, hard=y)
    idx = torch.tensor([labels.index(ex.labels[0]) for ex in dataset.examples], dtype=torch.long)
    return Targets(width=n_out, hard=idx)


def soft_targets(
    probs: torch.Tensor | np.ndarray, *, width: int, multi_label: bool = False
) -> Targets:
    """Soft targets only: probabilities (N, C) a model should reproduce (a teacher's).

    Args:
        probs: one row per text; columns are the labels in the label set's order (two
            columns for a single-logit head).
        width: the student's head width.
        multi_label: the columns are independent label probabilities.

    Raises:
        DataError: not a 2-D table of probabilities of the right width.
    """
    columns = 2 if width == 1 and not multi_label else width
    soft = _checked_probs(probs, None, columns, multi_label=multi_label)
    return Targets(width=width, multi_label=multi_label, soft=soft)


def _checked_probs(
    probs: torch.Tensor | np.ndarray, rows: int | None, columns: int, *, multi_label: bool
) -> torch.Tensor:
    soft = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    if soft.ndim != 2 or soft.shape[1] != columns or (rows is not None and len(soft) != rows):
        want = f"({rows if rows is not None else 'N'}, {columns})"
        raise DataError(f"soft targets must have shape {want}, not {tuple(soft.shape)}")
    if not bool(torch.isfinite(soft).all()) or bool((soft < 0).any()) or bool((soft > 1).any()):
        raise DataError("soft targets must be probabilities in [0, 1]")
    if not multi_label and len(soft) and float((soft.sum(dim=1) - 1).abs().max()) > 1e-3:
        raise DataError("soft targets of a single-label task must sum to 1 in every row")
    return soft


def class_weights(targets: Targets) -> torch.Tensor:
    """scikit-learn's "balanced" weights from the hard labels.

    Per class ``n_samples / (n_classes * count)``; multi-label: negatives / positives per
    label (BCE's ``pos_weight``).
    """
    labelled = targets.labelled()
    assert labelled is not None and labelled.hard is not None, "class weights need hard labels"
    y = labelled.hard
    if targets.multi_label:
        pos = y.sum(dim=0).clamp(min=1)
        return (len(y) - pos).clamp(min=1) / pos
    n = targets.n_classes
    counts = torch.bincount(y.view(-1), minlength=n).float().clamp(min=1)
    return len(y) / (n * counts)


@dataclass(frozen=True)
class Loss:
    """The training loss, chosen by what the targets carry.

    Hard labels: softmax cross-entropy; binary cross-entropy for one logit or per label
    (``weights``: class weights, or multi-label ``pos_weight``). Soft probabilities:
    ``divergence`` ``"kl"`` (KL divergence, zero when the model matches) or ``"ce"``
    (cross-entropy), both on logits divided by ``temperature`` and scaled by its square so
    gradients keep their size (Hinton et al., 2015). Both given: ``alpha`` of the soft loss
    plus ``1 - alpha`` of the hard one, the hard part over the rows whose label is known
    (``Targets.known``). Class weights apply to the hard part only.
    """

    weights: torch.Tensor | None = None
    temperature: float = 1.0
    alpha: float = 1.0
    divergence: Divergence = "kl"

    def __call__(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Mean loss of a batch: logits (B, width) against the batch's targets."""
        logits = logits.float()
        if targets.soft is None:
            return self.hard_loss(logits, targets)
        soft = self.soft_loss(logits, targets)
        labelled = targets.labelled()
        if labelled is None or self.alpha >= 1.0:
            return soft
        if targets.known is not None:
            assert labelled.known is None and targets.known.shape[0] == logits.shape[0]
            logits = logits[targets.known]
        return self.alpha * soft + (1.0 - self.alpha) * self.hard_loss(logits, labelled)

    def hard_loss(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        """The loss against hard labels."""
        y = targets.hard
        assert y is not None
        if targets.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(
                logits, y, pos_weight=self.weights
            )
        if targets.width == 1:
            per = nn.functional.binary_cross_entropy_with_logits(
                logits, y.float()[:, None], reduction="none"
            )
            if self.weights is not None:
                per = per * self.weights[y][:, None]
            return per.mean()
        return nn.functional.cross_entropy(logits, y, weight=self.weights)

    def soft_loss(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        """The loss against soft probabilities, at ``temperature``."""
        p = targets.soft
        assert p is not None
        t = self.temperature
        z = logits / t
        if targets.multi_label or targets.width == 1:
            q = p if targets.multi_label else p[:, 1:]
            per = nn.functional.binary_cross_entropy_with_logits(z, q, reduction="none")
            if self.divergence == "kl":  # minus the target's own entropy: 0 at a match
                per = per + torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q)
            return per.mean() * t * t
        log_q = nn.functional.log_softmax(z, dim=-1)
        per_row = -(p * log_q).sum(dim=-1)
        if self.divergence == "kl":
            per_row = per_row + torch.xlogy(p, p).sum(dim=-1)
        return per_row.mean() * t * t

    def to(self, device: torch.device) -> Loss:
        """The same loss with its weights on ``device``."""
        return replace(self, weights=None if self.weights is None else self.weights.to(device))


def loss_for(
    targets: Targets,
    *,
    class_weight: Literal["none", "balanced"] = "none",
    temperature: float = 1.0,
    alpha: float = 1.0,
    divergence: Divergence = "kl",
) -> Loss:
    """The loss for ``targets``, with ``train.class_weight`` applied to hard labels.

    Raises:
        ConfigError: class weights asked for without hard labels, or a bad temperature/alpha.
    """
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"distillation needs temperature > 0 and 0 <= alpha <= 1, not "
            f"temperature={temperature}, alpha={alpha}"
        )
    weights = None
    if class_weight == "balanced":
        if targets.labelled() is None:
            raise ConfigError(
                "train.class_weight=balanced needs hard labels; soft targets alone are not "
                "weighted (set train.class_weight=none)"
            )
        weights = class_weights(targets)
    return Loss(weights=weights, temperature=temperature, alpha=alpha, divergence=divergence)
