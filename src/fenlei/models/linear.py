"""``linear.v1``: a fastText-like bag of token and token-n-gram embeddings, averaged.

Tokens are WordPiece pieces (sub-word, character n-gram units; single characters for CJK),
so unigrams plus hashed n-grams of them give the word and character n-gram features of
fastText without a second tokenizer.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BagOfNgrams"]

_PRIME = 1_000_003
_MOD = 2_147_483_647


class BagOfNgrams(nn.Module):
    """Mean of token and hashed n-gram embeddings -> dropout -> linear head."""

    def __init__(
        self,
        *,
        vocab_size: int,
        n_outputs: int,
        dim: int = 64,
        ngram: int = 2,
        buckets: int = 200_000,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.ngram = ngram
        self.buckets = buckets if ngram > 1 else 0
        self.pad_index = vocab_size + self.buckets  # one extra row, excluded from the mean
        # Sparse gradients: a step touches only the rows its batch uses (see train.py).
        self.embed = nn.EmbeddingBag(
            self.pad_index + 1, dim, mode="mean", sparse=True, padding_idx=self.pad_index
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_outputs)
        nn.init.uniform_(self.embed.weight, -1.0 / dim, 1.0 / dim)
        with torch.no_grad():
            self.embed.weight[self.pad_index].zero_()

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Feature ids (B, T') of unigrams and hashed n-grams; padding maps to ``pad_index``."""
        valid = mask.bool()
        parts = [torch.where(valid, ids, self.pad_index)]
        for n in range(2, self.ngram + 1):
            if ids.shape[1] < n:
                break
            h = ids[:, : ids.shape[1] - n + 1].clone()
            ok = valid[:, : ids.shape[1] - n + 1].clone()
            for k in range(1, n):
                nxt = ids[:, k : ids.shape[1] - n + 1 + k]
                h = (h * _PRIME + nxt + n) % _MOD
                ok &= valid[:, k : ids.shape[1] - n + 1 + k]
            parts.append(torch.where(ok, self.vocab_size + h % self.buckets, self.pad_index))
        return torch.cat(parts, dim=1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, n_outputs) logits."""
        pooled = self.embed(self.features(ids, mask))  # (B, T') -> (B, D)
        return self.head(self.dropout(pooled))  # type: ignore[no-any-return]
