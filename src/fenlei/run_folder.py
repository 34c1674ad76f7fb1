"""Claiming a run folder for training: what may be written into, replaced or resumed.

Training writes into a folder it may not own (``--out`` is whatever the user typed), so
before anything is written :func:`open_for_training`:

- refuses a folder that holds files fenlei did not write (``--out data`` must never delete
  or mix with the training data); a folder is fenlei's when its ``manifest.json`` or
  ``checkpoint/run.json`` says so;
- replaces a finished run only when asked (``overwrite``), and then removes only fenlei's own
  files (:data:`OWN_FILES`, ``checkpoint/``), leaving anything else where it was;
- removes the temporaries of a killed process (``.model.safetensors.x1y2.tmp``);
- with ``resume``, continues from the checkpoint, or treats a run whose manifest verifies
  as complete (a kill between the manifest and the checkpoint clean-up leaves both).

:func:`lock` holds ``.fenlei.lock`` in the folder for the whole training, so a second
training into the same folder fails at once instead of silently replacing the first one's
model. The lock is an OS file lock (``filelock``): a killed process releases it.

Example:
    >>> with lock(Path("runs/x")):  # doctest: +SKIP
    ...     start = open_for_training(Path("runs/x"), cfg, labels, resume=False, overwrite=False)
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from fenlei.artifact import CHECKPOINT_DIR, MANIFEST, atomic_write_text, verify_manifest
from fenlei.config import RunConfig
from fenlei.data import LabelSet
from fenlei.errors import ArtifactError, ConfigError

__all__ = [
    "LOCK_FILE",
    "OWN_FILES",
    "Start",
    "check_writable",
    "is_run_folder",
    "lock",
    "open_for_training",
    "remove_run",
    "remove_temporaries",
]

logger = logging.getLogger(__name__)

LOCK_FILE = ".fenlei.lock"
RUN_STATE = "run.json"  # in checkpoint/: the settings and labels a checkpoint belongs to
# Every file fenlei writes into a run folder (besides checkpoint/, which is all fenlei's).
OWN_FILES = frozenset(
    {
        "config.json",
        "labels.json",
        "tokenizer.json",
        "model_config.json",
        "model.safetensors",
        "model.onnx",
        "metrics.json",
        "metrics.jsonl",
        "reference.json",
        "splits.json",
        "predictions.safetensors",
        "report.html",
        MANIFEST,
        "plots/training_curves.png",
        "plots/confusion_matrix.png",
    }
)
# atomic_write's temporary: ".<name>.<random>.tmp"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")

Start = Literal["fresh", "resume", "complete"]


@contextmanager
def lock(root: Path) -> Iterator[None]:
    """Hold the run folder's lock (creating the folder) while the block runs.

    Raises:
        ArtifactError: another process (a second training) holds it.
    """
    root.mkdir(parents=True, exist_ok=True)
    held = FileLock(str(root / LOCK_FILE), timeout=0)
    try:
        held.acquire()
    except Timeout as exc:
        raise ArtifactError(
            f"{root} is being written by another fenlei training (it holds "
            f"{root / LOCK_FILE}); wait for it to finish or choose another --out"
        ) from exc
    try:
        yield
    finally:
        held.release()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_run_folder(root: Path) -> bool:
    """Whether ``root`` holds a fenlei run: a manifest fenlei wrote, or a training checkpoint."""
    manifest = _read_json(root / MANIFEST)
    if isinstance(manifest, dict) and {"fenlei_version", "files"} <= manifest.keys():
        return True
    state = _read_json(root / CHECKPOINT_DIR / RUN_STATE)
    return isinstance(state, dict) and {"config", "labels"} <= state.keys()


def _foreign_entries(root: Path) -> list[str]:
    """Names in ``root`` that are neither hidden nor an empty ``checkpoint/`` (a run killed
    right after creating it)."""
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        empty_checkpoint = entry.name == CHECKPOINT_DIR and entry.is_dir()
        if empty_checkpoint and all(p.name.startswith(".") for p in entry.iterdir()):
            continue
        found.append(entry.name)
    return found


def check_writable(root: Path) -> None:
    """Refuse to train into a folder that holds files fenlei did not write.

    Raises:
        ArtifactError: ``root`` is a file, or a folder with other files than a fenlei run's.
    """
    if not root.exists():
        return
    if not root.is_dir():
        raise ArtifactError(f"{root} is a file, not a folder; choose another --out")
    if is_run_folder(root):
        return
    foreign = _foreign_entries(root)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ArtifactError(
            f"{root} is not a fenlei run folder and not empty (it holds {shown}); fenlei "
            "writes only into a new or empty folder or its own run folder: choose another --out"
        )


def remove_temporaries(root: Path) -> list[Path]:
    """Remove what a killed fenlei process left half-written; return what was removed."""
    removed = []
    for folder in (root, root / "plots"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TEMPORARY.match(path.name)
            rel = path.with_name(match["name"]).relative_to(root).as_posix() if match else ""
            if match and rel in OWN_FILES and path.is_file():
                path.unlink()
                removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of an interrupted run in %s", len(removed), root)
    return removed


def remove_run(root: Path) -> None:
    """Remove fenlei's own files of a run (and its checkpoint); other files stay."""
    remove_temporaries(root)
    for rel in OWN_FILES:
        (root / rel).unlink(missing_ok=True)
    shutil.rmtree(root / CHECKPOINT_DIR, ignore_errors=True)
    plots = root / "plots"
    if plots.is_dir() and not any(plots.iterdir()):
        plots.rmdir()


