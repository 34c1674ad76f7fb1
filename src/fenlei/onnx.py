"""Export a run folder's model to ONNX (``model.onnx``) for ONNX Runtime inference.

:func:`export_onnx` traces the model with ``torch.onnx.export`` (the default exporter, which
needs ``onnxscript``; the legacy TorchScript exporter if that fails), with inputs ``ids`` and
``mask`` of shape (batch, sequence), both dynamic, and output ``logits`` (batch, outputs).
It checks ONNX Runtime against PyTorch on sample texts, then records ``model.onnx`` in the
manifest it verified (nothing else is hashed again), so the run folder stays verifiable.
:meth:`fenlei.predict.Predictor.from_run` picks the file up (``backend="auto"``).

The file stands alone: its ``metadata_props`` (:data:`METADATA_KEYS`) carry the label names,
how logits become probabilities (output kind, calibration temperature), the decision rule,
the encoder settings (``max_length``, ``truncation``, padding id, ...) and the whole
``tokenizer.json``, so plain ``onnxruntime`` and ``tokenizers`` score texts as fenlei does
(docs/interop.md has the recipe; tests/test_onnx_standalone.py runs it without fenlei).

Example:
    >>> export_onnx("runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/model.onnx')
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from fenlei._version import __version__
from fenlei.artifact import LoadedRun, atomic_write, load_run, update_manifest
from fenlei.calibrate import read_calibration
from fenlei.errors import ArtifactError, MissingExtraError
from fenlei.predict import ONNX_FILE, OnnxModule, Predictor

__all__ = ["METADATA_KEYS", "SAMPLE_TEXTS", "export_onnx", "onnx_metadata"]

logger = logging.getLogger(__name__)

SAMPLE_TEXTS = (
    "where is my parcel? it should have arrived last week",
    "我要退款",
    "ok",
    "can I change the delivery address of an order that has already shipped",
)


METADATA_KEYS = {
    "fenlei.format": "version of this metadata layout (1)",
    "fenlei.version": "the fenlei version that exported the file",
    "fenlei.labels": "JSON list: the label of each probability column",
    "fenlei.output": "softmax | sigmoid (one per label) | binary_sigmoid (one logit z: the "
    "probabilities are [1 - sigmoid(z), sigmoid(z)])",
    "fenlei.temperature": "the logits are divided by it before softmax or sigmoid",
    "fenlei.decision": "JSON: multi_label, threshold (one or per label), abstain_below",
    "fenlei.encoder": "JSON: the encoder settings (max_length, truncation: head | tail | "
    "head+tail, lowercase, ...) and pad_id",
    "fenlei.tokenizer": "the tokenizer.json content, with truncation and padding off",
}


def onnx_metadata(run: LoadedRun) -> dict[str, str]:
    """The ``metadata_props`` that make a run's ``model.onnx`` usable without fenlei."""
    from tokenizers import Tokenizer

    calibration = read_calibration(run.run_dir, len(run.labels))
    rule = calibration.rule(multi_label=run.multi_label, threshold=run.config.eval.threshold)
    plain = Tokenizer.from_str(run.encoder.tokenizer.to_str())
    plain.no_truncation()  # the recipe sets the cut itself (head+tail is not the tokenizer's)
    plain.no_padding()
    if run.multi_label:
        output = "sigmoid"
    else:
        output = "binary_sigmoid" if run.spec.n_outputs == 1 else "softmax"
    encoder = {**run.config.encoder.model_dump(mode="json"), "pad_id": run.encoder.pad_id}
    decision = {
        "multi_label": rule.multi_label,
        "threshold": list(rule.threshold) if isinstance(rule.threshold, tuple) else rule.threshold,
        "abstain_below": rule.abstain_below,
    }
    return {
        "fenlei.format": "1",
        "fenlei.version": __version__,
        "fenlei.labels": json.dumps(list(run.labels), ensure_ascii=False),
        "fenlei.output": output,
        "fenlei.temperature": repr(float(calibration.temperature)),
        "fenlei.decision": json.dumps(decision),
        "fenlei.encoder": json.dumps(encoder, ensure_ascii=False),
        "fenlei.tokenizer": plain.to_str(),
    }


def _describe(path: Path, metadata: dict[str, str]) -> None:
    """Write the metadata into the exported file (replacing any ``fenlei.*`` entries)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if not p.key.startswith("fenlei.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


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
        batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1)
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
    axes = {
        "ids": {0: "batch", 1: "sequence"},
        "mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }
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


def _refuse_compressed(run: LoadedRun) -> None:
    """An int8 ``model.onnx`` made by ``fenlei compress`` is the folder's model: exporting
    would replace it with an fp32 trace of ``model.safetensors``."""
    made = run.metrics.get("compress")
    if isinstance(made, dict) and made.get("int8") and (run.run_dir / ONNX_FILE).is_file():
        raise ArtifactError(
            f"{run.run_dir / ONNX_FILE} is the int8 model fenlei compress made and is served "
            "already; exporting again would replace it with the fp32 model (export the source "
            f"run, {made.get('source')}, for that)"
        )


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
    _refuse_compressed(run)
    ids, mask = run.encoder.encode_batch(list(texts))
    path = root / ONNX_FILE
    metadata = onnx_metadata(run)

    def write(tmp: Path) -> None:
        logger.info("exported with %s", _export(run.model, (ids, mask), tmp))
        _describe(tmp, metadata)

    atomic_write(path, write)
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
