"""Training data as the loop sees it: token ids, targets, and the batches of each epoch.

:class:`TrainData` pairs the ids of each text with its :class:`~fenlei.train.objective.Targets`.
:meth:`TrainData.batches` draws an epoch's batches (length-bucketed, seeded per epoch) and
gives each rank of a data-parallel job its share, the same number of batches on every rank;
:meth:`TrainData.batch` pads one batch and applies token augmentation, seeded by the step so
a resumed run replays it. Enter through :meth:`TrainData.from_dataset` when you hold a
labelled :class:`~fenlei.data.Dataset`, or the constructor with your own targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from fenlei.augment import augment_batch
from fenlei.config import AugmentConfig
from fenlei.data import Dataset, LabelSet
from fenlei.runtime import Dist
from fenlei.tokenize import Encoder, Windows, pad_ids
from fenlei.train.objective import Targets, targets_from_labels

__all__ = ["TrainData", "shard", "training_batches"]


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


def shard(batches: list[list[int]], dist: Dist) -> list[list[int]]:
    """This rank's batches: every ``world``-th one, the list wrapped around so that every
    rank gets the same count (a data-parallel step needs every rank)."""
    if dist.world == 1 or not batches:
        return batches
    per_rank = math.ceil(len(batches) / dist.world)
    wrapped = [batches[i % len(batches)] for i in range(per_rank * dist.world)]
    return wrapped[dist.rank :: dist.world]


@dataclass(frozen=True)
class TrainData:
    """Token ids and targets, one row per text (or per window of a long text), and how the
    loop draws batches from them.

    Attributes:
        ids: token ids of each text (unpadded).
        targets: what each text should produce (hard labels, soft probabilities or both).
        pad_id: the padding id of the encoder that made ``ids``.
        augment: token deletion/swap applied to each training batch (None: none).
        protect: tokens kept in place at each end by augmentation ([CLS] ... [SEP]).
        windows: how the rows group into texts when long texts are read as several windows
            (``encoder.long_text=chunks``; its ``ids`` are :attr:`ids`): each window is a
            row, a training example with its text's targets, and ``targets`` has one row
            per text; scoring pools the windows' logits per text. None: a row per text.
    """

    ids: Sequence[Sequence[int]]
    targets: Targets
    pad_id: int
    augment: AugmentConfig | None = None
    protect: int = 0
    windows: Windows | None = None

    def __post_init__(self) -> None:
        texts = len(self.ids) if self.windows is None else len(self.windows.counts)
        assert len(self.targets) == texts, "one target row per text"
        assert self.windows is None or len(self.windows.ids) == len(self.ids), "windows are rows"

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        labels: LabelSet,
        encoder: Encoder,
        *,
        n_out: int,
        ids: Sequence[Sequence[int]] | None = None,
        augment: AugmentConfig | None = None,
        windows: Windows | None = None,
    ) -> TrainData:
        """Ids and hard targets of a labelled dataset.

        Args:
            dataset: labelled texts whose labels are all in ``labels``.
            labels: the label set fitted on the training data.
            encoder: the fitted encoder.
            n_out: the model's output width (``ModelSpec.n_outputs``).
            ids: ``encoder.encode_ids(dataset.texts)`` when the caller has it already
                (one row per text); None: the encoder's windows of each text
                (:meth:`~fenlei.tokenize.Encoder.encode_windows`).
            augment: token augmentation for training data (leave None for dev).
            windows: ``encoder.encode_windows(dataset.texts)`` when the caller has it
                already (a tuner reusing one encoding across trials).

        Example:
            >>> data = TrainData.from_dataset(train, labels, encoder, n_out=3)  # doctest: +SKIP
        """
        if ids is not None:
            windows = None
        else:
            windows = encoder.encode_windows(dataset.texts) if windows is None else windows
            ids = windows.ids
        return cls(
            ids=ids,
            targets=targets_from_labels(dataset, labels, n_out),
            pad_id=encoder.pad_id,
            augment=augment,
            protect=encoder.special_ends,
            windows=None if windows is None or windows.single else windows,
        )

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def lengths(self) -> list[int]:
        """Token count of each text."""
        return [len(ids) for ids in self.ids]

    @property
    def augmenting(self) -> bool:
        """Whether batches are augmented."""
        return self.augment is not None and self.augment.active

    def steps_per_epoch(self, batch_size: int, dist: Dist | None = None) -> int:
        """Batches each rank takes per epoch."""
        world = 1 if dist is None else dist.world
        return math.ceil(math.ceil(len(self) / batch_size) / world)

    def batches(
        self, batch_size: int, *, epoch_seed: int, bucket: bool, dist: Dist | None = None
    ) -> list[list[int]]:
        """This rank's batches of one epoch (indices into the rows)."""
        every = training_batches(self.lengths, batch_size, epoch_seed=epoch_seed, bucket=bucket)
        return every if dist is None else shard(every, dist)

    def batch(
        self, index: Sequence[int], *, seed: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, Targets]:
        """One padded batch: ``(ids, mask, targets)``, ids and mask (B, T), augmented with
        ``seed`` when augmentation is on."""
        seqs: Sequence[Sequence[int]] = [self.ids[i] for i in index]
        if self.augment is not None and self.augment.active:
            seqs = augment_batch(seqs, self.augment, seed, protect=self.protect)
        ids, mask = pad_ids(seqs, self.pad_id)
        if self.windows is not None:  # a window learns its text's targets
            index = self.windows.owners[list(index)].tolist()
        return ids, mask, self.targets.rows(index)
