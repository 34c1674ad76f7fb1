"""Hugging Face format: a ``transformer.v2`` run exports to a folder that ``transformers``
loads without fenlei (pipeline, AutoModelForSequenceClassification, AutoTokenizer), with the
labels set and fenlei's calibrated probabilities; other runs are refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fenlei.classifier import TextClassifier
from fenlei.data import Dataset
from fenlei.errors import ConfigError
from fenlei.hf import export_hf
from fenlei.predict import Predictor
from tests.conftest import run_without_fenlei

from .conftest import family_overrides
from .test_cli_errors import run_cli, user_error

TEXTS = ["where is my parcel?", "我要退款", "x", "can I change the delivery address please"]

_LOADER = """
import json, sys
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
folder, texts = sys.argv[1], json.loads(sys.stdin.read())
model = AutoModelForSequenceClassification.from_pretrained(folder)
AutoTokenizer.from_pretrained(folder)
scored = pipeline("text-classification", model=folder)(texts, top_k=None)
labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
probs = [[{s["label"]: s["score"] for s in row}[label] for label in labels] for row in scored]
print(json.dumps({"labels": labels, "label2id": model.config.label2id, "probs": probs,
                  "fenlei_imported": any(m.split(".")[0] == "fenlei" for m in sys.modules)}))
"""


def _train(
    family: str, run: Path, bundled: dict[str, Dataset], tiny: Path, *extra: str, labels: int = 0
) -> Path:
    preset, overrides = family_overrides(family, tiny)
    train = bundled["train"]
    rows = [(t, y[0]) for t, y in zip(train.texts, train.labels, strict=True)]
    if labels:
        keep = sorted({y for _, y in rows})[:labels]
        rows = [(t, y) for t, y in rows if y in keep]
    rows = rows[:200]
    TextClassifier(preset, overrides=[*overrides, *extra, "train.epochs=1"], run_dir=run).fit(
        [t for t, _ in rows], [y for _, y in rows]
    )
    return run


@pytest.fixture(scope="module")
def v2_run(
    tmp_path_factory: pytest.TempPathFactory,
    bundled: dict[str, Dataset],
    tiny_transformer_dir: Path,
) -> Path:
    return _train(
        "transformer.v2", tmp_path_factory.mktemp("v2") / "run", bundled, tiny_transformer_dir
    )


def test_transformers_loads_the_folder_without_fenlei(v2_run: Path, tmp_path: Path) -> None:
    folder = export_hf(v2_run, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    mask = os.umask(0)
    os.umask(mask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask  # the umask, not mkdtemp's 0700
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o666 & ~mask}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging
    (tmp_path / "load.py").write_text(_LOADER, encoding="utf-8")
    result = run_without_fenlei(tmp_path / "load.py", str(folder), TEXTS)
    predictor = Predictor.from_run(v2_run)
    assert predictor.calibration.temperature != 1.0  # folded into the head, exactly
    assert result["labels"] == list(predictor.labels)
    assert result["label2id"] == {label: i for i, label in enumerate(predictor.labels)}
    assert np.abs(np.array(result["probs"]) - predictor.predict_proba(TEXTS)).max() <= 1e-4
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text-classification" in card and predictor.labels[0] in card
    assert f"Temperature {predictor.calibration.temperature:.4f}" in card


def test_one_logit_head_becomes_two_rows(
    tmp_path: Path, bundled: dict[str, Dataset], tiny_transformer_dir: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = _train(
        "transformer.v2",
        tmp_path / "run",
        bundled,
        tiny_transformer_dir,
        "model.single_logit=true",
        labels=2,
    )
    folder = export_hf(run, tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    batch = AutoTokenizer.from_pretrained(str(folder))(TEXTS, padding=True, return_tensors="pt")
    probs = model(**batch).logits.softmax(-1).detach().numpy()
    expected = Predictor.from_run(run).predict_proba(TEXTS)
    assert expected.shape == probs.shape == (len(TEXTS), 2)
    assert np.abs(probs - expected).max() <= 1e-4


def test_other_runs_and_used_folders_are_refused(
    v2_run: Path, tmp_path: Path, bundled: dict[str, Dataset], tiny_transformer_dir: Path
) -> None:
    linear = _train("linear.v2", tmp_path / "linear", bundled, tiny_transformer_dir)
    with pytest.raises(ConfigError, match=r"only transformer\.v2 runs"):
        export_hf(linear, tmp_path / "out")
    v1 = _train("transformer.v1", tmp_path / "v1", bundled, tiny_transformer_dir)
    with pytest.raises(ConfigError, match=r"model\.architecture=transformer\.v2"):
        export_hf(v1, tmp_path / "out")
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_hf(v2_run, used)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_export_format_hf(
    v2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys, ["export", str(v2_run), "--format", "hf", "--out", str(tmp_path / "hf")]
    )
    assert code == 0 and "transformers loads it" in " ".join(out.split())
    assert (tmp_path / "hf" / "config.json").is_file()
    line = user_error(
        capsys, ["export", str(v2_run), "--format", "hf", "--out", str(tmp_path / "hf")]
    )
    assert "not an empty folder" in line
