"""fenlei.audit and `fenlei audit`: out-of-fold probabilities through cleanlab find the rows
whose label was flipped; tables that cannot be audited say why."""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import fenlei
from fenlei.audit import COLUMNS, LabelIssues, find_label_issues
from fenlei.cli import main
from fenlei.config import load_config
from fenlei.data import load_table
from fenlei.errors import ConfigError, DataError, MissingExtraError

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TINY = [
    "train.threads=1",
    "encoder.vocab_size=600",
    "model.buckets=2000",
    "model.embedding_dim=16",
    "train.lr=0.05",
    "train.epochs=8",
    "train.patience=null",
    "train.min_steps_per_epoch=null",  # batches of 128: one step per epoch on these 60 rows
]
WORDS = {
    "pos": ["great", "lovely", "superb", "wonderful", "fine", "enjoyable"],
    "neg": ["awful", "terrible", "boring", "dreadful", "poor", "dull"],
    "mid": ["okay", "average", "plain", "ordinary", "so-so", "passable"],
}
FLIPPED = (4, 17, 33, 58, 71)  # indices of rows whose label is replaced


def _noisy_rows(n: int = 90, seed: int = 3) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = sorted(WORDS)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        text = " ".join(rng.sample(WORDS[label], 3)) + f" film number {i}"
        rows.append((text, label))
    for i in FLIPPED:
        text, label = rows[i]
        rows[i] = (text, next(n for n in names if n != label))
    return rows


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def noisy_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_csv(tmp_path_factory.mktemp("audit") / "noisy.csv", _noisy_rows())


@pytest.fixture(scope="module")
def issues(noisy_csv: Path) -> LabelIssues:
    return find_label_issues(load_table(noisy_csv), load_config("linear", TINY), folds=3, seed=0)


def test_flipped_rows_are_ranked_first(issues: LabelIssues, noisy_csv: Path) -> None:
    flipped_rows = {i + 2 for i in FLIPPED}  # file rows: the header is row 1
    top = issues.rows[: len(FLIPPED)]
    assert {issue.row for issue in top} == flipped_rows
    clean = _noisy_rows()
    for issue in top:
        text, given = clean[issue.row - 2]
        assert issue.text == text and issue.given == given
        assert issue.suggested != issue.given
    assert [issue.rank for issue in issues.rows] == list(range(1, len(issues.rows) + 1))
    qualities = [issue.quality for issue in issues.rows]
    assert qualities == sorted(qualities)


def test_every_row_gets_out_of_fold_probabilities(issues: LabelIssues) -> None:
    assert issues.examined == 90 and issues.folds == 3 and issues.preset == "linear"
    assert issues.labels == ("mid", "neg", "pos")
    assert issues.probabilities.shape == (90, 3)
    np.testing.assert_allclose(issues.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert issues.quality.shape == (90,)


def test_same_seed_same_issues(issues: LabelIssues, noisy_csv: Path) -> None:
    again = find_label_issues(load_table(noisy_csv), load_config("linear", TINY), folds=3, seed=0)
    assert again.rows == issues.rows


def test_files_hold_the_documented_columns(issues: LabelIssues, tmp_path: Path) -> None:
    with issues.to_csv(tmp_path / "i.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == len(issues.rows)
    assert int(rows[0]["row"]) == issues.rows[0].row
    assert float(rows[0]["label_quality"]) == pytest.approx(issues.rows[0].quality)
    lines = issues.write(tmp_path / "i.jsonl").read_text("utf-8").splitlines()
    assert json.loads(lines[0]) == issues.rows[0].to_json()
    whole = json.loads(issues.write(tmp_path / "i.json").read_text("utf-8"))
    assert whole["flagged"] == len(whole["rows"]) == len(issues.rows)
    with pytest.raises(ConfigError, match=r"\.csv, \.jsonl or \.json"):
        issues.write(tmp_path / "i.txt")


def test_single_class_table_says_why(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "one.csv", [(f"text {i}", "a") for i in range(10)])
    with pytest.raises(DataError, match=r"one\.csv: only one class"):
        find_label_issues(load_table(path), load_config("linear", TINY))


def test_fewer_rows_per_class_than_folds_says_why(tmp_path: Path) -> None:
    rows = [(f"text {i}", "a") for i in range(10)] + [("x", "b"), ("y", "b")]
    path = _write_csv(tmp_path / "tiny.csv", rows)
    with pytest.raises(DataError, match=r"tiny\.csv: label 'b' has 2 row\(s\), fewer than the 5"):
        find_label_issues(load_table(path), load_config("linear", TINY), folds=5)


def test_one_fold_and_multi_label_are_refused(noisy_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2 folds"):
        find_label_issues(load_table(noisy_csv), load_config("linear", TINY), folds=1)
    cfg = load_config("linear", [*TINY, "data.multi_label=true"])
    with pytest.raises(DataError, match="single-label"):
        find_label_issues(load_table(noisy_csv, cfg.data), cfg)


def test_missing_cleanlab_names_the_extra(noisy_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    with pytest.raises(MissingExtraError, match=r"fenlei\[audit\]"):
        find_label_issues(load_table(noisy_csv), load_config("linear", TINY))


def test_exported_from_the_package() -> None:
    assert fenlei.find_label_issues is find_label_issues


def test_cli_writes_the_ranked_rows(
    noisy_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "issues.csv"
    sets = [arg for s in TINY for arg in ("--set", s)]
    code = main(["audit", str(noisy_csv), "--folds", "3", *sets, "--out", str(target)])
    printed = ANSI.sub("", capsys.readouterr().out)
    assert code == 0
    assert "of 90 rows flagged (3 folds" in printed
    with target.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["row"]) for r in rows[: len(FLIPPED)]} == {i + 2 for i in FLIPPED}


def test_cli_tiny_table_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_csv(tmp_path / "tiny.csv", [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")])
    code = main(["audit", str(path), "--folds", "3"])
    err = ANSI.sub("", capsys.readouterr().err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "tiny.csv" in lines[0]
