"""Hugging Face encoders with a classification head.

``transformer.v1``: the encoder's last hidden states, mean-pooled over the real tokens,
then dropout and a linear head (fenlei's own head; run folders of it keep loading).
``transformer.v2``: the architecture's own sequence-classification head
(``AutoModelForSequenceClassification``: for BERT the [CLS] pooler, dropout, a linear layer),
so a run exports to a folder that ``transformers`` loads without fenlei (:mod:`fenlei.hf`).

Both are built from pretrained weights (a local folder, ``minilm`` for the packaged MiniLM,
or a hub id) for training, or from a saved encoder config when a run folder is loaded, so loading
never downloads anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fenlei.errors import ConfigError
from fenlei.models.family import Family, TrainIds
from fenlei.tokenize import resolve_pretrained

if TYPE_CHECKING:
    from fenlei.config import ModelConfig
    from fenlei.models import ModelSpec

__all__ = [
    "TRANSFORMER_V1",
    "TRANSFORMER_V2",
    "SequenceClassifier",
    "TransformerClassifier",
    "build",
    "build_v2",
    "drop_layers",
    "grow_vocabulary",
    "kept_layers",
]


class _HFModule(nn.Module):
    """What both transformer families share: hooks on the wrapped HF model."""

    def hf_model(self) -> Any:
        """The wrapped ``transformers`` model (the encoder, or the whole classifier)."""
        raise NotImplementedError

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each layer's activations in the backward pass (HF gradient checkpointing).

        Non-reentrant checkpointing replays dropout with the same random state, so training
        takes the same steps, with about a third of the activation memory.
        """
        encoder: Any = self.hf_model()
        encoder.config.use_cache = False  # HF warns that caching and checkpointing conflict
        encoder.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )

    @contextmanager
    def bf16_cpu_training(self) -> Iterator[None]:
        """Use the matmul ("eager") attention while training under bf16 autocast on CPU.

        Having this hook is how a model family says bf16 pays off for it on CPUs with AMX or
        AVX-512 BF16 (2.2-2.5x per MiniLM step with AMX; docs/architecture.md, the training
        loop).

        torch's fused CPU attention kernel has a slow backward in bf16 (45 % of a MiniLM
        step); the eager path runs on the AMX matmuls. The previous implementation (normally
        ``sdpa``, the faster one for fp32 inference and export) comes back afterwards.
        """
        encoder: Any = self.hf_model()
        previous = encoder.config._attn_implementation
        encoder.set_attn_implementation("eager")
        try:
            yield
        finally:
            encoder.set_attn_implementation(previous)


