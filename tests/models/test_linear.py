"""linear: the training-time lookup equals the plain one; the n-gram hash scatters bigrams; a
table with rows for the used buckets only gives the same features as the full one."""

from __future__ import annotations

import pytest
import torch

from fenlei.config import load_config
from fenlei.models import ModelSpec, build_model
from fenlei.models.linear import BagOfNgrams, ngram_buckets, occupied_buckets


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


def test_v2_hash_scatters_the_bigrams_of_a_small_vocabulary() -> None:
    # Chinese text has a few thousand character ids: v1 crowded their bigrams together
    a, b = torch.meshgrid(torch.arange(300), torch.arange(300), indexing="ij")
    ids = torch.stack([a.flatten(), b.flatten()], dim=1)  # every bigram of 300 ids, one per row
    valid = torch.ones_like(ids, dtype=torch.bool)
    distinct = 300 * 300
    v1 = torch.unique(ngram_buckets(ids, valid, 2, 200_000, mix=False)[0]).numel()
    v2 = torch.unique(ngram_buckets(ids, valid, 2, 200_000, mix=True)[0]).numel()
    expected = 200_000 * (1 - (1 - 1 / 200_000) ** distinct)  # a random hash: about 72,500
    assert v2 > 0.98 * expected
    assert v1 < 0.05 * distinct


@pytest.mark.parametrize("chars", [(0, 0), (3, 5)])
def test_table_of_used_buckets_gives_the_full_tables_features(chars: tuple[int, int]) -> None:
    torch.manual_seed(0)
    vocab = {f"w{i}": i for i in range(40)}
    train = [torch.randint(1, 40, (n,)).tolist() for n in (3, 9, 12, 1, 7)]
    overrides = [f"model.char_ngram_min={chars[0]}", f"model.char_ngram_max={chars[1]}"]
    cfg = load_config("linear", [*overrides, "model.buckets=500"]).model
    spec = ModelSpec(vocab_size=40, pad_id=0, n_outputs=2)
    full = build_model(cfg, spec, vocab=vocab)
    compact = build_model(cfg, spec, vocab=vocab, train_ids=train)
    used = occupied_buckets(train, ngram=2, buckets=500)
    # in blocks of a few texts (bounded memory), the same buckets
    torch.testing.assert_close(occupied_buckets(train, ngram=2, buckets=500, block_tokens=8), used)
    assert compact.ngram_rows == compact.pad_index - 40 >= len(used)  # type: ignore[operator]
    assert compact.embed.weight.shape[0] < full.embed.weight.shape[0]  # type: ignore[union-attr]
    # copy the full table's used rows into the compact one: same text vectors for train texts
    bucket_rows = compact.bucket_rows  # type: ignore[union-attr]
    with torch.no_grad():
        compact.embed.weight[:40] = full.embed.weight[:40]  # type: ignore[union-attr, index]
        kept = (bucket_rows != compact.pad_index).nonzero()[:, 0]
        compact.embed.weight[bucket_rows[kept]] = full.embed.weight[40 + kept]  # type: ignore[union-attr, index]
        compact.head.load_state_dict(full.head.state_dict())  # type: ignore[union-attr, operator]
    ids = torch.zeros(len(train), 12, dtype=torch.long)
    for i, row in enumerate(train):
        ids[i, : len(row)] = torch.tensor(row)
    mask = (torch.arange(12)[None, :] < torch.tensor([len(r) for r in train])[:, None]).long()
    full.eval(), compact.eval()
    torch.testing.assert_close(compact(ids, mask), full(ids, mask))
    # a bigram never seen in training is left out rather than given an untrained row
    unseen = torch.tensor([[1, 1, 1, 1]]), torch.ones(1, 4, dtype=torch.long)
    features = compact.token_ngrams(*unseen)  # type: ignore[operator]
    assert int((features != compact.pad_index).sum()) >= 4  # the four tokens stay


def test_run_folders_of_linear_v1_still_load_as_they_were_saved() -> None:
    # before v2, model_config.json had no ngram_rows and the table one row per bucket
    cfg = load_config("linear", ["model.architecture=linear.v1", "model.buckets=500"]).model
    model = build_model(cfg, ModelSpec(vocab_size=40, pad_id=0, n_outputs=2))
    assert isinstance(model, BagOfNgrams) and not model.mix_hash
    assert model.embed.weight.shape[0] == 40 + 500 + 1
    assert "bucket_rows" not in model.state_dict()  # so their weights load strictly
