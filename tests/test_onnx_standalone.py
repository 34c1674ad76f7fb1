"""Standalone ONNX: ``model.onnx`` carries its labels, tokenizer and settings, and the recipe in
docs/interop.md scores texts with plain onnxruntime + tokenizers, in a process that never
imports fenlei, with the probabilities of fenlei's predictor (head+tail cut included)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fenlei.classifier import TextClassifier
from fenlei.data import Dataset
from fenlei.onnx import METADATA_KEYS, export_onnx
from fenlei.predict import Predictor
from tests.conftest import run_without_fenlei

from .conftest import family_overrides

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"
LONG = " ".join(["my parcel never arrived and nobody answers the phone"] * 12)
TEXTS = ["where is my parcel?", "我要退款", "x", "Refund ME now!!", LONG, "ok " * 40 + "refund"]
CUT = ["encoder.max_length=16", "encoder.truncation=head+tail"]
# the minilm preset's family, and a word-level lstm (fastText/Keras-style whole words)
KINDS = {
    "minilm": ("transformer.v1", CUT),
    "lstm-word": ("lstm.v1", [*CUT, "encoder.kind=word"]),
}

_DRIVER = """
import json, sys
model = OnnxClassifier(sys.argv[1])
texts = json.loads(sys.stdin.read())
probs = model.predict_proba(texts)
print(json.dumps({"probs": probs.tolist(), "labels": model.predict(texts),
                  "fenlei_imported": any(m.split(".")[0] == "fenlei" for m in sys.modules)}))
"""


def recipe() -> str:
    """The python block after the recipe marker in docs/interop.md."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"<!-- recipe: onnx-standalone -->\s*```python\n(.*?)```", text, re.S)
    assert found, "docs/interop.md lost its recipe block"
    return found.group(1)


@pytest.fixture(scope="module", params=sorted(KINDS))
def exported(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    bundled: dict[str, Dataset],
    tiny_transformer_dir: Path,
) -> Path:
    family, extra = KINDS[request.param]
    preset, overrides = family_overrides(family, tiny_transformer_dir)
    run = tmp_path_factory.mktemp(request.param) / "run"
    train = bundled["train"]
    TextClassifier(preset, overrides=[*overrides, *extra, "train.epochs=1"], run_dir=run).fit(
        train.texts[:200], [labels[0] for labels in train.labels[:200]]
    )
    export_onnx(run)
    return run


def test_metadata_and_axis_names(exported: Path) -> None:
    import onnx

    model = onnx.load(str(exported / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert set(METADATA_KEYS) <= set(meta)
    predictor = Predictor.from_run(exported, backend="torch")
    assert json.loads(meta["fenlei.labels"]) == list(predictor.labels)
    assert float(meta["fenlei.temperature"]) == predictor.calibration.temperature
    encoder = json.loads(meta["fenlei.encoder"])
    assert (encoder["max_length"], encoder["truncation"]) == (16, "head+tail")
    assert encoder["pad_id"] == predictor.encoder.pad_id
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert dims["ids"] == dims["mask"] == ["batch", "sequence"]
    assert dims["logits"] == ["batch", len(predictor.labels)]


def test_recipe_without_fenlei_gives_fenlei_probabilities(exported: Path, tmp_path: Path) -> None:
    (tmp_path / "driver.py").write_text(recipe() + _DRIVER, encoding="utf-8")
    result = run_without_fenlei(tmp_path / "driver.py", str(exported / "model.onnx"), TEXTS)
    predictor = Predictor.from_run(exported, backend="torch")
    assert predictor.calibration.temperature != 1.0  # the temperature is part of the check
    assert len(predictor.encoder.encode_ids([LONG])[0]) == 16  # the cut is part of it too
    np.testing.assert_allclose(result["probs"], predictor.predict_proba(TEXTS), atol=1e-5)
    assert result["labels"] == [list(p.labels) for p in predictor.predict(TEXTS)]
