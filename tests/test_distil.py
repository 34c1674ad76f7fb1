"""Distillation: a student learns a teacher's probabilities, end to end and refused cleanly.

A tiny nbsvm teacher is trained once on a toy task (words that decide the label among
filler words); the students are tiny linear models. The soft-target loss with rows that
have no hard label, the text augmentation and the temperature are tested on their own.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import fenlei.cli.distilling  # noqa: F401  (registers `fenlei distil`)
from fenlei.augment import MASK, augment_text, text_units
from fenlei.classifier import TextClassifier
from fenlei.cli import main
from fenlei.data import bundled_dataset_path
from fenlei.distil import distil, soften, teacher_probs
from fenlei.errors import ConfigError
from fenlei.loader import open_predictor
from fenlei.serve.app import create_app
from fenlei.serve.schemas import ServeSettings
from fenlei.train import Loss, Targets, class_weights
from tests.conftest import family_overrides

ANSI = re.compile(r"\x1b\[[0-9;]*m")
POS, NEG = ["great", "lovely", "superb", "fine"], ["awful", "boring", "poor", "bad"]
FILLER = ["the", "film", "plot", "was", "a", "and", "cast", "very", "it", "story"]


def _toy_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = list(rng.choice(FILLER, size=6)) + list(rng.choice(POS if i % 2 == 0 else NEG, 2))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Toy train/dev/test tables and a tiny nbsvm teacher trained on them."""
    root = tmp_path_factory.mktemp("toy")
    files = {
        name: _write(root / f"{name}.csv", _toy_rows(n, seed))
        for name, n, seed in (("train", 160, 0), ("dev", 40, 1), ("test", 40, 2))
    }
    preset, overrides = family_overrides("nbsvm.v1")
    train = _toy_rows(160, 0)
    dev = _toy_rows(40, 1)
    TextClassifier(preset, overrides=overrides, run_dir=root / "teacher").fit(
        [t for t, _ in train],
        [y for _, y in train],
        X_dev=[t for t, _ in dev],
        y_dev=[y for _, y in dev],
    )
    return {**files, "teacher": root / "teacher"}


def _student_settings() -> tuple[str, list[str]]:
    preset, overrides = family_overrides("linear.v2")
    return preset, [*overrides, "train.epochs=8"]


