"""What the files of a run folder must say before :func:`fenlei.artifact.load_run` builds anything.

A run folder comes from anywhere (copied, downloaded, handed to ``fenlei serve``), and its
manifest only proves that the files agree with the manifest. This module checks what they say:
each JSON file against a pydantic schema with a cap on every size, the files against each
other (labels against the output width, the tokenizer against the vocabulary), and the tensors
of ``model.safetensors`` against the model the spec describes, built on the ``meta`` device
(no memory) and compared with the file's header. Only then does ``load_run`` build the model,
whose weights are then bounded by the file's size. Every refusal is one
:class:`~fenlei.errors.ArtifactError` line naming the file and the field.

Example:
    >>> labels = validate(LabelsFile, Path("labels.json"), {"labels": ["neg", "pos"]})
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from safetensors import SafetensorError, safe_open

from fenlei.config import ModelConfig, RunConfig
from fenlei.errors import ArtifactError
from fenlei.models import REGISTRY, ModelSpec, build_model, family_of, n_outputs
from fenlei.tokenize import Encoder

__all__ = [
    "FIX",
    "MAX_LAYERS",
    "MAX_NGRAM_ROWS",
    "MAX_OUTPUTS",
    "MAX_SIZE",
    "MAX_UNSAVED_BYTES",
    "MAX_VOCAB",
    "FileEntry",
    "LabelsFile",
    "Manifest",
    "SpecFile",
    "check_agreement",
    "check_weights",
    "invalid",
    "is_plain_relative",
    "parse_config",
    "validate",
]

FIX = "retrain or restore the folder"
MAX_VOCAB = 10_000_000  # token ids (the largest public tokenizers have ~256k)
MAX_OUTPUTS = 100_000  # labels, and so the output width
MAX_NGRAM_ROWS = 50_000_000  # linear/nbsvm n-gram table rows (fastText's default is 2M buckets)
MAX_SIZE = 10_000_000  # any other size in a saved encoder config (widths, positions)
MAX_LAYERS = 1_000  # layer counts: even on ``meta`` each layer costs construction time
MAX_CHAR_NGRAM = 32  # nbsvm character n-gram lengths (fastText uses 3-6)
MAX_UNSAVED_BYTES = 256 << 20  # buffers a model builds but does not save (HF position ids)
# keys of sizes that multiply modules, not tensor widths: "num_hidden_layers", "n_layer"
_COUNT_KEY = re.compile(r"(layer|expert|block)s?$")
# torch dtype -> the safetensors header's name for it
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

_M = TypeVar("_M", bound=BaseModel)


def invalid(path: Path, what: str) -> ArtifactError:
    """The one-line refusal of a run-folder file: ``<path>: <what>; retrain or restore...``."""
    return ArtifactError(f"{path}: {' '.join(what.split())}; {FIX}")


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _describe(exc: ValidationError) -> str:
    """The first problem pydantic found, on one line, with where it is and what was there."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    found = reprlib.repr(error.get("input"))
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{where or 'the file'}: {message} (found {found}){more}"


def validate(schema: type[_M], path: Path, raw: Any) -> _M:
    """``schema.model_validate(raw)``, refused as one :func:`invalid` line naming the field.

    Raises:
        ArtifactError: ``raw`` does not fit ``schema``.
    """
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise invalid(path, _describe(exc)) from exc


class _Strict(BaseModel):
    # strict: fenlei writes these files itself, so "12" for 12 or true for 1 means tampering
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def is_plain_relative(rel: str) -> bool:
    """Whether ``rel`` names a file inside a run folder: relative, no ``..``, nothing hidden."""
    parts = rel.split("/")
    return (
        bool(rel)
        and "\\" not in rel
        and "\x00" not in rel
        and all(part and part not in (".", "..") and not part.startswith(".") for part in parts)
    )


