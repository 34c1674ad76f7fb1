"""int8 quantization: bag tables as int8 rows, other families as an int8 ONNX model.

* ``linear`` and ``nbsvm``: :func:`int8_bag` stores the table as int8 rows with one scale per
  row (:class:`~fenlei.models.compact.Int8EmbeddingBag`) in ``model.safetensors``; the
  PyTorch model dequantizes the rows it gathers, and an ONNX export traced from it reads the
  same int8 tensors.
* ``lstm`` and ``transformer``: :func:`int8_onnx` exports the model to ONNX
  (:func:`fenlei.onnx.export_onnx`, checked against PyTorch) and replaces ``model.onnx`` by
  ONNX Runtime's dynamic int8 quantization of it (int8 weights with a scale per output
  channel, activations quantized per batch at run time). ``backend="auto"`` then serves the
  int8 file; ``model.safetensors`` stays the fp32 model (the PyTorch backend and
  explanations use it).

Example:
    >>> int8_onnx(Path("runs/minilm-int8"))  # doctest: +SKIP
    PosixPath('runs/minilm-int8/model.onnx')
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from fenlei.compress.prune import Bag, bag_table, table_weight
from fenlei.config import ModelConfig
from fenlei.errors import MissingExtraError
from fenlei.models import ModelSpec, build_model
from fenlei.models.compact import CompactBag, Int8EmbeddingBag
from fenlei.onnx import export_onnx

__all__ = ["int8_bag", "int8_onnx"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def int8_bag(model: Bag, cfg: ModelConfig, spec: ModelSpec) -> tuple[Bag, ModelSpec]:
    """The same bag model with its table as int8 rows and a scale per row (layout kept).

    Returns:
        The new model (eval mode) and the spec that rebuilds it.
    """
    new_spec = replace(spec, int8_table=True)
    new = build_model(cfg, new_spec)
    assert isinstance(new, CompactBag)
    table = bag_table(new)
    prefix = next(name for name, module in new.named_modules() if module is table) + "."
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    missing = new.load_state_dict(state, strict=False).missing_keys
    assert all(k.startswith(prefix) for k in missing), missing
    assert isinstance(table, Int8EmbeddingBag)
    table.load_float(table_weight(model))
    return new.eval(), new_spec


def int8_onnx(run_dir: Path) -> Path:
    """Export the run folder's model to ONNX and quantize it to int8 in place (dynamic).

    The manifest then lists the fp32 export; the caller rewrites it.

    Raises:
        MissingExtraError: the ONNX packages are not installed.
        ArtifactError: the run folder is invalid, or the export disagrees with PyTorch.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise MissingExtraError("onnxruntime", "serve", "int8 quantization") from exc
    path = export_onnx(run_dir)
    tmp = path.with_name(f".{path.name}.int8.tmp")
    with warnings.catch_warnings():  # "consider pre-processing": it gains nothing here
        warnings.simplefilter("ignore")
        # one scale per output channel: a per-tensor scale cost a MiniLM 0.8 point on SST-2
        # dev, per channel none, at the same speed and size (docs/compression.md)
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    os.replace(tmp, path)
    logger.info("quantized %s to int8 (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
