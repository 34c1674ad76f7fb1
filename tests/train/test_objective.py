"""Targets and the loss chosen from them: hard labels, soft probabilities, both."""

from __future__ import annotations

import pytest
import torch

from fenlei.data import Dataset, LabelSet
from fenlei.errors import ConfigError, DataError
from fenlei.train import Loss, class_weights, loss_for, soft_targets, targets_from_labels


def _hard(n_out: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(8, n_out), torch.tensor([0, 1, 2, 0, 1, 2, 2, 2][:8])


def test_soft_loss_equals_cross_entropy_for_one_hot_targets() -> None:
    logits, y = _hard()
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    expected = torch.nn.functional.cross_entropy(logits, y)
    for divergence in ("kl", "ce"):
        loss = Loss(divergence=divergence)(logits, soft_targets(one_hot, width=3))
        torch.testing.assert_close(loss, expected)


def test_soft_loss_is_zero_when_the_model_matches_the_teacher() -> None:
    logits, _ = _hard()
    probs = torch.softmax(logits / 2.0, dim=-1)
    loss = Loss(temperature=2.0)(logits, soft_targets(probs, width=3))
    assert abs(float(loss)) < 1e-5
    # a single sigmoid logit and per-label sigmoids: KL of Bernoullis, also zero at a match
    z = torch.randn(8, 1)
    p = torch.sigmoid(z)
    assert abs(float(Loss()(z, soft_targets(torch.cat([1 - p, p], 1), width=1)))) < 1e-5
    assert (
        abs(float(Loss()(logits, soft_targets(torch.sigmoid(logits), width=3, multi_label=True))))
        < 1e-5
    )


def test_alpha_mixes_soft_and_hard_losses() -> None:
    logits, y = _hard()
    hard = targets_from_labels(_dataset(y), LabelSet.fit(_dataset(y)), 3)
    teacher = torch.softmax(torch.randn(8, 3), dim=-1)
    both = hard.with_soft(teacher)
    soft_only = Loss()(logits, soft_targets(teacher, width=3))
    hard_only = torch.nn.functional.cross_entropy(logits, y)
    mixed = Loss(alpha=0.25)(logits, both)
    torch.testing.assert_close(mixed, 0.25 * soft_only + 0.75 * hard_only)


def _dataset(y: torch.Tensor) -> Dataset:
    return Dataset.from_lists([f"text {i}" for i in range(len(y))], [f"l{int(v)}" for v in y])


def test_hard_targets_and_weights_match_the_head() -> None:
    ds = Dataset.from_lists(["a", "b", "c", "d"], ["pos", "neg", "neg", "neg"])
    labels = LabelSet.fit(ds)
    single = targets_from_labels(ds, labels, 1)  # one sigmoid logit for two classes
    assert single.hard is not None and single.hard.tolist() == [1, 0, 0, 0]
    weights = class_weights(single)
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    logits = torch.zeros(4, 1)
    weighted = Loss(weights=weights)(logits, single)
    torch.testing.assert_close(weighted, torch.log(torch.tensor(2.0)) * weights[single.hard].mean())


def test_bad_soft_targets_and_settings_are_refused() -> None:
    with pytest.raises(DataError, match="shape"):
        soft_targets(torch.ones(4, 2) / 2, width=3)
    with pytest.raises(DataError, match="sum to 1"):
        soft_targets(torch.full((4, 3), 0.5), width=3)
    with pytest.raises(DataError, match="probabilities"):
        soft_targets(torch.full((4, 3), 2.0), width=3, multi_label=True)
    with pytest.raises(ConfigError, match="class_weight"):
        loss_for(soft_targets(torch.ones(2, 2) / 2, width=2), class_weight="balanced")
