"""Every fenlei setting as a frozen, typed pydantic model, the presets, and TOML loading.

Enter through :func:`load_config`, which starts from a preset or a TOML file, applies
``--set section.key=value`` overrides and validates once, so a typo fails loudly::

    cfg = load_config("lstm", ["train.epochs=3", "model.bidirectional=true"])
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fenlei.errors import ConfigError
from fenlei.presets import PRESETS

__all__ = [
    "PRESETS",
    "AugmentConfig",
    "DataConfig",
    "EncoderConfig",
    "EvalConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "with_overrides",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """How rows are read from a table and split."""

    text_cols: tuple[str, ...] = Field(
        ("text",), min_length=1, description="Text column(s); several are joined."
    )
    text_joiner: str = Field(" ", description="String placed between joined text columns.")
    label_col: str = Field("label", description="Column holding the label(s).")
    multi_label: bool = Field(False, description="Each row may carry several labels.")
    label_sep: str = Field("|", description="Separator of several labels in a CSV/TSV cell.")
    dev_fraction: float = Field(0.1, gt=0, lt=0.5, description="Dev share when splitting.")
    test_fraction: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Test share held back when one table is split (0: none, the dev split's "
        "scores are then the estimate; give --test FILE for an unbiased one). Measured in "
        "docs/data.md: holding back 10 % cost up to 1.1 points.",
    )
    split_seed: int = Field(13, description="Seed of the stratified split.")


class EncoderConfig(_Section):
    """How text becomes token ids."""

    kind: Literal["wordpiece", "unigram", "word", "pretrained"] = Field(
        "wordpiece",
        description="Vocabulary trained on train texts (word = whole words, as fastText and "
        "Keras use), or a pretrained tokenizer.",
    )
    vocab_size: int = Field(30000, ge=100, description="Vocabulary size for a trained vocab.")
    min_frequency: int = Field(2, ge=1, description="Minimum count of a vocabulary entry.")
    lowercase: bool = Field(True, description="Lowercase before tokenizing.")
    strip_accents: bool = Field(False, description="Remove accents (é -> e).")
    strip_html: bool = Field(True, description="Replace HTML tags such as <br /> with spaces.")
    drop_punctuation: bool = Field(
        False, description="Drop punctuation and symbols except ' (Keras Tokenizer's filters)."
    )
    max_length: int = Field(256, ge=2, description="Maximum tokens per text; longer is cut.")
    truncation: Literal["head", "tail", "head+tail"] = Field(
        "head",
        description="Keep the first (head) or last (tail) max_length tokens, or the first "
        "quarter and the last three quarters of them (head+tail: long reviews and tickets).",
    )
    pretrained: str | None = Field(
        None, description="Folder or hub id of a pretrained tokenizer (kind=pretrained)."
    )
    max_unknown_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="kind=pretrained: stop before training when the vocabulary reads more than "
        "this share of the training tokens as unknown (minilm's English vocabulary read most "
        "Chinese characters as [UNK] and trained a majority-class model); 1 = never stop.",
    )
    extend_vocab: int = Field(
        0,
        ge=0,
        description="kind=pretrained: add up to this many of the pieces the pretrained "
        "vocabulary reads as unknown in the training texts (seen at least "
        "encoder.min_frequency times, the most frequent first; e.g. the Chinese characters "
        "an English vocabulary lacks) as new tokens whose embeddings the model learns; "
        "0 keeps the vocabulary as it is.",
    )
    long_text: Literal["cut", "chunks"] = Field(
        "cut",
        description="A text longer than max_length tokens is cut (encoder.truncation), or read "
        "whole as overlapping windows of max_length tokens whose logits are pooled (chunks; "
        "lstm and transformer families; docs/long-text.md).",
    )
    stride: int = Field(
        32, ge=0, description="chunks: tokens each window shares with the one before it."
    )
    pool: Literal["mean", "max"] = Field(
        "mean", description="chunks: how the windows' logits become the text's logits."
    )
    max_windows: int = Field(
        16,
        ge=1,
        description="chunks: most windows read per text; a longer text keeps its first "
        "max_windows - 1 windows and its last one.",
    )

    @model_validator(mode="after")
    def _check_stride(self) -> EncoderConfig:
        if self.long_text == "chunks" and self.stride >= self.max_length // 2:
            raise ValueError(
                f"encoder.stride={self.stride} must be less than half of "
                f"encoder.max_length={self.max_length} (windows would mostly repeat each other)"
            )
        return self


class ModelConfig(_Section):
    """Which network, and its sizes."""

    architecture: str = Field(
        "linear.v2",
        description="Registered family: linear.v2 (linear.v1: older n-gram hash), nbsvm.v1, "
        "lstm.v1, transformer.v1.",
    )
    embedding_dim: int = Field(64, ge=1, description="Token embedding size (linear, lstm).")
    hidden_size: int = Field(128, ge=1, description="LSTM hidden units per direction.")
    num_layers: int = Field(1, ge=1, description="Stacked LSTM layers.")
    bidirectional: bool = Field(False, description="Bidirectional LSTM.")
    pooling: Literal["last", "max", "mean"] = Field(
        "last", description="How LSTM states become one vector (last = final state)."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the head.")
    ngram: int = Field(2, ge=1, le=4, description="Largest token n-gram (linear, nbsvm).")
    buckets: int = Field(200_000, ge=1, description="Hash buckets for n-grams (linear, nbsvm).")
    char_ngram_min: int = Field(3, ge=0, description="Shortest character n-gram (0 = none).")
    char_ngram_max: int = Field(5, ge=0, description="Longest character n-gram (linear, nbsvm).")
    char_ngram_until: int = Field(
        0,
        ge=0,
        description="nbsvm: character n-grams of words are features only while the training "
        "set has at most this many texts per label (0 = never).",
    )
    nb_c: list[float] = Field(
        [0.1, 0.3, 1.0],
        min_length=1,
        description="nbsvm: inverse L2 strength C of the logistic regression; with several, "
        "each is solved and the best on dev kept.",
    )
    nb_alpha: float = Field(1.0, gt=0, description="nbsvm: smoothing of the feature counts.")
    glove: bool = Field(False, description="Initialise LSTM embeddings from GloVe 6B 50d.")
    freeze_embeddings: bool = Field(
        False,
        description="Keep the token embeddings fixed (pretrained or GloVe ones; lstm, "
        "transformer).",
    )
    pretrained: str | None = Field(None, description="Encoder folder or hub id for transformer.v1.")
    keep_layers: int | None = Field(
        None,
        ge=1,
        description="Transformers: keep this many of the pretrained encoder's layers, evenly "
        "spread from the first (DistilBERT's every other layer for half); None keeps all.",
    )
    single_logit: bool = Field(
        False, description="Binary tasks: one sigmoid output (Keras Dense(1)) not softmax."
    )

    @field_validator("nb_c", mode="before")
    @classmethod
    def _one_c_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int | float) else value

    # Which settings fit which family is checked by fenlei.models.check (config sits below
    # the registry); a run folder's config.json, which sets every field, must keep loading.
    @model_validator(mode="after")
    def _check_values(self) -> ModelConfig:
        if any(c <= 0 for c in self.nb_c):
            raise ValueError("model.nb_c values must be > 0")
        return self


class TrainConfig(_Section):
    """The training loop's settings."""

    epochs: int = Field(10, ge=1, description="Passes over the training data.")
    batch_size: int = Field(32, ge=1, description="Examples per step.")
    min_steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Small data: halve train.batch_size (not below 32) until an epoch has at "
        "least this many steps; none = always train.batch_size. The linear preset sets 32: "
        "on 400-1,800 training texts batch 32 instead of 128 gained 5-14 points "
        "(docs/benchmarks.md, 'Defaults on small many-class data').",
    )
    optimizer: Literal["adam", "adamw"] = Field("adamw", description="Optimizer.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    head_lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of the output head (the model's ``head`` layer), "
        "when it should differ from train.lr: a pretrained encoder fine-tuned at a small rate "
        "under a new, randomly initialised head; none = train.lr.",
    )
    embedding_lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of the token embedding table (lstm, transformers), "
        "when it should differ from train.lr: tokens added by encoder.extend_vocab start "
        "untrained and move little at a fine-tuning rate; none = train.lr.",
    )
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (L2 for adam).")
    sparse_optimizer: Literal["adagrad", "adam", "sgd"] = Field(
        "adagrad", description="Optimizer of sparse embedding tables (the linear model's)."
    )
    sparse_lr: float = Field(0.1, gt=0, description="Learning rate of sparse embedding tables.")
    fused_table: bool = Field(
        True, description="linear's table by a compiled Adagrad step (numba); false: autograd."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of steps warming up.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate decay after warm-up."
    )
    clip_grad_norm: float | None = Field(1.0, gt=0, description="Max gradient norm, or none.")
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="Weight the loss by inverse class frequency."
    )
    monitor: Literal["accuracy", "macro_f1", "loss"] = Field(
        "accuracy", description="Dev metric for early stopping and the best epoch."
    )
    patience: int | None = Field(
        3, ge=1, description="Stop after this many epochs without dev improvement; none = never."
    )
    restore_best: bool = Field(True, description="Keep the weights of the best dev epoch.")
    bucket_by_length: bool = Field(True, description="Batch texts of similar length.")
    seed: int = Field(13, description="Seed of every random choice in training.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    amp: bool = Field(
        True,
        description="bf16 mixed precision: on CUDA, and for transformers on CPUs that "
        "multiply bf16 in hardware (AMX, AVX-512 BF16).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Torch CPU threads; none = the cores the 1-minute load average leaves "
        "free (torch's one per core ran 4.5x slower on a busy 2-core machine).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Transformers: recompute activations in the backward pass instead of "
        "keeping them (MiniLM, batch 32 x 512 tokens: 4.2 GB peak instead of 11.8 GB; about "
        "1.5x slower per step at 128-256 tokens).",
    )
    low_memory: bool = Field(
        False,
        description="Transformers: return freed activation memory to the system at once "
        "(glibc's mmap threshold fixed at 128 KiB instead of 16 MiB): MiniLM on 2,000 "
        "sms_spam texts peaked at 1.8 GB instead of 2.2 GB, but trained 1.35x (sms_spam) to "
        "1.75x (IMDB) slower on a 2-core AMD CPU. Other families ignore it.",
    )
    round_lengths: bool = Field(
        True,
        description="When training under bf16 on CPU (oneDNN, AMX): pad each batch to one of "
        "4 lengths per doubling, so oneDNN keeps kernels for few shapes instead of one set per "
        "length seen (peak memory); 0.4-6 % more tokens on the benchmark sets.",
    )


