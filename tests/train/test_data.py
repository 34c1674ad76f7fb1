"""TrainData: batches per epoch and each rank's share of them."""

from __future__ import annotations

import torch

from fenlei.runtime import Dist
from fenlei.train import Targets, TrainData


def _data(n: int) -> TrainData:
    ids = [[5] * (1 + i % 7) for i in range(n)]
    return TrainData(ids, Targets(width=2, hard=torch.zeros(n, dtype=torch.long)), pad_id=0)


def test_one_process_takes_every_batch() -> None:
    data = _data(100)
    batches = data.batches(8, epoch_seed=3, bucket=True)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert data.batches(8, epoch_seed=3, bucket=True, dist=Dist()) == batches
    assert data.steps_per_epoch(8) == len(batches) == 13


def test_ranks_share_an_epoch_with_equal_batch_counts() -> None:
    data = _data(100)  # 13 batches over 3 ranks: 5 each, two batches taken twice
    every = data.batches(8, epoch_seed=3, bucket=True)
    shares = [data.batches(8, epoch_seed=3, bucket=True, dist=Dist(r, 3)) for r in range(3)]
    assert (
        [len(s) for s in shares]
        == [5, 5, 5]
        == [data.steps_per_epoch(8, Dist(r, 3)) for r in range(3)]
    )
    taken = [tuple(b) for s in shares for b in s]
    assert set(taken) == {tuple(b) for b in every}  # every batch is trained on


def test_a_batch_is_padded_with_its_targets() -> None:
    data = _data(10)
    ids, mask, targets = data.batch([6, 0], seed=(1, 2))
    assert ids.shape == mask.shape == (2, 7)
    assert mask.sum(dim=1).tolist() == [7, 1]
    assert len(targets) == 2