@pytest.fixture(scope="module")
def student(toy: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student distilled from the toy teacher with its labels ignored (alpha=1), trained
    on labels that are all flipped: what it knows it learnt from the teacher."""
    root = tmp_path_factory.mktemp("student")
    flipped = [(t, "neg" if y == "pos" else "pos") for t, y in _toy_rows(160, 0)]
    preset, overrides = _student_settings()
    out = root / "student"
    distil(
        [toy["teacher"]],
        data=_write(root / "flipped.csv", flipped),
        dev=toy["dev"],
        test=toy["test"],
        out=out,
        student=preset,
        overrides=overrides,
        alpha=1.0,
        augment=1,
    )
    return out


def test_student_predicts_the_teachers_labels(toy: dict[str, Path], student: Path) -> None:
    texts = [t for t, _ in _toy_rows(60, 7)]
    teacher = [p.labels for p in open_predictor(toy["teacher"]).predict(texts)]
    learnt = [p.labels for p in open_predictor(student).predict(texts)]
    agree = np.mean([a == b for a, b in zip(teacher, learnt, strict=True)])
    assert agree >= 0.9, agree


def test_metrics_record_teacher_and_student(toy: dict[str, Path], student: Path) -> None:
    metrics = json.loads((student / "metrics.json").read_text("utf-8"))
    about = metrics["distillation"]
    assert [t["run"] for t in about["teachers"]] == [str(toy["teacher"])]
    assert about["teachers"][0]["architecture"].startswith("nbsvm")
    assert about["teacher_dev"]["accuracy"] >= 0.9
    assert about["student_dev"] == metrics["dev"]
    assert about["transfer"] == {"labelled": 160, "augmented": 160, "unlabelled": 0}
    assert (about["temperature"], about["alpha"], about["augment"]) == (2.0, 1.0, 1)
    assert not list(student.parent.glob(".student.*"))  # no temporary folder left


def test_student_folder_loads_and_serves(student: Path) -> None:
    clf = TextClassifier.load(student)
    assert clf.predict(["great lovely film"])[0] == "pos"
    app = create_app({"toy": student}, ServeSettings(drift_min_samples=10))
    with TestClient(app) as client:
        r = client.post("/v1/models/toy/predict", json={"texts": ["awful boring plot"]})
    assert r.status_code == 200, r.text


def test_unlabelled_texts_and_two_teachers(
    toy: dict[str, Path], student: Path, tmp_path: Path
) -> None:
    unlabelled = tmp_path / "more.csv"
    _write(unlabelled, _toy_rows(30, 9))
    preset, overrides = _student_settings()
    result = distil(
        [toy["teacher"], student],
        data=toy["train"],
        dev=toy["dev"],
        unlabelled=unlabelled,
        out=tmp_path / "s2",
        student=preset,
        overrides=overrides,
        augment=0,
    )
    assert result.transfer == {"labelled": 160, "augmented": 0, "unlabelled": 30}
    assert len(result.teachers) == 2 and result.student_dev.accuracy >= 0.8


# ---------------------------------------------------------------- bad input, via the CLI


def _user_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = main(args)
    err = ANSI.sub("", capsys.readouterr().err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _args(toy: dict[str, Path], out: Path, *extra: str) -> list[str]:
    preset, overrides = _student_settings()
    sets = [a for o in overrides for a in ("--set", o)]
    return [
        "distil",
        str(toy["teacher"]),
        "--data",
        str(toy["train"]),
        "--dev",
        str(toy["dev"]),
        "--student",
        preset,
        "--out",
        str(out),
        *sets,
        *extra,
    ]


def _nothing_written(folder: Path) -> bool:
    return not (folder / "out").exists() and not list(folder.glob(".out.*"))


def test_cli_distils(
    toy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(toy, tmp_path / "out", "--augment", "0")) == 0
    shown = ANSI.sub("", capsys.readouterr().out)
    assert "student" in shown and "teacher" in shown
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_an_nbsvm_student_learns_the_teachers_labels(
    toy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a solved family learns soft targets too; alpha=1 on flipped labels: all it knows is
    # what the teacher said
    flipped = [(t, "neg" if y == "pos" else "pos") for t, y in _toy_rows(160, 0)]
    preset, overrides = family_overrides("nbsvm.v1")
    args = _args(toy, tmp_path / "out", "--alpha", "1", "--augment", "1")
    args[args.index("--data") + 1] = str(_write(tmp_path / "flipped.csv", flipped))
    sets = [i for i, a in enumerate(args) if a == "--set"]
    args = [*args[: sets[0]], *args[sets[-1] + 2 :]] if sets else args
    args[args.index("--student") + 1] = preset
    args += [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0, capsys.readouterr().err
    texts = [t for t, _ in _toy_rows(60, 7)]
    teacher = [p.labels for p in open_predictor(toy["teacher"]).predict(texts)]
    learnt = [p.labels for p in open_predictor(tmp_path / "out").predict(texts)]
    assert np.mean([a == b for a, b in zip(teacher, learnt, strict=True)]) >= 0.9
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text("utf-8"))
    assert metrics["distillation"]["transfer"]["augmented"] == 160


def test_labels_differing_from_the_teachers_are_refused(
    toy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(toy, tmp_path / "out")
    args[args.index("--data") + 1] = str(bundled_dataset_path("train"))
    args[args.index("--dev") + 1] = str(bundled_dataset_path("dev"))
    line = _user_error(capsys, args)
    assert str(toy["teacher"]) in line and "support_train.csv" in line
    assert _nothing_written(tmp_path)


def test_empty_unlabelled_file_is_refused(
    toy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("text\n", encoding="utf-8")
    line = _user_error(capsys, _args(toy, tmp_path / "out", "--unlabelled", str(empty)))
    assert "empty.csv" in line
    assert _nothing_written(tmp_path)


def test_tampered_teacher_is_refused(
    toy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = shutil.copytree(toy["teacher"], tmp_path / "teacher")
    (copy / "labels.json").write_text('{"labels": ["neg", "pos", "x"]}', encoding="utf-8")
    args = _args(toy, tmp_path / "out")
    args[1] = str(copy)
    line = _user_error(capsys, args)
    assert "labels.json" in line
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        (["--temperature", "0"], "--temperature"),
        (["--alpha", "1.5"], "--alpha"),
        (["--augment", "-1"], "--augment"),
    ],
)
def test_bad_settings_are_refused(
    toy: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    word: str,
) -> None:
    assert word in _user_error(capsys, _args(toy, tmp_path / "out", *extra))
    assert _nothing_written(tmp_path)


def test_existing_out_is_refused(
    toy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    assert "already exists" in _user_error(capsys, _args(toy, tmp_path / "out"))


def test_teachers_with_other_labels_are_refused(toy: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    preset, overrides = family_overrides("nbsvm.v1")
    rows = [(t, "yes" if y == "pos" else "no") for t, y in _toy_rows(40, 3)]
    TextClassifier(preset, overrides=overrides, run_dir=other).fit(
        [t for t, _ in rows], [y for _, y in rows]
    )
    with pytest.raises(ConfigError, match="teachers must share one label set"):
        distil([toy["teacher"], other], data=toy["train"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the parts


def test_loss_mixes_hard_labels_only_where_known() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    soft = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    hard = torch.tensor([0, 1, 0])
    known = torch.tensor([True, False, True])
    t = Targets(width=2, hard=hard, soft=soft, known=known)
    loss = Loss(alpha=0.25, temperature=2.0)
    expected = 0.25 * loss.soft_loss(logits, t) + 0.75 * torch.nn.functional.cross_entropy(
        logits[known], hard[known]
    )
    assert torch.allclose(loss(logits, t), expected)
    none_known = Targets(width=2, hard=hard, soft=soft, known=torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(loss(logits, none_known), loss.soft_loss(logits, none_known))
    batch = t.rows([1, 2])
    assert batch.known is not None and batch.known.tolist() == [False, True]
    # the known rows are both class 0 (the unknown row's filler label 1 is not counted)
    assert torch.allclose(class_weights(t), torch.tensor([0.5, 1.0]))


def test_soften_flattens_and_keeps_rows_probabilities() -> None:
    p = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    assert np.allclose(soften(p, 1.0), p, atol=1e-6)
    warm = soften(p, 3.0)
    assert np.allclose(warm.sum(axis=1), 1.0) and (warm.max(axis=1) < p.max(axis=1)).all()
    assert (warm.argmax(axis=1) == p.argmax(axis=1)).all()
    multi = soften(np.array([[0.9, 0.2]]), 2.0, multi_label=True)
    assert 0.5 < multi[0, 0] < 0.9 and 0.2 < multi[0, 1] < 0.5


class _Fixed:
    """A stand-in teacher that gives every text the same probabilities."""

    def __init__(self, labels: tuple[str, ...], row: list[float]) -> None:
        self.labels, self.row = labels, row

    def predict_proba(self, texts: list[str], *, batch_size: int = 256) -> np.ndarray:
        return np.array([self.row] * len(texts))


def test_teacher_probs_average_in_the_students_label_order() -> None:
    teachers = [_Fixed(("b", "a"), [0.9, 0.1]), _Fixed(("a", "b"), [0.3, 0.7])]
    probs = teacher_probs(teachers, ["x", "y"], ["a", "b"])  # type: ignore[arg-type]
    assert np.allclose(probs, [[0.2, 0.8], [0.2, 0.8]])


def test_fenlei_distil_is_the_function() -> None:
    import fenlei

    assert callable(fenlei.distil) and fenlei.distil.__doc__  # the module, once imported


def test_augment_text_is_word_level_and_character_level_for_chinese() -> None:
    assert text_units("酒店很好 but noisy") == ["酒", "店", "很", "好", "but", "noisy"]
    rng = np.random.default_rng(0)
    copies = [augment_text("这家酒店的服务很好，房间也干净", rng) for _ in range(20)]
    assert all(" " not in c.replace(f" {MASK}", "").replace(f"{MASK} ", "") for c in copies)
    assert len(set(copies)) > 10
    same = augment_text("a b c d", np.random.default_rng(1), delete=0, mask=0, swap=0, shuffle=1)
    assert sorted(same.split()) == ["a", "b", "c", "d"]
    assert augment_text("one", np.random.default_rng(2), delete=0.999, mask=0) == "one"
    first = [augment_text("x y z w", np.random.default_rng(5)) for _ in range(2)]
    assert first[0] == first[1]
