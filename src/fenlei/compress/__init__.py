"""``fenlei compress``: a smaller or faster copy of a run folder, measured against its source.

:func:`compress` opens a one-model run folder (verified), makes the new model — int8 and/or
pruned tables for ``linear`` and ``nbsvm`` (:mod:`~fenlei.compress.prune`,
:mod:`~fenlei.compress.quantize`), an int8 ONNX model for ``lstm`` and ``transformer`` —
scores and times both on the same data (:mod:`~fenlei.compress.gate`; default the run's own
dev split) and writes the new run folder only when it loses at most ``max_drop`` accuracy
(or ``force``). The folder is built in a temporary folder next to ``out`` and renamed into
place at the end, so a refusal or a failure leaves nothing behind. The new folder is a
one-model run folder like any other; its ``metrics.json`` holds the side-by-side table
under ``compress``.

Example:
    >>> result = compress("runs/nbsvm", "runs/nbsvm-small", int8=True, prune="rows=100000")
    ... # doctest: +SKIP
    >>> result.compressed.size_mb, result.compressed.accuracy  # doctest: +SKIP
    (1.9, 0.9121)
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_model
from torch import nn

from fenlei.after_training import PREDICTIONS_FILE
from fenlei.artifact import (
    RUN_KIND,
    atomic_write,
    atomic_write_text,
    verify_manifest,
    write_manifest,
)
from fenlei.compress.gate import (
    AccuracyGateError,
    Measured,
    check_gate,
    measure,
    recorded_split,
)
from fenlei.compress.layers import LayerDrop, drop_and_recover
from fenlei.compress.prune import BAG_FAMILIES, Bag, PruneSpec, parse_prune, prune_bag
from fenlei.compress.quantize import int8_bag, int8_onnx
from fenlei.data import Dataset, load_table
from fenlei.errors import ArtifactError, ConfigError
from fenlei.evaluate import score_probabilities
from fenlei.files import staged_folder
from fenlei.loader import run_kind
from fenlei.onnx import export_onnx
from fenlei.predict import ONNX_FILE, Predictor
from fenlei.progress import ProgressReporter

__all__ = ["AccuracyGateError", "CompressResult", "Measured", "PruneSpec", "compress"]

logger = logging.getLogger(__name__)

ONNX_FAMILIES = ("lstm.v1", "transformer.v1", "transformer.v2")
LAYER_FAMILIES = ("transformer.v1", "transformer.v2")


@dataclass(frozen=True)
class CompressResult:
    """What :func:`compress` wrote: the folder and both models as measured on ``data``."""

    run_dir: Path
    source: Measured
    compressed: Measured
    data: str
    seconds: float

    @property
    def drop(self) -> float:
        """Accuracy lost (negative: gained)."""
        return self.source.accuracy - self.compressed.accuracy


def _check_request(
    source: Path, target: Path, *, int8: bool, prune: PruneSpec | None, max_drop: float
) -> None:
    if not 0.0 <= max_drop <= 1.0:
        raise ConfigError(f"--max-drop is an accuracy difference in [0, 1], not {max_drop}")
    if not int8 and prune is None:
        raise ConfigError("nothing to do: pass --int8, --prune rows=N or layers=K, or both")
    if target.exists() or target.is_symlink():
        raise ArtifactError(f"{target} already exists; choose a new --out folder")
    if target.resolve().is_relative_to(source.resolve()):
        raise ConfigError(f"--out {target} is inside the run folder {source}; write it elsewhere")
    kind = run_kind(source)
    if kind != RUN_KIND:
        raise ConfigError(
            f"{source} is an {kind}; compress its members (one model each) and build the "
            "ensemble again"
        )


def _check_family(architecture: str, *, prune: PruneSpec | None) -> None:
    if architecture not in (*BAG_FAMILIES, *ONNX_FAMILIES):
        raise ConfigError(f"compress does not know model.architecture={architecture}")
    if prune is None:
        return
    if prune.kind == "rows" and architecture not in BAG_FAMILIES:
        offer = "--prune layers=K and --int8" if architecture in LAYER_FAMILIES else "--int8 only"
        raise ConfigError(
            f"--prune rows=N applies to {', '.join(BAG_FAMILIES)} (their tables); "
            f"{architecture} offers {offer} (docs/compression.md says why)"
        )
    if prune.kind == "layers" and architecture not in LAYER_FAMILIES:
        offer = "--prune rows=N" if architecture in BAG_FAMILIES else "--int8 only"
        raise ConfigError(
            f"--prune layers=K applies to {', '.join(LAYER_FAMILIES)} (their encoder layers); "
            f"{architecture} offers {offer} (docs/compression.md says why)"
        )


def _write_bag(staging: Path, model: Bag, spec_json: dict[str, Any]) -> None:
    assert isinstance(model, nn.Module)  # a CompactBag is a module too
    atomic_write(staging / "model.safetensors", lambda tmp: save_model(model, str(tmp)))
    text = json.dumps(spec_json, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(staging / "model_config.json", text)


def _make_model(staging: Path, source: Predictor, *, int8: bool, prune: PruneSpec | None) -> None:
    """Replace the staged copy's model by the compressed one, then write its manifest."""
    run = source.run
    assert run is not None
    (staging / PREDICTIONS_FILE).unlink(missing_ok=True)  # the source's probabilities
    if run.config.model.architecture not in BAG_FAMILIES:
        write_manifest(staging)
        int8_onnx(staging)
        write_manifest(staging)
        return
    model = run.model
    assert isinstance(model, Bag)
    if prune is not None:
        new, spec = prune_bag(model, run.config.model, run.spec, prune=prune, int8=int8)
    else:
        new, spec = int8_bag(model, run.config.model, run.spec)
    _write_bag(staging, new, spec.to_dict())
    had_onnx = (staging / ONNX_FILE).is_file()
    (staging / ONNX_FILE).unlink(missing_ok=True)  # the source's model
    write_manifest(staging)
    if had_onnx:  # serve it the way the source was served
        export_onnx(staging)


