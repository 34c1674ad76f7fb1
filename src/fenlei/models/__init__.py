"""Model families (plain ``nn.Module``s, one file each) and the small registry that builds them.

Every model maps ``forward(ids, mask)`` with ids and mask of shape (B, T) to logits of shape
(B, n_outputs). Enter through :func:`build_model`; :func:`n_outputs` and :func:`to_probs`
decide the head: softmax over classes, one sigmoid logit (binary, Keras-style) or one
sigmoid per label (multi-label).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fenlei.config import ModelConfig
from fenlei.errors import ConfigError
from fenlei.models.family import Family, TrainIds
from fenlei.tokenize import pad_ids

__all__ = [
    "REGISTRY",
    "Family",
    "ModelSpec",
    "batched_logits",
    "build_model",
    "family_of",
    "freeze_token_embeddings",
    "n_outputs",
    "to_probs",
]


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs besides its config; saved as ``model_config.json`` in a run folder."""

    vocab_size: int
    pad_id: int
    n_outputs: int
    transformer_config: dict[str, Any] | None = field(default=None)
    ngram_rows: int | None = field(default=None)  # linear, nbsvm: table rows kept for n-grams

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _used_buckets(
    cfg: ModelConfig, spec: ModelSpec, train_ids: TrainIds, *, mix: bool = True
) -> torch.Tensor | None:
    """The n-gram buckets a new hashed table keeps rows for; None for a saved model (its
    bucket map comes with its weights) or without training ids (one row per bucket)."""
    from fenlei.models.linear import occupied_buckets

    if spec.ngram_rows is not None or train_ids is None:
        return None
    return occupied_buckets(train_ids, ngram=cfg.ngram, buckets=cfg.buckets, mix=mix)