class AugmentConfig(_Section):
    """On-the-fly, label-preserving augmentation of training texts (token level)."""

    delete: float = Field(0.0, ge=0, lt=1, description="Chance to drop each training token.")
    swap: float = Field(0.0, ge=0, lt=1, description="Chance to swap a token with the next.")

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return self.delete > 0 or self.swap > 0


class EvalConfig(_Section):
    """Evaluation settings."""

    plots: bool = Field(True, description="Write PNG plots into the run folder.")
    report: bool = Field(
        True,
        description="Write report.html (the run's HTML report and model card, docs/report.md) "
        "into the run folder after training; CLI: fenlei train --no-report.",
    )
    threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Multi-label decision threshold (of every label, or of labels without a "
        "positive dev example when eval.per_label_thresholds is on).",
    )
    batch_size: int = Field(256, ge=1, description="Texts per inference batch.")
    calibrate: bool | None = Field(
        None,
        description="After training, fit a temperature on dev (temperature scaling: the "
        "logits are divided by the one number that minimises the dev log-loss) and apply it "
        "to every prediction; the labels chosen do not change, the probabilities become "
        "calibrated (docs/calibration.md). None: the model family's default, on for "
        "linear, lstm and transformers, off for nbsvm (it made nbsvm's test ECE worse).",
    )
    per_label_thresholds: bool = Field(
        True,
        description="Multi-label: tune a threshold per label on dev (the best F1, or "
        "eval.min_precision) instead of eval.threshold for every label.",
    )
    min_precision: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Multi-label: tune each label's threshold for the highest recall at "
        "this dev precision (None: the best F1); CLI: fenlei train --min-precision.",
    )
    abstain_target_accuracy: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Single-label reject option: abstain below the confidence at which the "
        "dev texts kept reach this accuracy, keeping as many as possible (None: never "
        "abstain).",
    )


