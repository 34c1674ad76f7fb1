"""Training never deletes or mixes with files fenlei did not write, two trainings never write
one folder at once, and a run killed while cleaning up resumes as the complete run it is."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from fenlei import artifact
from fenlei.cli import main
from fenlei.config import load_config
from fenlei.data import bundled_dataset_path, load_table
from fenlei.pipeline import prepare_splits, train_run
from fenlei.predict import Predictor
from fenlei.run_folder import LOCK_FILE, is_run_folder, remove_temporaries

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TINY = [
    "--set",
    "model.buckets=2000",
    "--set",
    "encoder.vocab_size=600",
    "--set",
    "train.epochs=1",
    "--set",
    "eval.plots=false",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def table(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "train.csv"
    shutil.copyfile(bundled_dataset_path("train"), path)
    return path


def train(capsys: pytest.CaptureFixture[str], table: Path, out: Path, *extra: str) -> str:
    """Run ``fenlei train``; return its error line ("" on success)."""
    code = main(["train", str(table), *TINY, "--out", str(out), *extra])
    err = ANSI.sub("", capsys.readouterr().err)
    if code == 0:
        return ""
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_the_data_folder_is_never_written_or_deleted(
    capsys: pytest.CaptureFixture[str], table: Path
) -> None:
    before = table.read_bytes()
    for extra in ((), ("--overwrite",)):
        line = train(capsys, table, table.parent, *extra)
        assert "is not a fenlei run folder and not empty (it holds train.csv)" in line
        assert table.read_bytes() == before
    assert sorted(p.name for p in table.parent.iterdir()) == ["train.csv"]


def test_demo_into_a_folder_of_other_files_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["demo", "--out", "."]) == 2
    assert "is not a fenlei run folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwrite_removes_only_fenleis_own_files(
    capsys: pytest.CaptureFixture[str], table: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert train(capsys, table, run) == ""
    (run / "notes.txt").write_text("about this run", encoding="utf-8")
    assert "already holds a finished run" in train(capsys, table, run)
    assert train(capsys, table, run, "--overwrite") == ""
    assert (run / "notes.txt").read_text(encoding="utf-8") == "about this run"
    assert Predictor.from_run(run).labels


def test_a_second_training_into_a_locked_folder_is_refused(
    capsys: pytest.CaptureFixture[str], table: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with FileLock(str(run / LOCK_FILE), timeout=0):  # another training holds the folder
        line = train(capsys, table, run)
    assert "is being written by another fenlei training" in line
    assert not (run / "manifest.json").exists()
    assert train(capsys, table, run) == ""  # released: training goes ahead


class _Killed(BaseException):
    """Stands in for SIGKILL at one point of save_run."""


def _kill_after_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.rmtree

    def rmtree(path: Path | str, *args: object, **kwargs: object) -> None:
        path = Path(path)
        if path.name == "checkpoint" and (path.parent / "manifest.json").is_file():
            raise _Killed
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(artifact.shutil, "rmtree", rmtree)


def _contents(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_FILE}


def test_resume_after_a_kill_between_manifest_and_cleanup(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    table: Path,
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    cfg = load_config("linear", [TINY[i + 1] for i in range(0, len(TINY), 2)])
    splits = prepare_splits(cfg.data, load_table(table, cfg.data))
    with monkeypatch.context() as patch:
        _kill_after_manifest(patch)
        with pytest.raises(_Killed):
            train_run(cfg, splits, run)
    # what the kill left: the finished run, its checkpoint half removed, a write cut short
    assert (run / "checkpoint" / "run.json").is_file()
    (run / "checkpoint" / "tokenizer.json").unlink()
    (run / ".model.safetensors.k2x9q0ab.tmp").write_bytes(b"half a file")
    saved = _contents(run)

    assert train(capsys, table, run, "--resume") == ""
    assert not (run / "checkpoint").exists()
    assert not list(run.glob(".*.tmp"))
    assert _contents(run) == {k: v for k, v in saved.items() if not k.endswith(".tmp")}  # kept
    assert Predictor.from_run(run).labels

    other = train(capsys, table, run, "--resume", "--set", "train.lr=0.5")
    assert "already holds a finished run with other settings" in other


def test_only_fenleis_temporaries_are_removed(tmp_path: Path) -> None:
    ours = [".config.json.abc123.tmp", ".model.safetensors.x_1.tmp"]
    theirs = [".notes.txt.abc123.tmp", "model.safetensors.tmp", ".model.safetensors"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x", encoding="utf-8")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / ".confusion_matrix.png.q1.tmp").write_text("x", encoding="utf-8")
    removed = remove_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([*ours, ".confusion_matrix.png.q1.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(theirs)


def test_what_counts_as_a_run_folder(tmp_path: Path) -> None:
    assert not is_run_folder(tmp_path)
    (tmp_path / "manifest.json").write_text('{"name": "a browser extension"}', encoding="utf-8")
    assert not is_run_folder(tmp_path)
    (tmp_path / "manifest.json").write_text(
        '{"format_version": 1, "fenlei_version": "0.1.0", "files": {}}', encoding="utf-8"
    )
    assert is_run_folder(tmp_path)


def test_trainings_without_out_each_get_a_folder_and_runs_latest_follows(
    capsys: pytest.CaptureFixture[str], table: Path, tmp_path: Path
) -> None:
    for _ in range(2):  # the second used to fail: runs/latest held a finished run
        assert main(["train", str(table), *TINY, "--no-report"]) == 0
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if not p.is_symlink())
    assert len(runs) == 2 and all(p.name.startswith("linear-") for p in runs)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() in {p.resolve() for p in runs}
    assert is_run_folder(latest)
    assert "runs/latest -> linear-" in ANSI.sub("", capsys.readouterr().out)
    assert main(["train", str(table), *TINY, "--no-report", "--resume"]) == 0  # finished: kept
    assert len([p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]) == 2


def test_resume_without_out_or_latest_is_one_error_line(
    capsys: pytest.CaptureFixture[str], table: Path
) -> None:
    assert main(["train", str(table), *TINY, "--resume"]) == 2
    assert "--resume needs --out RUN" in capsys.readouterr().err