class TransformerClassifier(_HFModule):
    """HF encoder -> masked mean of the last hidden states -> dropout -> linear head."""

    def __init__(self, encoder: nn.Module, *, hidden_size: int, n_outputs: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        # Mean pooling never reads the encoder's [CLS] pooler, so it gets no gradient: the
        # optimizer skipped it anyway, but DistributedDataParallel refuses parameters that
        # receive none (`fenlei train --ray` failed on its first step). Frozen, it stays in
        # the state dict, so run folders keep loading.
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_outputs)

    @classmethod
    def from_pretrained(cls, name: str, *, n_outputs: int, dropout: float) -> TransformerClassifier:
        """Load pretrained encoder weights from a folder or hub id; the head is new."""
        from transformers import AutoModel

        try:
            encoder = AutoModel.from_pretrained(resolve_pretrained(name))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load pretrained encoder {name!r}: {exc}") from exc
        return cls(
            encoder, hidden_size=encoder.config.hidden_size, n_outputs=n_outputs, dropout=dropout
        )

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, n_outputs: int, dropout: float
    ) -> TransformerClassifier:
        """Build the architecture from a saved HF config dict (weights loaded afterwards)."""
        from transformers import AutoConfig, AutoModel

        cfg = dict(config)
        model_type = cfg.pop("model_type")
        hf_config = AutoConfig.for_model(model_type, **cfg)
        encoder = AutoModel.from_config(hf_config)  # type: ignore[no-untyped-call]
        return cls(encoder, hidden_size=hf_config.hidden_size, n_outputs=n_outputs, dropout=dropout)

    def encoder_config(self) -> dict[str, Any]:
        """The encoder's HF config as a JSON-ready dict (saved in the run folder)."""
        config: Any = self.encoder.config
        return dict(config.to_dict())

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, n_outputs) logits."""
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        weights = mask[:, :, None].to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(self.dropout(pooled))  # type: ignore[no-any-return]

    def hf_model(self) -> Any:
        """The wrapped HF encoder."""
        return self.encoder


class SequenceClassifier(_HFModule):
    """``transformer.v2``: an ``AutoModelForSequenceClassification`` (for BERT: the [CLS]
    pooler, dropout and a linear layer), called as ``forward(ids, mask) -> logits``.

    The wrapped model is exactly what ``transformers`` loads from a saved folder, so
    :func:`fenlei.hf.export_hf` only has to write it out with its labels.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def from_pretrained(cls, name: str, *, n_outputs: int, dropout: float) -> SequenceClassifier:
        """Pretrained encoder (and pooler) weights from a folder or hub id; the head is new."""
        from transformers import AutoModelForSequenceClassification

        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_pretrained(name), num_labels=n_outputs, classifier_dropout=dropout
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load pretrained encoder {name!r}: {exc}") from exc
        return cls(model)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SequenceClassifier:
        """Build the architecture from a saved HF config dict (weights loaded afterwards)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        cfg = dict(config)
        model_type = cfg.pop("model_type")
        hf_config = AutoConfig.for_model(model_type, **cfg)
        return cls(AutoModelForSequenceClassification.from_config(hf_config))

    def hf_model(self) -> Any:
        """The wrapped HF sequence classifier."""
        return self.model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, n_outputs) logits."""
        return self.model(input_ids=ids, attention_mask=mask).logits  # type: ignore[no-any-return]


def kept_layers(total: int, keep: int) -> list[int]:
    """Which of ``total`` encoder layers ``keep`` of them are: evenly spread from the first
    (for half, every other layer, as DistilBERT initialises its student).

    Example:
        >>> kept_layers(6, 3), kept_layers(12, 4), kept_layers(6, 6)
        ([0, 2, 4], [0, 3, 6, 9], [0, 1, 2, 3, 4, 5])
    """
    if not 1 <= keep <= total:
        raise ConfigError(
            f"model.keep_layers={keep} but the encoder has {total} layers; keep 1..{total}"
        )
    return [i * total // keep for i in range(keep)]


def drop_layers(model: nn.Module, keep: int) -> list[int]:
    """Keep ``keep`` of the encoder's layers (:func:`kept_layers`), in place; the model's HF
    config then says so, so a saved run folder rebuilds the smaller encoder. Returns the
    indices kept.

    Raises:
        ConfigError: the encoder has no ``encoder.layer`` list (BERT-style encoders have one)
            or fewer than ``keep`` layers.
    """
    hf: Any = _plain(model).hf_model()
    base = getattr(hf, "base_model", hf)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"model.keep_layers needs a BERT-style encoder (encoder.layer); "
            f"{type(base).__name__} has none"
        )
    keep_at = kept_layers(len(layers), keep)
    base.encoder.layer = nn.ModuleList([layers[i] for i in keep_at])
    hf.config.num_hidden_layers = keep
    return keep_at


def grow_vocabulary(model: nn.Module, vocab_size: int) -> int:
    """Give the encoder ``vocab_size`` input embeddings when its tokenizer was extended
    (``encoder.extend_vocab``); the new rows start near the pretrained ones (transformers'
    ``resize_token_embeddings``: drawn from their mean and covariance). Returns the rows
    added (0 when the table is already large enough)."""
    hf = _plain(model).hf_model()
    rows = int(hf.get_input_embeddings().num_embeddings)
    if vocab_size <= rows:
        return 0
    hf.resize_token_embeddings(vocab_size)
    return vocab_size - rows


