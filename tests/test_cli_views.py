"""What fenlei train prints: splits named, optimistic dev scores said, many labels kept short."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from fenlei.cli import _views
from fenlei.cli._views import _per_class_table


def _per_class(n: int) -> dict[str, object]:
    return {
        "per_class": {
            f"label{i:03d}": {"precision": 0.5, "recall": 0.5, "f1": i / n, "support": 3}
            for i in range(n)
        }
    }


def _render(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_many_labels_show_the_weakest_and_say_so() -> None:
    table = _per_class_table(_per_class(77), "test")
    assert table.row_count == 25
    text = _render(table)
    assert "Per class (test)" in text and "label000" in text and "label076" not in text
    assert "lowest F1 of 77" in text
    assert _per_class_table(_per_class(5), "dev").row_count == 5


def test_the_data_table_names_each_split_and_sums_up_many_labels(tmp_path: Path) -> None:
    from fenlei.data import Dataset

    def dataset(name: str, n_labels: int) -> Dataset:
        texts = [f"text {i}" for i in range(3 * n_labels)]
        labels = [f"label{i % n_labels:02d}" for i in range(3 * n_labels)]
        return Dataset.from_lists(texts, labels, source=str(tmp_path / "very" / "long" / name))

    def splits(train: Dataset, dev: Dataset) -> SimpleNamespace:
        return SimpleNamespace(train=train, dev=dev, test=None)

    many = _render(_views._summary_table(splits(dataset("a.csv", 40), dataset("b.csv", 40))))
    assert "40 labels: 3 (label00) to 3 (label00) rows each" in many
    assert "label39" not in many  # not one line per label
    rows = [line for line in many.splitlines() if "a.csv" in line or "b.csv" in line]
    cells = [[c.strip() for c in row.split("│")[1:3]] for row in rows]
    assert cells == [["train", "a.csv"], ["dev", "b.csv"]]
    few = _render(_views._summary_table(splits(dataset("c.csv", 3), dataset("d.csv", 3))))
    assert "label00 3, label01 3, label02 3" in few


def test_without_a_test_split_the_dev_scores_are_called_optimistic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scores = SimpleNamespace(to_json=lambda: {"accuracy": 0.9, "macro_f1": 0.8, **_per_class(3)})
    metrics = SimpleNamespace(
        best_epoch=1, epochs_run=1, train_seconds=1.0, calibration=None, decision=None,
        dev=scores, test=None,
    )  # fmt: skip
    result = SimpleNamespace(metrics=metrics, history=[], run_dir="runs/x")
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(_views.out, "_file", out)  # rich's own slot: None means sys.stdout
    monkeypatch.setattr(_views.err, "_file", err)
    _views._show_training_result(result)
    assert "Per class (dev)" in out.getvalue() and "chose the epoch" in out.getvalue()
    assert "optimistic" in err.getvalue()


def test_the_demo_says_which_settings_it_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fenlei.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--set", "train.epochs=1"]) == 0
    shown = capsys.readouterr().out
    said = "demo: preset linear with --set model.char_ngram_min=3 --set train.batch_size=32"
    assert said in shown