def _build_linear(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    from fenlei.models.linear import BagOfNgrams, char_buckets

    chars = (cfg.char_ngram_min, cfg.char_ngram_max)
    mix = cfg.architecture != "linear.v1"  # v1's weaker n-gram hash, for its run folders
    keep = _used_buckets(cfg, spec, train_ids, mix=mix)
    if keep is not None and 0 < chars[0] <= chars[1] and vocab is not None:
        used = char_buckets(vocab, lo=chars[0], hi=chars[1], buckets=cfg.buckets)
        keep = torch.unique(torch.cat([keep, used]))
    rows = spec.ngram_rows if keep is None else len(keep)
    model = BagOfNgrams(
        vocab_size=spec.vocab_size,
        n_outputs=spec.n_outputs,
        dim=cfg.embedding_dim,
        ngram=cfg.ngram,
        buckets=cfg.buckets,
        char_ngrams=chars,
        dropout=cfg.dropout,
        vocab=vocab,
        rows=rows,
        mix_hash=mix,
    )
    if keep is not None:
        model.keep_buckets(keep)
    return model


def _build_nbsvm(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    from fenlei.models.nbsvm import NBLogistic

    keep = _used_buckets(cfg, spec, train_ids)
    model = NBLogistic(
        vocab_size=spec.vocab_size,
        n_outputs=spec.n_outputs,
        ngram=cfg.ngram,
        buckets=cfg.buckets,
        rows=spec.ngram_rows if keep is None else len(keep),
        c_values=cfg.nb_c,
        alpha=cfg.nb_alpha,
    )
    if keep is not None:
        model.keep_buckets(keep)
    return model


def _build_lstm(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    from fenlei.models.lstm import LSTMClassifier

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


def _build_transformer(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    from fenlei.models.transformer import TransformerClassifier

    assert cfg.pretrained is not None  # checked by ModelConfig
    if spec.transformer_config is not None:
        return TransformerClassifier.from_config(
            spec.transformer_config, n_outputs=spec.n_outputs, dropout=cfg.dropout
        )
    return TransformerClassifier.from_pretrained(
        cfg.pretrained, n_outputs=spec.n_outputs, dropout=cfg.dropout
    )


def _ngram_rows(model: nn.Module) -> dict[str, Any]:
    rows = getattr(model, "ngram_rows", None)
    return {"ngram_rows": rows} if isinstance(rows, int) else {}


def _transformer_config(model: nn.Module) -> dict[str, Any]:
    return {"transformer_config": model.encoder_config()}  # type: ignore[operator]


def _transformer_embedding(model: nn.Module) -> nn.Module | None:
    return model.encoder.get_input_embeddings()  # type: ignore[operator,union-attr,no-any-return]


def _embed(model: nn.Module) -> nn.Module | None:
    table = getattr(model, "embed", None)
    return table if isinstance(table, nn.Module) else None


def _bf16_cpu(model: nn.Module) -> AbstractContextManager[Any]:
    return model.bf16_cpu_training()  # type: ignore[operator,no-any-return]


def _checkpointing(model: nn.Module) -> None:
    model.enable_gradient_checkpointing()  # type: ignore[operator]


_LINEAR_READS = frozenset(
    {"embedding_dim", "ngram", "buckets", "char_ngram_min", "char_ngram_max", "dropout"}
)
_LINEAR = dict(
    build=_build_linear,
    reads=_LINEAR_READS,
    sparse_table=True,
    token_embedding=_embed,
    spec_extras=_ngram_rows,
)

REGISTRY: dict[str, Family] = {
    "linear.v1": Family(name="linear.v1", **_LINEAR),  # type: ignore[arg-type]
    "linear.v2": Family(name="linear.v2", **_LINEAR),  # type: ignore[arg-type]
    "nbsvm.v1": Family(
        name="nbsvm.v1",
        build=_build_nbsvm,
        reads=frozenset({"ngram", "buckets", "nb_c", "nb_alpha"}),
        trains_by="solver",
        soft_targets=False,
        spec_extras=_ngram_rows,
    ),
    "lstm.v1": Family(
        name="lstm.v1",
        build=_build_lstm,
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
        token_embedding=_embed,
    ),
    "transformer.v1": Family(
        name="transformer.v1",
        build=_build_transformer,
        reads=frozenset({"pretrained", "dropout", "freeze_embeddings"}),
        pretrained=True,
        serve_chunk=8,  # MiniLM on CPU: 8 length-sorted texts per call beat 1 and 32
        bf16_cpu=_bf16_cpu,
        gradient_checkpointing=_checkpointing,
        token_embedding=_transformer_embedding,
        spec_extras=_transformer_config,
    ),
}


def family_of(architecture: str) -> Family:
    """The registered family called ``architecture`` (``"lstm.v1"``).

    Raises:
        ConfigError: no family has that name.
    """
    try:
        return REGISTRY[architecture]
    except KeyError as exc:
        raise ConfigError(
            f"model.architecture={architecture!r} is not registered; "
            f"choose one of {', '.join(REGISTRY)}"
        ) from exc


def build_model(
    cfg: ModelConfig,
    spec: ModelSpec,
    *,
    vocab: dict[str, int] | None = None,
    train_ids: TrainIds = None,
) -> nn.Module:
    """Build the network that ``cfg.architecture`` names.

    Args:
        cfg: the model section of a run config.
        spec: vocabulary size, padding id, number of outputs (and a saved transformer config
            when rebuilding from a run folder, which skips loading pretrained weights).
        vocab: token -> id, used for GloVe initialisation and character n-grams.
        train_ids: the training texts' token ids. With them, a new linear or nbsvm model keeps
            table rows only for the hashed n-grams they contain (``ngram_rows`` of its spec).

    Raises:
        ConfigError: the architecture is not registered.

    Example:
        >>> m = build_model(ModelConfig(), ModelSpec(vocab_size=100, pad_id=0, n_outputs=3))
    """
    family = family_of(cfg.architecture)
    model = family.build(cfg, spec, vocab, train_ids)
    if cfg.freeze_embeddings:
        freeze_token_embeddings(model, family)
    return model


def freeze_token_embeddings(model: nn.Module, family: Family) -> None:
    """Stop training the token embedding matrix (the optimizers then skip it).

    For a pretrained encoder that matrix is half of MiniLM's weights: freezing it saves its
    gradient and optimizer update (about a fifth of a step at SST-2's lengths).
    """
    table = family.token_embedding(model) if family.token_embedding is not None else None
    if not isinstance(table, nn.Embedding | nn.EmbeddingBag):
        raise ConfigError(f"{type(model).__name__} has no token embedding table to freeze")
    table.weight.requires_grad_(False)


def n_outputs(n_labels: int, *, multi_label: bool, single_logit: bool) -> int:
    """Width of the output layer for a task."""
    if single_logit and n_labels == 2 and not multi_label:
        return 1
    return n_labels


def to_probs(logits: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Probabilities (B, n_labels) from logits: softmax, sigmoid per label, or [1-p, p]."""
    if multi_label:
        return torch.sigmoid(logits)
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), for inference."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def batched_logits(
    model: nn.Module,
    id_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Logits (N, n_outputs) for token-id lists, batched by length so padding costs little.

    The model must be in eval mode; results come back in input order, on the CPU.
    """
    device = device or torch.device("cpu")
    chunks: dict[int, torch.Tensor] = {}
    for batch in length_sorted_batches([len(ids) for ids in id_lists], batch_size):
        ids, mask = pad_ids([id_lists[i] for i in batch], pad_id)
        out = model(ids.to(device), mask.to(device)).float().cpu()
        for row, i in enumerate(batch):
            chunks[i] = out[row]
    return torch.stack([chunks[i] for i in range(len(id_lists))])