class RunConfig(_Section):
    """One resolved configuration: what a run folder's config.json holds."""

    preset: str = Field("linear", description="Preset the config started from.")
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check_pretrained_encoder(self) -> RunConfig:
        if self.encoder.kind == "pretrained" and not (
            self.encoder.pretrained or self.model.pretrained
        ):
            raise ValueError("encoder.kind=pretrained needs encoder.pretrained or model.pretrained")
        if self.encoder.extend_vocab and self.encoder.kind != "pretrained":
            raise ValueError(
                f"encoder.extend_vocab applies to encoder.kind=pretrained, not "
                f"{self.encoder.kind} (a vocabulary trained on your texts already has their "
                "tokens; raise encoder.vocab_size instead)"
            )
        if self.encoder.extend_vocab and self.model.freeze_embeddings:
            raise ValueError(
                "encoder.extend_vocab adds tokens whose embeddings must be learnt, and "
                "model.freeze_embeddings=true would keep them at their random start; "
                "set one of them off"
            )
        return self

    @model_validator(mode="after")
    def _check_decision(self) -> RunConfig:
        if self.eval.min_precision is not None and not self.data.multi_label:
            raise ValueError(
                "eval.min_precision tunes per-label thresholds of multi-label data "
                "(data.multi_label=true); a single-label model can abstain instead: "
                "eval.abstain_target_accuracy"
            )
        if self.eval.min_precision is not None and not self.eval.per_label_thresholds:
            raise ValueError(
                "eval.min_precision needs eval.per_label_thresholds=true (it tunes them)"
            )
        if self.eval.abstain_target_accuracy is not None and self.data.multi_label:
            raise ValueError(
                "eval.abstain_target_accuracy is the reject option of single-label models; "
                "with data.multi_label=true a text gets no label when none reaches its "
                "threshold (eval.min_precision raises them)"
            )
        return self


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if raw.lower() in {"none", "null"}:
            return None
        return raw


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a config tree (values parsed as JSON if they can).

    Raises:
        ConfigError: an override is not of the form ``section.key=value``.
    """
    tree = copy.deepcopy(tree)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"override {item!r} is not of the form section.key=value "
                "(for example --set train.epochs=3)"
            )
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(raw.strip())
    return tree


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown setting")
        else:
            problems.append(f"{loc}: {err['msg']}")
    return f"invalid configuration ({origin}): " + "; ".join(problems)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a preset name or TOML file plus overrides into one validated :class:`RunConfig`.

    A TOML file may name a preset at its top (``preset = "lstm"``) and override sections.

    Args:
        source: a preset name (a key of :data:`PRESETS`), a path to a TOML file, or None for
            the ``linear`` preset.
        overrides: ``section.key=value`` strings applied last.

    Returns:
        The frozen, validated configuration. Whether its settings fit its model family is
        checked separately, for a new training: :func:`fenlei.models.check`.

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key or invalid value.

    Example:
        >>> load_config("seed-lstm", ["train.epochs=2"]).train.epochs
        2
    """
    tree: dict[str, Any]
    origin = "preset linear"
    if source is None:
        tree = {"preset": "linear"}
    elif str(source) in PRESETS:
        tree = {"preset": str(source)}
        origin = f"preset {source}"
    elif str(source).endswith(".toml") or Path(source).exists():
        tree = _read_toml(Path(source))
        tree.setdefault("preset", "linear")
        origin = f"file {source}"
    else:
        raise ConfigError(
            f"unknown preset or missing config file {str(source)!r}; "
            f"presets are: {', '.join(PRESETS)}"
        )
    preset = tree.get("preset")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets are: {', '.join(PRESETS)}")
    tree = _deep_merge(PRESETS[preset], tree)
    tree = apply_overrides(tree, overrides or [])
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from exc


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """``cfg`` with ``section.key=value`` overrides applied, validated again; settings equal
    to their defaults count as unset (so :func:`fenlei.models.check` accepts a run's config).

    Raises:
        ConfigError: unknown key or invalid value.

    Example:
        >>> with_overrides(load_config("lstm"), ["train.epochs=1"]).train.epochs
        1
    """
    # only what differs from the defaults counts as set (pydantic's model_fields_set), as in
    # a config loaded from a preset: a run folder's config.json sets every field
    tree = apply_overrides(cfg.model_dump(exclude_defaults=True), overrides)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, "the overrides")) from exc
