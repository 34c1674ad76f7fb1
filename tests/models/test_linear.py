"""linear.v1: the training-time lookup (each distinct feature once) equals the plain one."""

from __future__ import annotations

import torch

from fenlei.models.linear import BagOfNgrams


def test_deduplicated_training_lookup_matches_the_plain_bag() -> None:
    torch.manual_seed(0)
    model = BagOfNgrams(vocab_size=30, n_outputs=3, dim=8, buckets=50, char_ngrams=(0, 0))
    ids = torch.randint(1, 30, (5, 12))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0  # padding must add nothing
    features = model.token_ngrams(ids, mask)

    model.train()
    deduped = model._feature_sums(features)
    deduped.square().sum().backward()
    grad_deduped = model.embed.weight.grad.to_dense().clone()  # type: ignore[union-attr]

    model.zero_grad()
    plain = model.embed(features)
    plain.square().sum().backward()
    grad_plain = model.embed.weight.grad.to_dense()  # type: ignore[union-attr]

    torch.testing.assert_close(deduped, plain)
    torch.testing.assert_close(grad_deduped, grad_plain)
    assert float(grad_deduped[model.pad_index].abs().sum()) == 0.0
