"""``lstm.v1``: Embedding -> (Bi)LSTM -> pooling -> dropout -> linear head.

With one layer, 64-dim embeddings, 128 units, last-state pooling and one sigmoid logit this
is the classic Keras IMDB network; initialisation follows Keras (uniform embeddings,
Glorot input weights, orthogonal recurrent weights, forget-gate bias 1). Sequences are
packed, so padding never enters the recurrence and batch results equal single results.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["LSTMClassifier"]


class LSTMClassifier(nn.Module):
    """Recurrent text classifier over token ids."""

    def __init__(
        self,
        *,
        vocab_size: int,
        n_outputs: int,
        embedding_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: Literal["last", "max", "mean"] = "last",
        dropout: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.directions = 2 if bidirectional else 1
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * self.directions, n_outputs)
        self._init_like_keras(pad_id)

    def _init_like_keras(self, pad_id: int) -> None:
        nn.init.uniform_(self.embed.weight, -0.05, 0.05)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        hidden = self.lstm.hidden_size
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight_ih"):
                for gate in param.data.chunk(4, dim=0):
                    nn.init.xavier_uniform_(gate)
            elif name.startswith("weight_hh"):
                for gate in param.data.chunk(4, dim=0):
                    nn.init.orthogonal_(gate)
            elif name.startswith("bias_ih"):
                param.data.zero_()
                param.data[hidden : 2 * hidden] = 1.0  # forget gate (PyTorch order i, f, g, o)
            else:
                param.data.zero_()
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, n_outputs) logits."""
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(
            self.embed(ids), lengths, batch_first=True, enforce_sorted=False
        )
        out, (h_n, _) = self.lstm(packed)
        if self.pooling == "last":
            pooled = torch.cat(list(h_n[-self.directions :]), dim=-1)  # (B, H * dirs)
        else:
            seq, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
            valid = mask[:, :, None].bool()  # (B, T, 1)
            if self.pooling == "max":
                pooled = seq.masked_fill(~valid, float("-inf")).max(dim=1).values
            else:
                pooled = (seq * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
        return self.head(self.dropout(pooled))  # type: ignore[no-any-return]
