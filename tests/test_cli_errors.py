"""The ``fenlei`` command turns user mistakes into one ``error:`` line and exit code 2.

Every case here fails before training starts, so the file stays fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fenlei.cli import main

ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMANDS = ["train", "demo", "evaluate", "predict"]


def run_cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    """Run ``fenlei args``; return (exit code, stdout, stderr) with colour codes removed."""
    code = main(args)
    captured = capsys.readouterr()
    return code, ANSI.sub("", captured.out), ANSI.sub("", captured.err)


def user_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run a command that must fail with a FenleiError; return its single error line."""
    code, _, err = run_cli(capsys, args)
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert len(lines[0]) > len("error: ")
    return lines[0]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default run folder is relative (runs/latest); never write into the repository.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    path = tmp_path / "good.csv"
    rows = [f"text {i},{'ab'[i % 2]}" for i in range(20)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- train


def test_train_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    line = user_error(capsys, ["train", str(missing)])
    assert line == f"error: {missing}: file does not exist"
    assert not (tmp_path / "runs").exists()


def test_train_missing_label_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "nolabel.csv"
    path.write_text("text,category\nhello,a\nworld,b\n", encoding="utf-8")
    line = user_error(capsys, ["train", str(path)])
    assert line.startswith(f"error: {path}, row 2, column 'label': has no column 'label'")
    assert "--label-col" in line


def test_train_missing_custom_label_column(
    capsys: pytest.CaptureFixture[str], good_csv: Path
) -> None:
    line = user_error(capsys, ["train", str(good_csv), "--label-col", "intent"])
    assert f"{good_csv}, row 2, column 'intent'" in line


def test_train_missing_text_column(capsys: pytest.CaptureFixture[str], good_csv: Path) -> None:
    line = user_error(capsys, ["train", str(good_csv), "--text-col", "title"])
    assert f"{good_csv}, row 2, column 'title'" in line


def test_train_missing_dev_file(
    capsys: pytest.CaptureFixture[str], good_csv: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "dev.csv"
    line = user_error(capsys, ["train", str(good_csv), "--dev", str(missing)])
    assert line == f"error: {missing}: file does not exist"


def test_train_one_class(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "".join(f"t{i},same\n" for i in range(10)), encoding="utf-8")
    line = user_error(capsys, ["train", str(path)])
    assert line.startswith(f"error: {path}: only one class ('same')")


def test_train_dev_label_not_in_train(
    capsys: pytest.CaptureFixture[str], good_csv: Path, tmp_path: Path
) -> None:
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\nx,a\ny,zzz\n", encoding="utf-8")
    line = user_error(capsys, ["train", str(good_csv), "--dev", str(dev)])
    assert line.startswith(f"error: {dev}, row 3: label 'zzz' never occurs")


def test_train_unknown_setting(capsys: pytest.CaptureFixture[str], good_csv: Path) -> None:
    line = user_error(capsys, ["train", str(good_csv), "--set", "train.epoch=3"])
    assert "train.epoch: unknown setting" in line


def test_train_bad_setting_value(capsys: pytest.CaptureFixture[str], good_csv: Path) -> None:
    line = user_error(capsys, ["train", str(good_csv), "-s", "train.epochs=abc"])
    assert "train.epochs" in line


def test_train_malformed_setting(capsys: pytest.CaptureFixture[str], good_csv: Path) -> None:
    line = user_error(capsys, ["train", str(good_csv), "--set", "trainepochs3"])
    assert "section.key=value" in line


def test_train_unknown_preset(capsys: pytest.CaptureFixture[str], good_csv: Path) -> None:
    line = user_error(capsys, ["train", str(good_csv), "--preset", "nope"])
    assert "'nope'" in line
    assert "seed-lstm" in line


def test_train_missing_config_file(
    capsys: pytest.CaptureFixture[str], good_csv: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "exp.toml"
    line = user_error(capsys, ["train", str(good_csv), "--config", str(missing)])
    assert str(missing) in line
    assert "does not exist" in line


def test_demo_unknown_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert "'nope'" in user_error(capsys, ["demo", "--preset", "nope"])


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--set", "model.freeze_embeddings=true"], ["model.freeze_embeddings=true", "linear.v2"]),
        (["--preset", "lstm", "--set", "model.ngram=3"], ["model.ngram", "lstm.v1"]),
        (["--set", "train.gradient_checkpointing=true"], ["train.gradient_checkpointing"]),
    ],
    ids=["freeze-linear", "unread-setting", "checkpointing-linear"],
)
def test_train_setting_the_family_cannot_use(
    capsys: pytest.CaptureFixture[str],
    good_csv: Path,
    tmp_path: Path,
    args: list[str],
    names: list[str],
) -> None:
    line = user_error(capsys, ["train", str(good_csv), *args])
    for name in names:
        assert name in line
    assert not (tmp_path / "runs").exists()


def test_demo_setting_the_family_cannot_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = user_error(capsys, ["demo", "--set", "model.hidden_size=8"])
    assert "model.hidden_size" in line and "linear.v2" in line
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- predict and evaluate


def test_predict_on_a_folder_that_is_not_a_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    line = user_error(capsys, ["predict", str(folder), "where is my order?"])
    assert str(folder / "manifest.json") in line
    assert "not a fenlei run folder" in line


def test_predict_on_a_missing_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = user_error(capsys, ["predict", str(tmp_path / "nope"), "hello"])
    assert f"{tmp_path / 'nope'} is not a run folder" in line


def test_predict_text_argument_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # what Python makes of the bytes "caf\xe9" (Latin-1) on the command line of a UTF-8 system
    text = os.fsdecode(b"caf\xe9")
    line = user_error(capsys, ["predict", str(tmp_path / "run"), "fine", text])
    assert line.startswith("error: text argument 2 'caf\\udce9' contains U+DCE9 at character 3")
    assert "pass the text as UTF-8" in line


def test_evaluate_on_a_missing_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good_csv: Path
) -> None:
    run = tmp_path / "runs" / "nope"
    line = user_error(capsys, ["evaluate", str(run), str(good_csv)])
    assert line == f"error: {run} is not a run folder (it does not exist)"


