"""Export a run folder's model to ONNX (``model.onnx``) for ONNX Runtime inference.

:func:`export_onnx` traces the model with ``torch.onnx.export`` (the default exporter, which
needs ``onnxscript``; the legacy TorchScript exporter if that fails), with inputs ``ids`` and
``mask`` of shape (batch, sequence), both dynamic, and output ``logits``. It checks ONNX
Runtime against PyTorch on sample texts, then records ``model.onnx`` in the manifest it
verified (nothing else is hashed again), so the run folder stays verifiable.
:meth:`fenlei.predict.Predictor.from_run` picks the file up (``backend="auto"``).

Example:
    >>> export_onnx("runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/model.onnx')
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from fenlei.artifact import LoadedRun, atomic_write, load_run, update_manifest
from fenlei.errors import ArtifactError, MissingExtraError
from fenlei.predict import ONNX_FILE, OnnxModule, Predictor

__all__ = ["SAMPLE_TEXTS", "export_onnx"]

logger = logging.getLogger(__name__)

SAMPLE_TEXTS = (
    "where is my parcel? it should have arrived last week",
    "我要退款",
    "ok",
    "can I change the delivery address of an order that has already shipped",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints and internal deprecation noise."""
    # onnx_ir and onnxscript's optimizer log WARNINGs about passes they skip (deduplication,
    # constant folding); the export is checked against PyTorch afterwards anyway
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            for category in (DeprecationWarning, FutureWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(model: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> str:
    inputs, outputs = ["ids", "mask"], ["logits"]
    try:
        batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
        dims = {"ids": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}}
        with _quiet():
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamic_shapes=dims,
                dynamo=True,
                # one self-contained file: external data would be named after the temporary
                # file, left out of the manifest and lost when the folder is copied
                external_data=False,
                verbose=False,
                input_names=inputs,
                output_names=outputs,
            )  # type: ignore[arg-type]
        return "dynamo"
    except Exception as exc:  # the new exporter fails on some graphs; the legacy one may not
        logger.warning("default ONNX exporter failed (%s); trying dynamo=False", exc)
    axes = {"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    with _quiet():
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamic_axes=axes,
            dynamo=False,
            opset_version=17,
            input_names=inputs,
            output_names=outputs,
        )  # type: ignore[arg-type]
    return "torchscript"


def _max_difference(run: LoadedRun, path: Path, texts: Sequence[str]) -> float:
    # the run as loaded (and verified) before the export: the manifest does not yet list the
    # new model.onnx, so loading the folder again would refuse it
    torch_predictor = Predictor(run.encoder, run.model, run.labels, multi_label=run.multi_label)
    onnx_predictor = Predictor(
        torch_predictor.encoder,
        OnnxModule(path),
        torch_predictor.labels,
        multi_label=torch_predictor.multi_label,
    )
    a = torch_predictor.predict_proba(texts)
    b = onnx_predictor.predict_proba(texts)
    return float(np.abs(a - b).max())


def export_onnx(
    run_dir: str | Path, *, texts: Sequence[str] = SAMPLE_TEXTS, tolerance: float = 1e-4
) -> Path:
    """Write ``model.onnx`` into a run folder, check it against PyTorch, update the manifest.

    Args:
        run_dir: a finished run folder (its manifest is verified first).
        texts: sample texts for tracing and for the equality check.
        tolerance: largest allowed probability difference between the two backends.

    Returns:
        The path of ``model.onnx``.

    Raises:
        ArtifactError: the run folder is invalid, or the exported model disagrees with PyTorch.
        MissingExtraError: ``onnx``/``onnxscript``/``onnxruntime`` are not installed.
    """
    for package in ("onnx", "onnxruntime"):
        try:
            __import__(package)
        except ImportError as exc:
            raise MissingExtraError(package, "serve", "ONNX export") from exc
    root = Path(run_dir)
    run = load_run(root)
    ids, mask = run.encoder.encode_batch(list(texts))
    path = root / ONNX_FILE
    atomic_write(
        path, lambda tmp: logger.info("exported with %s", _export(run.model, (ids, mask), tmp))
    )
    diff = _max_difference(run, path, texts)
    # only model.onnx changes: the rest stays as load_run verified it, nothing else is vouched for
    if diff > tolerance:
        path.unlink()
        update_manifest(root, run.manifest, ONNX_FILE)
        raise ArtifactError(
            f"{path}: ONNX Runtime differs from PyTorch by {diff:.2e} > {tolerance}"
        )
    update_manifest(root, run.manifest, ONNX_FILE)
    logger.info("wrote %s (max probability difference %.1e)", path, diff)
    return path
