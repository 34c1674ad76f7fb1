"""Training: the gradient loop for most families, a solver sweep for solved ones.

Enter through :func:`fit` with :class:`TrainData` (token ids and targets: hard labels, soft
probabilities or both) for train and dev. The modules, lowest first:

- :mod:`~fenlei.train.objective`: ``Targets``, class weights, the ``Loss`` chosen from them
  (softmax / single logit / multi-label, soft-target distillation).
- :mod:`~fenlei.train.data`: ``TrainData``: batches per epoch, rank sharding, augmentation.
- :mod:`~fenlei.train.state`: ``Run``, the loop state, the hooks, the dev metric.
- :mod:`~fenlei.train.checkpoint`: the checkpoint policy, writer thread and resume.
- :mod:`~fenlei.train.loop` and :mod:`~fenlei.train.solve`: the gradient loop; the sweep of
  solved families. Both write the same :class:`~fenlei.records.EpochRecord`.
- :mod:`~fenlei.train.trainer`: :func:`fit`, which picks one of them from the family.

Example:
    >>> data = TrainData.from_dataset(train, labels, encoder, n_out=len(labels))  # doctest: +SKIP
    >>> run = fit(model, family_of("lstm.v1"), data, dev_data, cfg.train)  # doctest: +SKIP
"""

from __future__ import annotations

from fenlei.records import EpochRecord
from fenlei.train.checkpoint import CheckpointWriter, should_checkpoint
from fenlei.train.data import TrainData, training_batches
from fenlei.train.loop import use_mixed_precision
from fenlei.train.objective import (
    Loss,
    SoftLabels,
    Targets,
    class_weights,
    loss_for,
    soft_targets,
    targets_from_labels,
    teacher_targets,
)
from fenlei.train.state import EpochHook, ErrorHook, LoopState, Run, StopTraining
from fenlei.train.trainer import fit

__all__ = [
    "CheckpointWriter",
    "EpochHook",
    "EpochRecord",
    "ErrorHook",
    "LoopState",
    "Loss",
    "Run",
    "SoftLabels",
    "StopTraining",
    "Targets",
    "TrainData",
    "class_weights",
    "fit",
    "loss_for",
    "should_checkpoint",
    "soft_targets",
    "targets_from_labels",
    "teacher_targets",
    "training_batches",
    "use_mixed_precision",
]