class FileEntry(_Strict):
    """One file of the manifest: its sha256 and size."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex digest.")
    size: int = Field(alias="bytes", ge=0, description="Size in bytes.")


class Manifest(_Strict):
    """``manifest.json``: every file of the run folder, relative posix path -> entry."""

    format_version: int
    fenlei_version: str
    # what the folder holds: one model, or an ensemble of run folders; older folders say nothing
    kind: Literal["single", "ensemble"] = "single"
    files: dict[str, FileEntry]

    @field_validator("files")
    @classmethod
    def _paths_inside(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for rel in files:
            if not is_plain_relative(rel) or rel.split("/")[0] in ("manifest.json", "checkpoint"):
                raise ValueError(f"{rel!r} is not the path of a file inside the run folder")
        return files


_Label = Annotated[str, StringConstraints(min_length=1)]


class LabelsFile(_Strict):
    """``labels.json``: the label names in output order, and whether a text may have several."""

    labels: list[_Label] = Field(min_length=1, max_length=MAX_OUTPUTS)
    multi_label: bool = False

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        seen: set[str] = set()
        for label in labels:
            if label in seen:
                raise ValueError(f"label {label!r} appears twice")
            seen.add(label)
        return labels


def _ints(tree: Any) -> list[tuple[str, int]]:
    """Every (key, int) pair in nested JSON, walked without recursion (depth is untrusted)."""
    found: list[tuple[str, int]] = []
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)
        elif isinstance(value, int) and not isinstance(value, bool):
            found.append((key, value))
    return found


class SpecFile(_Strict):
    """``model_config.json``: the :class:`~fenlei.models.ModelSpec` that rebuilds the model."""

    vocab_size: int = Field(ge=1, le=MAX_VOCAB)
    pad_id: int = Field(ge=0)
    n_outputs: int = Field(ge=1, le=MAX_OUTPUTS)
    transformer_config: dict[str, Any] | None = None
    ngram_rows: int | None = Field(None, ge=0, le=MAX_NGRAM_ROWS)
    kept_rows: int | None = Field(None, ge=0, le=MAX_NGRAM_ROWS)  # a pruned bag table
    int8_table: bool = False  # a bag table stored as int8 rows (fenlei.compress)
    char_ngrams: list[int] | None = None  # nbsvm's character n-gram lengths [lo, hi]

    @field_validator("char_ngrams")
    @classmethod
    def _char_lengths(cls, lengths: list[int] | None) -> list[int] | None:
        if lengths is not None and (
            len(lengths) != 2 or not 1 <= lengths[0] <= lengths[1] <= MAX_CHAR_NGRAM
        ):
            raise ValueError(
                f"char_ngrams {lengths} is not [lo, hi], 1 <= lo <= hi <= {MAX_CHAR_NGRAM}"
            )
        return lengths

    @field_validator("transformer_config")
    @classmethod
    def _bounded(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if config is None:
            return None
        if not isinstance(config.get("model_type"), str):
            raise ValueError("transformer_config needs its model_type (a string)")
        for key, number in _ints(config):
            cap = MAX_LAYERS if _COUNT_KEY.search(key) else MAX_SIZE
            if abs(number) > cap:
                raise ValueError(f"transformer_config {key} is {number}, beyond {cap:,}")
        return config

    @model_validator(mode="after")
    def _pad_in_vocab(self) -> SpecFile:
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is not below vocab_size {self.vocab_size}")
        return self

    def to_spec(self) -> ModelSpec:
        """The validated :class:`~fenlei.models.ModelSpec`."""
        fields = self.model_dump()
        if self.char_ngrams is not None:
            fields["char_ngrams"] = (self.char_ngrams[0], self.char_ngrams[1])
        return ModelSpec(**fields)


def parse_config(path: Path, raw: Any) -> RunConfig:
    """``config.json`` as a :class:`~fenlei.config.RunConfig`, refused if a size is beyond reason.

    Raises:
        ArtifactError: not a JSON object, a setting RunConfig refuses, an unknown model family,
            or a layer count beyond :data:`MAX_LAYERS`.
    """
    if not isinstance(raw, dict):
        raise invalid(path, f"expected a JSON object, found {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k != "fenlei_version"}
    cfg = validate(RunConfig, path, raw)
    if cfg.model.architecture not in REGISTRY:
        raise invalid(
            path,
            f"model.architecture {cfg.model.architecture!r} is no model family this fenlei "
            f"knows ({', '.join(REGISTRY)})",
        )
    for key, number in _ints(cfg.model.model_dump()):
        if _COUNT_KEY.search(key) and number > MAX_LAYERS:
            raise invalid(path, f"model.{key} is {number}, beyond {MAX_LAYERS:,}")
    return cfg


def check_agreement(
    root: Path, cfg: RunConfig, labels: LabelsFile, spec: ModelSpec, encoder: Encoder
) -> None:
    """Check that config, labels, spec and tokenizer describe the same model.

    Raises:
        ArtifactError: they disagree (the message names both sides).
    """
    spec_path = root / "model_config.json"
    width = n_outputs(
        len(labels.labels), multi_label=labels.multi_label, single_logit=cfg.model.single_logit
    )
    if spec.n_outputs != width:
        raise invalid(
            spec_path,
            f"n_outputs is {spec.n_outputs}, but the {len(labels.labels)} labels of labels.json "
            f"need {width}",
        )
    if labels.multi_label != cfg.data.multi_label:
        raise invalid(
            root / "labels.json",
            f"multi_label is {labels.multi_label}, config.json data.multi_label is "
            f"{cfg.data.multi_label}",
        )
    if encoder.vocab_size > spec.vocab_size:
        raise invalid(
            spec_path,
            f"vocab_size is {spec.vocab_size}, but tokenizer.json has {encoder.vocab_size} ids",
        )
    if encoder.pad_id != spec.pad_id:
        raise invalid(
            spec_path, f"pad_id is {spec.pad_id}, but tokenizer.json pads with {encoder.pad_id}"
        )
    pretrained = family_of(cfg.model.architecture).pretrained
    if pretrained and spec.transformer_config is None:
        # without it the model would be rebuilt from model.pretrained: a download, or any folder
        raise invalid(spec_path, "transformer_config is missing")
    if not pretrained and spec.transformer_config is not None:
        raise invalid(
            spec_path, f"transformer_config is set, but {cfg.model.architecture} has no encoder"
        )
    if spec.ngram_rows is not None and spec.ngram_rows > cfg.model.buckets:
        raise invalid(
            spec_path,
            f"ngram_rows is {spec.ngram_rows}, more than config.json model.buckets "
            f"{cfg.model.buckets}",
        )


def _stored_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) from a safetensors header, without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            slices = {name: fh.get_slice(name) for name in fh.keys()}  # noqa: SIM118
            return {k: (tuple(s.get_shape()), str(s.get_dtype())) for k, s in slices.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise invalid(path, f"not a safetensors file ({_brief(exc)})") from exc


_DESCRIBED = "config.json and model_config.json"


def _meta_model(path: Path, cfg: ModelConfig, spec: ModelSpec) -> torch.nn.Module:
    """The model ``cfg`` and ``spec`` describe, on the ``meta`` device (shapes, no memory)."""
    try:
        with torch.device("meta"):
            return build_model(cfg, spec)
    except Exception as exc:  # any family's constructor, fed an untrusted spec, may raise anything
        raise invalid(
            path.parent / "model_config.json", f"{_DESCRIBED} describe no model ({_brief(exc)})"
        ) from exc


def _compare(path: Path, expected: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``expected`` is in the file with its shape and dtype, and no other."""
    stored = _stored_tensors(path)
    for name in stored:
        if name not in expected:
            raise invalid(path, f"tensor {name} is not part of the model {_DESCRIBED} describe")
    for name, tensor in expected.items():
        if name not in stored:
            if any(other is tensor for key, other in expected.items() if key in stored):
                continue  # tied weights are saved once
            raise invalid(path, f"tensor {name} of the model {_DESCRIBED} describe is missing")
        shape, dtype = stored[name]
        want_shape, want_dtype = tuple(tensor.shape), _DTYPES.get(tensor.dtype, dtype)
        if (shape, dtype) != (want_shape, want_dtype):
            raise invalid(
                path,
                f"tensor {name} is {dtype} {list(shape)}, but {_DESCRIBED} describe "
                f"{want_dtype} {list(want_shape)}",
            )


def check_weights(path: Path, cfg: ModelConfig, spec: ModelSpec) -> None:
    """Check ``model.safetensors`` against the model ``cfg`` and ``spec`` describe, unbuilt.

    The model is built on the ``meta`` device (shapes only), so a spec asking for a terabyte
    costs nothing; every tensor it saves must be in the file with the same shape and dtype,
    and what it builds without saving must stay under :data:`MAX_UNSAVED_BYTES`.

    Raises:
        ArtifactError: the model cannot be built, or the file does not fit it.
    """
    model = _meta_model(path, cfg, spec)
    expected = model.state_dict(keep_vars=True)
    _compare(path, expected)
    unsaved = sum(
        b.numel() * b.element_size() for n, b in model.named_buffers() if n not in expected
    )
    if unsaved > MAX_UNSAVED_BYTES:
        raise invalid(
            path.parent / "model_config.json",
            f"{_DESCRIBED} describe a model with {unsaved:,} bytes of unsaved buffers",
        )
