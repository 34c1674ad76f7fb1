"""The run folder: the one artifact every stage after training reads.

Layout (see docs/architecture.md)::

    config.json  labels.json  tokenizer.json  model_config.json  model.safetensors
    metrics.json  metrics.jsonl  plots/*.png  manifest.json

Every file is written atomically (temporary file, fsync, rename) and ``manifest.json`` is
written last, so a run without a manifest is an unfinished one. :func:`load_run` checks the
manifest's sha256 and size of every file and refuses anything that does not match.
Checkpoints (``checkpoint/``) are safetensors plus JSON. Nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from fenlei._version import __version__
from fenlei.config import RunConfig
from fenlei.errors import ArtifactError
from fenlei.files import atomic_write, atomic_write_text
from fenlei.models import ModelSpec, build_model, family_of
from fenlei.run_schema import (
    FIX,
    LabelsFile,
    Manifest,
    SpecFile,
    check_agreement,
    check_weights,
    invalid,
    parse_config,
    validate,
)
from fenlei.tokenize import Encoder

__all__ = [
    "FORMAT_VERSION",
    "CheckpointSnapshot",
    "LoadedRun",
    "atomic_write",
    "atomic_write_text",
    "load_best_weights",
    "load_checkpoint",
    "load_run",
    "mark_best_checkpoint",
    "save_run",
    "snapshot",
    "update_manifest",
    "verify_manifest",
    "write_checkpoint",
    "write_manifest",
]

FORMAT_VERSION = 1
RUN_KIND = "single"  # the manifest's "kind" of a one-model run folder (older ones have none)
MANIFEST = "manifest.json"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.safetensors"
PROGRESS_KEY = "fenlei.progress"
BEST_FILE = "best.safetensors"
# what load_run reads; the manifest must list each of them
RUN_FILES = (
    "config.json",
    "labels.json",
    "model_config.json",
    "tokenizer.json",
    "model.safetensors",
    "metrics.json",
)
MAX_JSON_BYTES = 64 << 20  # fenlei's own JSON files are kilobytes; tokenizer.json is not read here


def _write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n", durable=durable)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_odd(path: Path) -> None:
    """Refuse a link (it may point anywhere) or anything else that is not a plain file/folder."""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        raise ArtifactError(
            f"{path} is a symbolic link (to {os.readlink(path)}); a run folder holds its own "
            "files: replace the link by a copy of the file, or restore the folder"
        )
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ArtifactError(f"{path} is not a regular file; remove it or restore the folder")


def _payload_files(run_dir: Path) -> dict[str, Path]:
    """Relative posix path -> path of every file the manifest covers (hidden names and
    ``checkpoint/`` aside), walked without following links.

    A subfolder with its own ``manifest.json`` is a nested run folder (an ensemble's member):
    only that manifest is listed here; it covers the folder's other files, which
    :func:`load_run` on the member verifies.

    Raises:
        ArtifactError: a symbolic link or a special file (a FIFO would hang the hashing).
    """
    found: dict[str, Path] = {}
    for folder, dirs, names in os.walk(run_dir):
        here = Path(folder)
        if here != run_dir and MANIFEST in names:
            dirs[:] = []
            _refuse_odd(here / MANIFEST)
            found[(here / MANIFEST).relative_to(run_dir).as_posix()] = here / MANIFEST
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != CHECKPOINT_DIR]
        for name in dirs:
            _refuse_odd(here / name)  # os.walk lists a linked folder here and does not enter it
        for name in names:
            path = here / name
            if name.startswith(".") or (here == run_dir and name == MANIFEST):
                continue
            _refuse_odd(path)
            found[path.relative_to(run_dir).as_posix()] = path
    return dict(sorted(found.items()))


def write_manifest(run_dir: Path, *, kind: str = RUN_KIND) -> dict[str, Any]:
    """(Re)write ``manifest.json`` over every file of the run folder; return it.

    ``kind`` says what the folder holds: ``"single"``, one model, or ``"ensemble"`` (see
    :mod:`fenlei.ensemble`).

    Raises:
        ArtifactError: the folder holds a symbolic link or a special file (named).
    """
    files = {
        rel: {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for rel, p in _payload_files(run_dir).items()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "fenlei_version": __version__,
        "kind": kind,
        "files": files,
    }
    _write_json(run_dir / MANIFEST, manifest)
    return manifest


def update_manifest(run_dir: Path, manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """Record ``name`` as it is now in a verified ``manifest`` (or drop it, if it is gone).

    Unlike :func:`write_manifest` nothing else is hashed again, so a file changed since the
    manifest was verified is not vouched for by the rewrite.

    Raises:
        ArtifactError: ``name`` is a symbolic link or a special file.
    """
    path = run_dir / name
    files = {k: v for k, v in manifest["files"].items() if k != name}
    if path.exists() or path.is_symlink():
        _refuse_odd(path)
        files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    updated = {**manifest, "fenlei_version": __version__, "files": dict(sorted(files.items()))}
    _write_json(run_dir / MANIFEST, updated)
    return updated


def _read_manifest(run_dir: Path) -> tuple[dict[str, Any], Manifest]:
    """The manifest as read and as validated; its format version is checked first."""
    path = run_dir / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise ArtifactError(
            f"{path} is missing: the run did not finish or this is not a fenlei run folder; "
            "train again (or `fenlei train --resume`)"
        )
    _refuse_odd(path)
    try:
        raw = _read_json(path)
    except ArtifactError as exc:
        raise ArtifactError(f"{path} is not a valid manifest: {exc}") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if type(version) is int and version != FORMAT_VERSION:  # else the schema names the field
        raise ArtifactError(
            f"{run_dir} has run-folder format {version}; this fenlei reads {FORMAT_VERSION}"
        )
    return raw, validate(Manifest, path, raw)


def verify_manifest(run_dir: Path) -> dict[str, Any]:
    """Check that the run folder holds exactly the files its manifest lists; return it.

    Raises:
        ArtifactError: no run folder, no or invalid manifest, unknown format version, a
            symbolic link or special file, a file the manifest does not list, or one that is
            missing, truncated or altered (the message names it).
    """
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir} is not a run folder (it does not exist)")
    raw, manifest = _read_manifest(run_dir)
    present = _payload_files(run_dir)
    for rel in present:
        if rel not in manifest.files:
            raise ArtifactError(
                f"{present[rel]} is not in the manifest: it was added after the run was "
                "saved; remove it (or run `fenlei export` again for model.onnx), or restore "
                "the folder"
            )
    for rel, meta in manifest.files.items():
        file = run_dir / rel
        if rel not in present:
            raise ArtifactError(f"{file} is listed in the manifest but missing")
        size = file.stat().st_size
        if size != meta.size:
            raise ArtifactError(
                f"{file} has {size} bytes, the manifest says {meta.size}: it is truncated "
                "or altered; restore it or train again"
            )
        if _sha256(file) != meta.sha256:
            raise ArtifactError(
                f"{file} does not match its sha256 in the manifest: it was altered or "
                "corrupted; restore it or train again"
            )
    return dict(raw)


def _model_spec(model: nn.Module, spec: ModelSpec, architecture: str) -> ModelSpec:
    """The spec that rebuilds ``model``: what the model learned of its shape while built."""
    extras = family_of(architecture).spec_extras(model)
    return replace(spec, **{k: v for k, v in extras.items() if getattr(spec, k) is None})


def save_run(
    run_dir: Path,
    cfg: RunConfig,
    labels: tuple[str, ...],
    encoder: Encoder,
    model: nn.Module,
    spec: ModelSpec,
    metrics: dict[str, Any],
) -> None:
    """Write the run folder's files, then its manifest; remove the training checkpoint.

    Files already there (``metrics.jsonl``, plots) are kept and listed in the manifest.

    Example:
        >>> save_run(Path("runs/x"), cfg, labels, encoder, model, spec, {})  # doctest: +SKIP
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MANIFEST).unlink(missing_ok=True)  # the run is unfinished until written again
    _write_json(
        run_dir / "config.json",
        {"fenlei_version": __version__, **cfg.model_dump(mode="json")},
    )
    _write_json(
        run_dir / "labels.json", {"labels": list(labels), "multi_label": cfg.data.multi_label}
    )
    _write_json(
        run_dir / "model_config.json", _model_spec(model, spec, cfg.model.architecture).to_dict()
    )
    atomic_write(run_dir / "tokenizer.json", encoder.save)
    atomic_write(run_dir / "model.safetensors", lambda tmp: save_model(model, str(tmp)))
    _write_json(run_dir / "metrics.json", metrics)
    write_manifest(run_dir)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)


