"""End to end on the bundled dataset: every family through train_run, and the CLI path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fenlei.artifact import load_run
from fenlei.cli import main
from fenlei.config import load_config
from fenlei.data import bundled_dataset_path
from fenlei.pipeline import prepare_splits, train_run
from fenlei.predict import Predictor
from tests.conftest import FAMILIES

RUN_FILES = {
    "config.json",
    "labels.json",
    "tokenizer.json",
    "model_config.json",
    "model.safetensors",
    "metrics.json",
    "metrics.jsonl",
    "manifest.json",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family: str, family_settings, bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    preset, overrides = family_settings(family)
    cfg = load_config(preset, [*overrides, "train.epochs=2", "eval.plots=true"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"], bundled["test"])
    result = train_run(cfg, splits, tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names >= RUN_FILES
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert (tmp_path / "run" / "plots" / "confusion_matrix.png").stat().st_size > 1000
    assert (tmp_path / "run" / "plots" / "training_curves.png").stat().st_size > 1000
    test = result.metrics["test"]
    assert set(test) >= {"accuracy", "macro_f1", "micro_f1", "per_class", "confusion_matrix"}
    assert len(test["per_class"]) == 12
    assert test["n"] == len(bundled["test"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    run = load_run(tmp_path / "run")
    assert run.config == cfg
    assert len(run.labels) == 12


def test_linear_learns_the_bundled_intents(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config("linear", ["train.threads=1", "eval.plots=false", "model.buckets=50000"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"], bundled["test"])
    result = train_run(cfg, splits, tmp_path / "run")
    assert result.metrics["test"]["accuracy"] > 0.6  # 12 classes: chance is 0.08


def test_cli_train_predict_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    tiny = ["--set", "model.buckets=2000", "--set", "encoder.vocab_size=600"]
    code = main(
        [
            "train",
            str(bundled_dataset_path("train")),
            "--dev",
            str(bundled_dataset_path("dev")),
            "--test",
            str(bundled_dataset_path("test")),
            "--set",
            "train.epochs=2",
            *tiny,
            "--out",
            str(run),
        ]
    )
    assert code == 0
    shown = capsys.readouterr().out
    assert "Data" in shown and "Test" in shown and "accuracy" in shown

    assert main(["predict", str(run), "where is my parcel?", "我要退款"]) == 0
    assert "Predictions" in capsys.readouterr().out

    assert main(["predict", str(run), "--json", "hello"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[0])["text"] == "hello"

    out_csv = tmp_path / "out.csv"
    assert (
        main(["predict", str(run), "--file", str(bundled_dataset_path("test")), "-o", str(out_csv)])
        == 0
    )
    with out_csv.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 215
    labels = json.loads((run / "labels.json").read_text())["labels"]
    assert {f"p_{lab}" for lab in labels} <= set(rows[0])
    assert rows[0]["predicted_label"] in labels
    assert abs(sum(float(rows[0][f"p_{lab}"]) for lab in labels) - 1) < 1e-3

    metrics_json = tmp_path / "m.json"
    code = main(
        [
            "evaluate",
            str(run),
            str(bundled_dataset_path("test")),
            "--json",
            str(metrics_json),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    assert code == 0
    assert json.loads(metrics_json.read_text())["n"] == 215
    assert (tmp_path / "plots" / "confusion_matrix.png").is_file()

    # a finished run is never overwritten by accident
    again = ["train", str(bundled_dataset_path("train")), "--out", str(run), *tiny]
    capsys.readouterr()
    assert main(again) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_single_file_is_split_and_summarised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            str(bundled_dataset_path("train")),
            "--set",
            "train.epochs=1",
            "--set",
            "model.buckets=2000",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "[train split]" in out and "[dev split]" in out and "[test split]" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0


def test_multi_label_jsonl(tmp_path: Path) -> None:
    rows = []
    for i in range(60):
        labels = ["billing"] if i % 3 == 0 else ["refund"] if i % 3 == 1 else ["billing", "refund"]
        text = {
            0: "charged twice on my card",
            1: "send my money back",
            2: "double charge refund it",
        }[i % 3]
        rows.append({"text": f"{text} #{i}", "label": labels})
    path = tmp_path / "ml.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(path),
            "--multi-label",
            "--set",
            "train.epochs=30",
            "--set",
            "train.lr=0.05",
            "--set",
            "model.buckets=500",
            "--set",
            "encoder.min_frequency=1",
            "--set",
            "eval.plots=false",
            "--out",
            str(run),
        ]
    )
    assert code == 0
    predictor = Predictor.from_run(run)
    assert predictor.multi_label
    pred = predictor.predict(["double charge refund it #7"])[0]
    assert set(pred.labels) == {"billing", "refund"}


def test_rare_label_cannot_be_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["text,label"] + [f"row {i},common" for i in range(20)] + ["lonely row,rare"]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'rare' occurs in only 1 row(s) (row 22)" in err and str(path) in err