def _same_run(config: Any, labels: Any, cfg: RunConfig, names: tuple[str, ...]) -> bool:
    # Re-validate through today's schema so settings added since (with defaults) still match.
    if not isinstance(config, dict):
        return False
    try:
        then = RunConfig.model_validate({k: v for k, v in config.items() if k != "fenlei_version"})
    except ValueError:
        return False
    return then == cfg and labels == list(names)


def _finished_matches(root: Path, cfg: RunConfig, labels: LabelSet) -> bool:
    """Whether ``root`` holds a complete run (its manifest verifies) of these settings.

    Raises:
        ArtifactError: a complete run, but of other settings or labels.
    """
    try:
        verify_manifest(root)
    except ArtifactError:
        return False
    saved = _read_json(root / "labels.json")
    names = saved.get("labels") if isinstance(saved, dict) else None
    if not _same_run(_read_json(root / "config.json"), names, cfg, labels.names):
        raise ArtifactError(
            f"{root} already holds a finished run with other settings or labels; choose "
            "another --out, or pass --overwrite without --resume to replace it"
        )
    return True


def open_for_training(
    root: Path, cfg: RunConfig, labels: LabelSet, *, resume: bool, overwrite: bool
) -> Start:
    """Decide how training starts in ``root``, and clean what is in the way (hold
    :func:`lock` around it and the training).

    Returns:
        ``"fresh"`` (checkpoint folder started), ``"resume"`` (a matching checkpoint is
        there) or ``"complete"`` (``resume`` on a finished run of the same settings: its
        leftover checkpoint is removed and nothing needs training).

    Raises:
        ArtifactError: the folder is not fenlei's, or holds a finished run and neither
            ``overwrite`` nor a matching ``resume`` allows going on.
        ConfigError: ``resume`` with a checkpoint of other settings or labels.
    """
    check_writable(root)
    remove_temporaries(root)
    ckpt = root / CHECKPOINT_DIR
    if resume and (root / MANIFEST).is_file() and _finished_matches(root, cfg, labels):
        shutil.rmtree(ckpt, ignore_errors=True)
        return "complete"
    if resume and (ckpt / RUN_STATE).is_file():
        saved = _read_json(ckpt / RUN_STATE)
        if not isinstance(saved, dict) or not _same_run(
            saved.get("config"), saved.get("labels"), cfg, labels.names
        ):
            raise ConfigError(
                f"the checkpoint in {ckpt} was made with other settings or labels; "
                "train again without --resume, or with the same config and data"
            )
        for path in ckpt.glob(".*"):  # a checkpoint write the kill interrupted
            path.unlink(missing_ok=True)
        return "resume"
    if resume:
        logger.warning("nothing to resume in %s: starting from scratch", root)
    elif (root / MANIFEST).is_file() and not overwrite:
        raise ArtifactError(
            f"{root} already holds a finished run; choose another output folder or pass --overwrite"
        )
    remove_run(root)
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {"config": cfg.model_dump(mode="json"), "labels": list(labels.names)}
    atomic_write_text(ckpt / RUN_STATE, json.dumps(state, ensure_ascii=False))
    return "fresh"