@dataclass
class LoadedRun:
    """Everything a run folder holds, rebuilt."""

    run_dir: Path
    config: RunConfig
    labels: tuple[str, ...]
    multi_label: bool
    encoder: Encoder
    model: nn.Module
    spec: ModelSpec
    metrics: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)  # as verified (versions, sha256s)

    @property
    def kind(self) -> str:
        """What the run folder holds: ``"single"`` (one model; also every older folder)."""
        return str(self.manifest.get("kind", RUN_KIND))


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ArtifactError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MiB; {FIX}")
        return json.loads(path.read_text(encoding="utf-8"))
    # ValueError: also a number past Python's digit cap; RecursionError: nesting too deep
    except (OSError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc


def load_run(run_dir: str | Path) -> LoadedRun:
    """Verify the manifest and every field of the JSON files, then rebuild the run.

    Nothing is built before the files are validated and ``model.safetensors`` is checked
    against the model they describe (see :mod:`fenlei.run_schema`), so an odd folder costs
    no memory. The model comes back in eval mode.

    Raises:
        ArtifactError: the folder is missing, incomplete, altered, inconsistent or
            incompatible (one line naming the file and field).

    Example:
        >>> run = load_run("runs/demo")  # doctest: +SKIP
    """
    root = Path(run_dir)
    manifest = verify_manifest(root)
    if manifest.get("kind", RUN_KIND) != RUN_KIND:
        raise ArtifactError(
            f"{root} holds an {manifest['kind']}, not one model; open it with "
            "fenlei.open_predictor (as the CLI and the service do)"
        )
    for name in RUN_FILES:
        if name not in manifest["files"]:
            raise invalid(root / MANIFEST, f"{name} is not listed")
    cfg = parse_config(root / "config.json", _read_json(root / "config.json"))
    labels = validate(LabelsFile, root / "labels.json", _read_json(root / "labels.json"))
    spec_path = root / "model_config.json"
    spec = validate(SpecFile, spec_path, _read_json(spec_path)).to_spec()
    metrics = _read_json(root / "metrics.json")
    if not isinstance(metrics, dict):
        raise invalid(
            root / "metrics.json", f"expected a JSON object, found {type(metrics).__name__}"
        )
    encoder = Encoder.load(root / "tokenizer.json", cfg.encoder)
    check_agreement(root, cfg, labels, spec, encoder)
    check_weights(root / "model.safetensors", cfg.model, spec)
    model = build_model(cfg.model, spec)  # its tensors now match the file's, so fit in memory
    try:
        load_model(model, str(root / "model.safetensors"), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ArtifactError(f"{root / 'model.safetensors'} does not fit the model: {exc}") from exc
    model.eval()
    return LoadedRun(
        run_dir=root,
        config=cfg,
        labels=tuple(labels.labels),
        multi_label=labels.multi_label,
        encoder=encoder,
        model=model,
        spec=spec,
        metrics=metrics,
        manifest=manifest,
    )


def _flatten_optimizers(
    optimizers: list[torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], list[Any]]:
    tensors: dict[str, torch.Tensor] = {}
    groups: list[Any] = []
    for j, opt in enumerate(optimizers):
        state = opt.state_dict()
        groups.append(state["param_groups"])
        for idx, slots in state["state"].items():
            for key, value in slots.items():
                tensors[f"optim{j}.{idx}.{key}"] = torch.as_tensor(value).detach().clone()
    return tensors, groups


def _unflatten_optimizers(
    tensors: dict[str, torch.Tensor], groups: list[Any], optimizers: list[torch.optim.Optimizer]
) -> None:
    for j, opt in enumerate(optimizers):
        state: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"optim{j}."
        for name, value in tensors.items():
            if name.startswith(prefix):
                idx, key = name[len(prefix) :].split(".", 1)
                state.setdefault(int(idx), {})[key] = value
        opt.load_state_dict({"state": state, "param_groups": groups[j]})


@dataclass(frozen=True)
class CheckpointSnapshot:
    """A copy of everything a checkpoint holds, taken at one moment (see :func:`snapshot`)."""

    tensors: dict[str, torch.Tensor]
    progress: dict[str, Any]


def snapshot(
    model: nn.Module, optimizers: list[torch.optim.Optimizer], progress: dict[str, Any]
) -> CheckpointSnapshot:
    """Copy the model, optimizer state and RNG now, so training may go on while it is written."""
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    opt_tensors, groups = _flatten_optimizers(optimizers)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    return CheckpointSnapshot(tensors, {**progress, "optimizer_groups": groups})


def write_checkpoint(run_dir: Path, snap: CheckpointSnapshot, *, best: bool = False) -> None:
    """Atomically write ``checkpoint/state.safetensors`` (+ ``best.safetensors`` when best).

    The progress travels inside the tensor file's metadata, so one rename makes a consistent
    checkpoint; ``progress.json`` beside it is a readable copy that is never read back.
    """
    folder = run_dir / CHECKPOINT_DIR
    meta = {PROGRESS_KEY: json.dumps(snap.progress)}
    try:
        atomic_write(
            folder / STATE_FILE,
            lambda tmp: save_file(snap.tensors, str(tmp), metadata=meta),
            durable=False,
        )
        if best:
            mark_best_checkpoint(run_dir)
        readable = {k: v for k, v in snap.progress.items() if k != "optimizer_groups"}
        _write_json(folder / "progress.json", readable, durable=False)
    except OSError as exc:
        raise ArtifactError(
            f"cannot write the checkpoint in {folder}: {exc}; free disk space or choose "
            "another --out, then resume with --resume"
        ) from exc


def mark_best_checkpoint(run_dir: Path) -> None:
    """Keep the checkpoint just written as ``checkpoint/best.safetensors``.

    A hard link, not a copy: the next checkpoint replaces ``state.safetensors`` by rename, so
    the linked file keeps this epoch's weights without writing them twice.
    """
    folder = run_dir / CHECKPOINT_DIR
    tmp = folder / f".{BEST_FILE}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(folder / STATE_FILE, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(folder / STATE_FILE, tmp)
    os.replace(tmp, folder / BEST_FILE)


def load_best_weights(run_dir: Path) -> dict[str, torch.Tensor] | None:
    """The model weights of ``checkpoint/best.safetensors``; None when there is none.

    Raises:
        ArtifactError: the file exists but cannot be read.
    """
    path = run_dir / CHECKPOINT_DIR / BEST_FILE
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path} cannot be read ({exc}); delete it to start over") from exc
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}


def load_checkpoint(
    run_dir: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer]
) -> dict[str, Any] | None:
    """Restore the checkpoint into ``model`` and ``optimizers``; None when there is none.

    Raises:
        ArtifactError: the checkpoint exists but cannot be read or does not fit.
    """
    folder = run_dir / CHECKPOINT_DIR
    if not (folder / STATE_FILE).is_file():
        return None
    try:
        with safe_open(str(folder / STATE_FILE), framework="pt") as fh:
            progress = json.loads((fh.metadata() or {})[PROGRESS_KEY])
        tensors = load_file(str(folder / STATE_FILE))
        model.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        _unflatten_optimizers(tensors, progress.pop("optimizer_groups"), optimizers)
    except (SafetensorError, RuntimeError, OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{folder} cannot be resumed ({exc}); delete it to start over") from exc
    torch.set_rng_state(tensors["rng.torch"])
    return dict(progress)
