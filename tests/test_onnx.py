"""ONNX export: ONNX Runtime gives PyTorch's probabilities, the run folder stays verifiable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fenlei.artifact import verify_manifest
from fenlei.classifier import TextClassifier
from fenlei.data import Dataset
from fenlei.errors import ArtifactError
from fenlei.onnx import export_onnx
from fenlei.predict import Predictor

from .conftest import FAMILIES, family_overrides

TEXTS = [
    "where is my parcel?",
    "我要退款",
    "x",
    "can I change the delivery address of an order that has already shipped please",
]


def _train(family: str, run_dir: Path, bundled: dict[str, Dataset], tiny: Path) -> Path:
    preset, overrides = family_overrides(family, tiny)
    train = bundled["train"]
    n = 200 if family == "transformer.v1" else len(train.texts)
    TextClassifier(preset, overrides=[*overrides, "train.epochs=1"], run_dir=run_dir).fit(
        train.texts[:n], [labels[0] for labels in train.labels[:n]]
    )
    return run_dir


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_matches_torch(
    family: str, tmp_path: Path, bundled: dict[str, Dataset], tiny_transformer_dir: Path
) -> None:
    run = _train(family, tmp_path / "run", bundled, tiny_transformer_dir)
    path = export_onnx(run)
    assert path == run / "model.onnx"
    manifest = verify_manifest(run)
    assert "model.onnx" in manifest["files"]
    onnx = Predictor.from_run(run)  # auto: model.onnx exists
    torch_ = Predictor.from_run(run, backend="torch")
    assert onnx.backend == "onnx" and torch_.backend == "torch"
    texts = TEXTS + bundled["dev"].texts[:60]
    np.testing.assert_allclose(onnx.predict_proba(texts), torch_.predict_proba(texts), atol=1e-4)
    assert [p.label for p in onnx.predict(texts)] == [p.label for p in torch_.predict(texts)]


def test_onnx_backend_without_file_is_an_artifact_error(
    tmp_path: Path, bundled: dict[str, Dataset], tiny_transformer_dir: Path
) -> None:
    run = _train("linear.v2", tmp_path / "run", bundled, tiny_transformer_dir)
    with pytest.raises(ArtifactError, match="fenlei export"):
        Predictor.from_run(run, backend="onnx")
    assert Predictor.from_run(run).backend == "torch"  # auto without model.onnx


def test_exported_folder_is_self_contained_and_can_be_exported_again(
    tmp_path: Path, bundled: dict[str, Dataset], tiny_transformer_dir: Path
) -> None:
    import shutil

    run = _train("linear.v2", tmp_path / "run", bundled, tiny_transformer_dir)
    export_onnx(run)
    export_onnx(run)  # a second export replaces the first (the manifest still lists the old)
    listed = set(verify_manifest(run)["files"])
    # .fenlei.lock is the --out lock (run_folder.py): fenlei's own, hidden, never loaded
    on_disk = {p.name for p in run.iterdir() if p.is_file()} - {"manifest.json", ".fenlei.lock"}
    assert on_disk == listed  # no stray weight file beside model.onnx
    # copying exactly the listed files (a deployment) gives a working ONNX model
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in [*listed, "manifest.json"]:
        shutil.copy2(run / name, copy / name)
    onnx = Predictor.from_run(copy)
    assert onnx.backend == "onnx"
    expected = Predictor.from_run(run, backend="torch").predict_proba(TEXTS)
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), expected, atol=1e-4)