def _fit_to_spec(model: nn.Module, cfg: ModelConfig, spec: ModelSpec) -> nn.Module:
    """A freshly loaded pretrained model, grown to the (extended) vocabulary and cut to
    ``model.keep_layers``."""
    grow_vocabulary(model, spec.vocab_size)
    if cfg.keep_layers is not None:
        drop_layers(model, cfg.keep_layers)
    return model


def build(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    """A ``transformer.v1`` model: pretrained weights, or a saved run's encoder config.

    With ``spec.transformer_config`` (a run folder being loaded) nothing is downloaded or
    read from ``model.pretrained``; the weights are loaded afterwards.
    """
    if spec.transformer_config is not None:
        return TransformerClassifier.from_config(
            spec.transformer_config, n_outputs=spec.n_outputs, dropout=cfg.dropout
        )
    if cfg.pretrained is None:
        raise ConfigError("model.architecture=transformer.v1 needs model.pretrained")
    model = TransformerClassifier.from_pretrained(
        cfg.pretrained, n_outputs=spec.n_outputs, dropout=cfg.dropout
    )
    return _fit_to_spec(model, cfg, spec)


def build_v2(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    """A ``transformer.v2`` model: pretrained weights, or a saved run's HF config."""
    if spec.transformer_config is not None:
        return SequenceClassifier.from_config(spec.transformer_config)
    if cfg.pretrained is None:
        raise ConfigError("model.architecture=transformer.v2 needs model.pretrained")
    model = SequenceClassifier.from_pretrained(
        cfg.pretrained, n_outputs=spec.n_outputs, dropout=cfg.dropout
    )
    return _fit_to_spec(model, cfg, spec)


def _plain(model: nn.Module) -> _HFModule:
    assert isinstance(model, _HFModule)
    return model


def bf16_cpu(model: nn.Module) -> AbstractContextManager[None]:
    """See :meth:`TransformerClassifier.bf16_cpu_training`."""
    return _plain(model).bf16_cpu_training()


def gradient_checkpointing(model: nn.Module) -> None:
    """See :meth:`TransformerClassifier.enable_gradient_checkpointing`."""
    _plain(model).enable_gradient_checkpointing()


def token_embedding(model: nn.Module) -> nn.Module:
    """The encoder's input (word-piece) embedding table."""
    table: nn.Module = _plain(model).hf_model().get_input_embeddings()
    return table


def spec_extras(model: nn.Module) -> dict[str, Any]:
    """``transformer_config``: the HF config (the encoder's, or v2's whole classifier's), so
    loading never downloads."""
    return {"transformer_config": dict(_plain(model).hf_model().config.to_dict())}


_SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "train.lr": (2e-5, 3e-5, 5e-5, 1e-4),
    "train.epochs": (2, 3, 4),
    "train.warmup_ratio": (0.0, 0.06, 0.1),
    "model.dropout": (0.0, 0.1),
}


# A training step of the minilm preset: 32 texts of up to 128 tokens. Scoring 256 texts at
# once held about 4x a step's activations and set the run's peak memory (docs/benchmarks.md,
# "Training memory"); at this cap dev scoring and prediction stay below a training step.
BATCH_TOKENS = 32 * 128

TRANSFORMER_V1 = Family(
    name="transformer.v1",
    build=build,
    reads=frozenset({"pretrained", "dropout", "freeze_embeddings", "keep_layers"}),
    pretrained=True,
    serve_chunk=8,  # MiniLM on CPU: 8 length-sorted texts per call beat 1 and 32
    batch_tokens=BATCH_TOKENS,
    bf16_cpu=bf16_cpu,
    gradient_checkpointing=gradient_checkpointing,
    token_embedding=token_embedding,
    spec_extras=spec_extras,
    search_space=_SEARCH_SPACE,
)

# the same family but for its head and builder: the architecture's own classification head
TRANSFORMER_V2 = replace(TRANSFORMER_V1, name="transformer.v2", build=build_v2)