# ---------------------------------------------------------------- help


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, ["--help"])
    assert code == 0
    for command in COMMANDS:
        assert command in out
    assert "Traceback" not in err


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = run_cli(capsys, [command, "--help"])
    assert code == 0
    assert "Example" in out
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "demo"])
def test_preset_help_lists_every_preset(capsys: pytest.CaptureFixture[str], command: str) -> None:
    from fenlei.config import PRESETS

    code, out, _ = run_cli(capsys, [command, "--help"])
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())  # rich wraps the help text in a panel
    assert " | ".join(PRESETS) in flat


# ---------------------------------------------------------------- regressions


def test_error_line_keeps_brackets_in_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "reviews[en].csv"
    line = user_error(capsys, ["train", str(missing)])
    assert line == f"error: {missing}: file does not exist"


def test_error_line_with_closing_tag_in_setting(
    capsys: pytest.CaptureFixture[str], good_csv: Path
) -> None:
    line = user_error(capsys, ["train", str(good_csv), "--set", "train.epochs[/x]=3"])
    assert "train.epochs[/x]: unknown setting" in line


def test_demo_linear_settings_for_small_data_can_be_overridden() -> None:
    from fenlei.cli import DEMO_LINEAR_SETTINGS
    from fenlei.config import load_config

    cfg = load_config("linear", [*DEMO_LINEAR_SETTINGS, "train.batch_size=64"])
    assert cfg.model.char_ngram_min == 3
    assert cfg.train.batch_size == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "runs/x"], "give texts to classify, or --file with --out"),
        (["train"], "Missing argument 'data'"),
        (["trainx"], "No such command 'trainx'"),
        (["train", "data.csv", "--epochs", "3"], "No such option: --epochs"),
        (["predict", "runs/r1", "--file", "in.csv"], "--file needs --out"),
        (["predict", "runs/r1", "hi", "--top-k", "0"], "'--top-k'"),
    ],
    ids=["no-texts", "missing-arg", "unknown-command", "unknown-option", "file-no-out", "top-k-0"],
)
def test_usage_mistakes_are_one_error_line_too(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    line = user_error(capsys, args)
    assert message in line
    assert line.endswith("-h`)")  # where to look, instead of click's boxed usage text


def test_version_and_short_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer.completion

    from fenlei import __version__

    code, out, _ = run_cli(capsys, ["--version"])
    assert code == 0 and out.strip() == f"fenlei {__version__}"
    code, out, _ = run_cli(capsys, ["predict", "-h"])
    assert code == 0 and "Usage: fenlei predict" in out
    # --show-completion is a flag: typer finds the shell among the parent processes, and a
    # test run detached from any shell (nohup ... &) has none, so name it here
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    code, out, _ = run_cli(capsys, ["--show-completion"])
    assert code == 0 and "_fenlei_completion" in out