def _copy_and_compress(
    staging: Path, source_dir: Path, source: Predictor, *, int8: bool, prune: PruneSpec | None
) -> None:
    """Fill ``staging`` with the source's copy and its compressed model."""
    assert source.run is not None
    shutil.copytree(
        source_dir,
        staging,
        ignore=shutil.ignore_patterns(".*", "checkpoint"),
        dirs_exist_ok=True,
    )
    if verify_manifest(staging)["files"] != source.run.manifest["files"]:
        raise ArtifactError(f"{source_dir} changed while it was compressed; run it again")
    _make_model(staging, source, int8=int8, prune=prune)


def _table_or_split(
    source: Path, predictor: Predictor, data: str | Path | Dataset | None, split: str
) -> Dataset:
    """``data`` read with the run's settings, or by default the run's recorded ``split``."""
    cfg = predictor.info().data
    assert cfg is not None  # loaded from a run folder
    if data is None:
        return recorded_split(source, cfg, split)
    return data if isinstance(data, Dataset) else load_table(data, cfg)


def _layer_dropped_copy(
    staging: Path,
    source_dir: Path,
    source: Predictor,
    keep: int,
    *,
    train: Dataset,
    dev: Dataset,
    int8: bool,
    epochs: int,
    progress: ProgressReporter | None,
) -> LayerDrop:
    """Fill ``staging`` with the source cut to ``keep`` encoder layers and recovered by
    distillation (:mod:`~fenlei.compress.layers`), int8 too when asked."""
    with tempfile.TemporaryDirectory(prefix=f"{staging.name}.layers.", dir=staging.parent) as work:
        dropped = drop_and_recover(
            source_dir,
            source,
            keep,
            train=train,
            dev=dev,
            work=Path(work),
            epochs=epochs,
            progress=progress,
        )
        shutil.copytree(
            dropped.run_dir,
            staging,
            ignore=shutil.ignore_patterns(".*", "checkpoint"),
            dirs_exist_ok=True,
        )
    write_manifest(staging)
    if int8:
        int8_onnx(staging)
        write_manifest(staging)
    return dropped


