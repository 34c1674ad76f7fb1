"""``lstm.v1``: Embedding -> (Bi)LSTM -> pooling -> dropout -> linear head.

With one layer, 64-dim embeddings, 128 units, last-state pooling and one sigmoid logit this
is the classic Keras IMDB network; initialisation follows Keras (uniform embeddings,
Glorot input weights, orthogonal recurrent weights, forget-gate bias 1).

Padding never enters the recurrence, so a text gets the same result alone or in a batch:
sequences are right-padded and the forward direction reads outputs at valid positions only;
the backward direction runs over each row's valid tokens reversed in place. This avoids
``pack_padded_sequence``, whose CPU kernel measured 10-40x slower than the plain one at
500 steps (bench notes in docs/benchmarks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from fenlei.errors import ConfigError
from fenlei.models.family import Family, TrainIds

if TYPE_CHECKING:
    from fenlei.config import ModelConfig, RunConfig
    from fenlei.models import ModelSpec

__all__ = ["LSTM_V1", "LSTMClassifier", "build"]


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first ``lengths[b]`` steps in place; padding stays at the end.

    (B, T, D) -> (B, T, D). Applying it twice gives back ``x``.
    """
    steps = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    last = (lengths - 1)[:, None]  # (B, 1)
    index = torch.where(steps <= last, last - steps, steps)  # (B, T)
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


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
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for layer in range(num_layers):
            size_in = embedding_dim if layer == 0 else hidden_size * self.directions
            self.forward_layers.append(nn.LSTM(size_in, hidden_size, batch_first=True))
            if bidirectional:
                self.backward_layers.append(nn.LSTM(size_in, hidden_size, batch_first=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * self.directions, n_outputs)
        self._init_like_keras(pad_id)

    def _init_like_keras(self, pad_id: int) -> None:
        nn.init.uniform_(self.embed.weight, -0.05, 0.05)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        for lstm in [*self.forward_layers, *self.backward_layers]:
            hidden = lstm.hidden_size
            for name, param in lstm.named_parameters():
                if name.startswith("weight_ih"):
                    for gate in param.data.chunk(4, dim=0):
                        nn.init.xavier_uniform_(gate)
                elif name.startswith("weight_hh"):
                    for gate in param.data.chunk(4, dim=0):
                        nn.init.orthogonal_(gate)
                elif name.startswith("bias_ih"):
                    param.data.zero_()
                    param.data[hidden : 2 * hidden] = 1.0  # forget gate (order i, f, g, o)
                else:
                    param.data.zero_()
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _layer(
        self, index: int, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One (bi)directional layer: outputs (B, T, H*dirs) and final states (B, H*dirs)."""
        out, _ = self.forward_layers[index](x)  # causal: valid steps never see padding
        last = (lengths - 1)[:, None, None].expand(-1, 1, out.shape[2])
        finals = [out.gather(1, last)[:, 0]]
        outputs = [out]
        if self.directions == 2:
            rev, _ = self.backward_layers[index](reverse_valid(x, lengths))
            finals.append(rev.gather(1, last)[:, 0])
            outputs.append(reverse_valid(rev, lengths))
        return torch.cat(outputs, dim=-1), torch.cat(finals, dim=-1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, n_outputs) logits."""
        lengths = mask.sum(dim=1).clamp(min=1)
        x = self.embed(ids)  # (B, T, E)
        for index in range(len(self.forward_layers)):
            if index > 0:
                x = self.dropout(x)
            x, final = self._layer(index, x, lengths)
        if self.pooling == "last":
            pooled = final
        else:
            valid = mask[:, :, None].bool()  # (B, T, 1)
            if self.pooling == "max":
                pooled = x.masked_fill(~valid, float("-inf")).max(dim=1).values
            else:
                pooled = (x * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
        return self.head(self.dropout(pooled))  # type: ignore[no-any-return]


def build(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    """An ``lstm.v1`` model; ``model.glove`` initialises its embeddings from GloVe."""
    model = LSTMClassifier(
        vocab_size=spec.vocab_size,
        n_outputs=spec.n_outputs,
        embedding_dim=cfg.embedding_dim,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        pooling=cfg.pooling,
        dropout=cfg.dropout,
        pad_id=spec.pad_id,
    )
    if cfg.glove and vocab is not None:
        from fenlei.models.glove import init_from_glove

        init_from_glove(model.embed, vocab)
    return model


def token_embedding(model: nn.Module) -> nn.Module:
    """The token embedding table."""
    assert isinstance(model, LSTMClassifier)
    return model.embed


def validate(cfg: RunConfig) -> None:
    """GloVe 6B vectors are 50-dimensional, so ``model.glove`` needs ``embedding_dim=50``."""
    if cfg.model.glove and cfg.model.embedding_dim != 50:
        raise ConfigError(
            f"model.glove=true needs model.embedding_dim=50 (GloVe 6B 50d), "
            f"not {cfg.model.embedding_dim}"
        )


LSTM_V1 = Family(
    name="lstm.v1",
    build=build,
    reads=frozenset(
        {
            "embedding_dim",
            "hidden_size",
            "num_layers",
            "bidirectional",
            "pooling",
            "dropout",
            "glove",
            "freeze_embeddings",
        }
    ),
    token_embedding=token_embedding,
    validate=validate,
    search_space={
        "train.lr": (1e-3, 2e-3, 5e-3),
        "model.hidden_size": (64, 128, 256),
        "model.dropout": (0.0, 0.3, 0.5),
        "model.bidirectional": (False, True),
        "model.pooling": ("last", "max", "mean"),
    },
)
