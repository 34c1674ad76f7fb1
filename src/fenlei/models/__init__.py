"""Model families (plain ``nn.Module``s, one file each) and the small registry that builds them.

Every model maps ``forward(ids, mask)`` with ids and mask of shape (B, T) to logits of shape
(B, n_outputs). Enter through :func:`build_model`; :func:`n_outputs` and :func:`to_probs`
decide the head: softmax over classes, one sigmoid logit (binary, Keras-style) or one
sigmoid per label (multi-label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fenlei.config import PRESETS, ModelConfig, RunConfig
from fenlei.errors import ConfigError
from fenlei.models.family import Family, TrainIds
from fenlei.models.linear import LINEAR_V1, LINEAR_V2
from fenlei.models.lstm import LSTM_V1
from fenlei.models.nbsvm import NBSVM_V1
from fenlei.models.transformer import TRANSFORMER_V1, TRANSFORMER_V2
from fenlei.runtime import MMAP_THRESHOLD_LOW_MEMORY, MMAP_THRESHOLD_TRAINING
from fenlei.tokenize import pad_ids

__all__ = [
    "FAMILY_AGNOSTIC",
    "REGISTRY",
    "Family",
    "ModelSpec",
    "batched_logits",
    "build_model",
    "check",
    "family_of",
    "freeze_token_embeddings",
    "n_outputs",
    "to_probs",
    "training_mmap_threshold",
]


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs besides its config; saved as ``model_config.json`` in a run folder."""

    vocab_size: int
    pad_id: int
    n_outputs: int
    transformer_config: dict[str, Any] | None = field(default=None)
    ngram_rows: int | None = field(default=None)  # linear, nbsvm: table rows kept for n-grams
    # linear, nbsvm compressed by fenlei.compress: rows of a pruned table, int8 rows
    kept_rows: int | None = field(default=None)
    int8_table: bool = field(default=False)
    # nbsvm: the character n-gram lengths its features use ([lo, hi]); None: none
    char_ngrams: tuple[int, int] | None = field(default=None)
    # texts in the whole training set, for a new model built from a sample of them (a tuner's
    # probe); None: as many as the training ids it is built with. Not saved.
    train_texts: int | None = field(default=None)

    UNSAVED: ClassVar[frozenset[str]] = frozenset({"train_texts"})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the newer fields only when set, as older folders have it)."""
        out = {k: v for k, v in asdict(self).items() if k not in self.UNSAVED}
        for key, unset in (("kept_rows", None), ("int8_table", False), ("char_ngrams", None)):
            if out[key] == unset:
                del out[key]
        return out


REGISTRY: dict[str, Family] = {
    family.name: family
    for family in (LINEAR_V1, LINEAR_V2, NBSVM_V1, LSTM_V1, TRANSFORMER_V1, TRANSFORMER_V2)
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


# model.* settings every family honours (the head's shape is chosen outside the family)
FAMILY_AGNOSTIC = frozenset({"architecture", "single_logit"})


def training_mmap_threshold(cfg: RunConfig) -> int | None:
    """The glibc mmap threshold (bytes) for training ``cfg``, or None to leave glibc's own
    (:func:`fenlei.runtime.mmap_large_blocks`). A pretrained (transformer) family's peak
    memory is its activations: 16 MiB by default, 128 KiB with ``train.low_memory`` (less
    memory, 1.35-1.75x the time); the other families' steps would pay an mmap per large block
    for little memory."""
    if not family_of(cfg.model.architecture).pretrained:
        return None
    return MMAP_THRESHOLD_LOW_MEMORY if cfg.train.low_memory else MMAP_THRESHOLD_TRAINING


def check(cfg: RunConfig) -> None:
    """Check a new training's config against its model family; call it after ``load_config``.

    The rules: a pretrained family needs ``model.pretrained`` and ``encoder.kind=pretrained``;
    only families that read ``model.freeze_embeddings`` may freeze; windows
    (``encoder.long_text=chunks``) and gradient checkpointing only where the family supports
    them; the family's own rules (``Family.validate``); and no
    ``model.*`` setting the family does not read may be set (by the preset, a config file or
    ``--set``; pydantic's ``model_fields_set``), so a setting never silently does nothing.

    Not for a loaded run folder: its ``config.json`` sets every field.

    Raises:
        ConfigError: one line naming the settings (and the family) that do not fit.

    Example:
        >>> check(load_config("lstm", ["model.ngram=3"]))  # doctest: +SKIP
        ConfigError: model.ngram is set (by the preset, a config file or --set) but ...
    """
    family = family_of(cfg.model.architecture)
    _check_pretrained(cfg, family)
    _check_capabilities(cfg, family)
    if family.validate is not None:
        family.validate(cfg)
    _check_reads(cfg, family)


def _check_pretrained(cfg: RunConfig, family: Family) -> None:
    name = f"model.architecture={family.name}"
    if family.pretrained and not cfg.model.pretrained:
        raise ConfigError(f"{name} needs model.pretrained (an encoder folder or hub id, or minilm)")
    if family.pretrained and cfg.encoder.kind != "pretrained":
        raise ConfigError(
            f"{name} needs encoder.kind=pretrained (the encoder's own tokenizer), "
            f"not {cfg.encoder.kind}"
        )


def _families_with(has: Any) -> str:
    return " or ".join(name for name, family in REGISTRY.items() if has(family))


def _has_dense_table(family: Family) -> bool:
    """Whether the gradient loop trains a dense token embedding table of the family's (what
    ``train.embedding_lr`` applies to)."""
    return (
        family.token_embedding is not None
        and not family.sparse_table
        and (family.trains_by == "loop")
    )


def _check_capabilities(cfg: RunConfig, family: Family) -> None:
    if cfg.model.freeze_embeddings and "freeze_embeddings" not in family.reads:
        users = _families_with(lambda f: "freeze_embeddings" in f.reads)
        raise ConfigError(
            f"model.freeze_embeddings=true would leave {family.name} nothing (or only its head) "
            f"to learn; use it with {users}"
        )
    if cfg.train.embedding_lr is not None and not _has_dense_table(family):
        users = _families_with(_has_dense_table)
        raise ConfigError(
            f"train.embedding_lr applies to a dense token embedding table ({users}); "
            f"{family.name} has none (a sparse table learns at train.sparse_lr)"
        )
    if cfg.encoder.long_text == "chunks" and not family.windows:
        users = _families_with(lambda f: f.windows)
        raise ConfigError(
            f"encoder.long_text=chunks applies to model.architecture={users}, not "
            f"{family.name} (a bag of n-grams): raise encoder.max_length to read whole texts"
        )
    if cfg.train.gradient_checkpointing and family.gradient_checkpointing is None:
        users = _families_with(lambda f: f.gradient_checkpointing is not None)
        raise ConfigError(
            f"train.gradient_checkpointing=true applies to model.architecture={users} only, "
            f"not {family.name}"
        )


def _check_reads(cfg: RunConfig, family: Family) -> None:
    ignored = sorted(cfg.model.model_fields_set - FAMILY_AGNOSTIC - family.reads)
    if not ignored:
        return
    names = ", ".join(f"model.{key}" for key in ignored)
    verb = "is" if len(ignored) == 1 else "are"
    presets = [p for p, tree in PRESETS.items() if tree["model"]["architecture"] == family.name]
    hint = f" or start from --preset {' / '.join(presets)}" if presets else ""
    raise ConfigError(
        f"{names} {verb} set (by preset {cfg.preset}, a config file or --set) but "
        f"model.architecture={family.name} does not use {'it' if len(ignored) == 1 else 'them'}; "
        f"remove {'it' if len(ignored) == 1 else 'them'}{hint}"
    )


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


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), for inference.

    A batch holds at most ``batch_size`` texts and, when ``max_tokens`` is given, at most that
    many padded tokens (its first, longest text's length times its size; at least one text).

    Example:
        >>> length_sorted_batches([3, 100, 5, 100], batch_size=4, max_tokens=200)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        size = batch_size
        if max_tokens is not None:
            size = max(1, min(batch_size, max_tokens // max(1, lengths[order[start]])))
        batches.append(order[start : start + size])
        start += size
    return batches


@torch.inference_mode()
def batched_logits(
    model: nn.Module,
    id_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 256,
    max_tokens: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Logits (N, n_outputs) for token-id lists, batched by length so padding costs little.

    The model must be in eval mode; results come back in input order, on the CPU. A batch
    holds at most ``batch_size`` texts and ``max_tokens`` padded tokens (the family's
    ``batch_tokens``).
    """
    device = device or torch.device("cpu")
    chunks: dict[int, torch.Tensor] = {}
    lengths = [len(ids) for ids in id_lists]
    for batch in length_sorted_batches(lengths, batch_size, max_tokens):
        ids, mask = pad_ids([id_lists[i] for i in batch], pad_id)
        out = model(ids.to(device), mask.to(device)).float().cpu()
        for row, i in enumerate(batch):
            chunks[i] = out[row]
    return torch.stack([chunks[i] for i in range(len(id_lists))])