def _metrics(staging: Path, result: dict[str, Any], dev_scores: dict[str, Any] | None) -> None:
    """The source's ``metrics.json`` with the side-by-side table under ``compress`` (and the
    new model's dev scores, when the gate ran on the dev split)."""
    path = staging / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if dev_scores is not None:
        result["source_dev"] = metrics.get("dev")
        metrics["dev"] = dev_scores
    if "test" in metrics:  # the source's; the new model was not scored on test
        result["source_test"] = metrics.pop("test")
    metrics["compress"] = result
    atomic_write_text(path, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")


def compress(
    run: str | Path,
    out: str | Path,
    *,
    int8: bool = False,
    prune: str | PruneSpec | None = None,
    data: str | Path | Dataset | None = None,
    max_drop: float = 0.01,
    force: bool = False,
    threads: int | None = None,
    train: str | Path | Dataset | None = None,
    recover_epochs: int = 1,
    progress: ProgressReporter | None = None,
) -> CompressResult:
    """Write a compressed copy of the run folder ``run`` to ``out``, if it keeps its accuracy.

    Args:
        run: a one-model run folder (verified first).
        out: the new run folder; it must not exist.
        int8: int8 table rows (``linear``, ``nbsvm``) or an int8 ONNX model (``lstm``,
            ``transformer``).
        prune: ``"rows=N"`` or ``"rows=F"`` (a fraction): table rows a bag model keeps;
            ``"layers=K"``: encoder layers a transformer keeps, recovered by distilling the
            source into the cut-down model (:mod:`~fenlei.compress.layers`).
        data: the labelled table (or Dataset) both models are measured on; default the
            run's own dev split (``splits.json``).
        max_drop: the largest accuracy loss accepted, in [0, 1].
        force: write the folder even when the loss is larger.
        threads: ONNX Runtime's intra-op threads while measuring (None: its default);
            PyTorch uses the process's setting (:func:`fenlei.runtime.configure_torch`).
        train: ``layers=K`` only: the labelled table the recovery trains on; default the
            run's own training split (``splits.json``).
        recover_epochs: ``layers=K`` only: epochs of the recovery.
        progress: ``layers=K`` only: receives the recovery's training progress.

    Returns:
        The folder and both models' accuracy, macro-F1, batch-1 p50, texts/s and size.

    Raises:
        ConfigError: nothing asked, ``max_drop`` out of range, pruning a family that has no
            table, an ensemble, or no dev split to measure on.
        ArtifactError: ``run`` fails verification, or ``out`` exists.
        AccuracyGateError: the new model loses more than ``max_drop`` (without ``force``).
        DataError: ``data`` cannot be read.

    Example:
        >>> compress("runs/minilm", "runs/minilm-int8", int8=True)  # doctest: +SKIP
    """
    started = time.perf_counter()
    source_dir, target = Path(run), Path(out)
    spec = parse_prune(prune) if isinstance(prune, str) else prune
    _check_request(source_dir, target, int8=int8, prune=spec, max_drop=max_drop)
    source = Predictor.from_run(source_dir, backend="torch", device="cpu")
    assert source.run is not None
    _check_family(source.run.config.model.architecture, prune=spec)
    if recover_epochs < 1:
        raise ConfigError(f"--recover-epochs must be at least 1, not {recover_epochs}")
    dataset = _table_or_split(source_dir, source, data, "dev")
    layers = spec.layers if spec is not None else None
    train_set = None if layers is None else _table_or_split(source_dir, source, train, "train")
    with staged_folder(target) as staging:
        dropped = None
        if layers is not None:
            assert train_set is not None
            dropped = _layer_dropped_copy(
                staging,
                source_dir,
                source,
                layers,
                train=train_set,
                dev=dataset,
                int8=int8,
                epochs=recover_epochs,
                progress=progress,
            )
        else:
            _copy_and_compress(staging, source_dir, source, int8=int8, prune=spec)
        new = Predictor.from_run(staging, backend="auto", device="cpu", threads=threads)
        before = measure(source, dataset, name="source", run_dir=source_dir)
        after = measure(new, dataset, name="compressed", run_dir=staging)
        check_gate(before, after, max_drop=max_drop, force=force)
        about = {
            "source": str(source_dir),
            "int8": int8,
            "prune": None if spec is None else spec.__dict__,
            "data": dataset.source,
            "max_drop": max_drop,
            "forced": force and before.accuracy - after.accuracy > max_drop,
            "models": [before.to_json(), after.to_json()],
        }
        if dropped is not None:
            about["layers"] = dropped.to_json()
        dev_scores = None
        if data is None:
            probs = new.predict_proba(dataset.texts)
            dev_scores = score_probabilities(probs, dataset, new.labels, new.rule).to_json()
        _metrics(staging, about, dev_scores)
        write_manifest(staging)
    seconds = time.perf_counter() - started
    logger.info("wrote %s (accuracy %.4f -> %.4f)", target, before.accuracy, after.accuracy)
    return CompressResult(target, before, after, dataset.source, seconds)


class _CallableModule(types.ModuleType):
    """``fenlei.compress`` names both this package and :func:`compress`. Once the package is
    imported, Python binds ``fenlei.compress`` to the module, so the module calls the
    function: ``fenlei.compress(run, out, ...)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> CompressResult:
        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
