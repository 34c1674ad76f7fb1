"""``fenlei tune``: a study on tiny linear models and the bundled data.

Every study here trains tiny ``linear`` models (tests/conftest.py TINY) for one or two
epochs, two or three trials each, so the file stays quick; the bad-input cases fail before
any training.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from fenlei import tune
from fenlei.config import load_config
from fenlei.data import bundled_dataset_path
from fenlei.errors import ConfigError, MissingExtraError
from fenlei.models import check
from fenlei.predict import Predictor
from fenlei.tuning import TrialSummary, TuneJob, run_trials
from fenlei.tuning.study import keepers, winner
from fenlei.tuning.tuner import _toml_tree, side_paths
from tests.conftest import family_overrides
from tests.test_cli_errors import run_cli, user_error

TRAIN = bundled_dataset_path("train")
DEV = bundled_dataset_path("dev")
PRESET, TINY = family_overrides("linear.v2")
EPOCHS = ["train.epochs=[1,2]"]  # the search: the family's own space, epochs made tiny


def _tune(out: Path, **kwargs: Any) -> Any:
    settings: dict[str, Any] = {
        "dev": DEV,
        "preset": PRESET,
        "overrides": TINY,
        "search": EPOCHS,
        "trials": 2,
    }
    return tune(TRAIN, out=out, **{**settings, **kwargs})


def _study(out: Path) -> optuna.Study:
    (name,) = optuna.get_all_study_names(f"sqlite:///{side_paths(out)['db']}")
    return optuna.load_study(study_name=name, storage=f"sqlite:///{side_paths(out)['db']}")


@pytest.fixture(scope="module")
def cli_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two trials through ``fenlei tune``; (out, stdout)."""
    out = tmp_path_factory.mktemp("tune") / "best"
    args = ["tune", str(TRAIN), "--dev", str(DEV), "--preset", PRESET, "--trials", "2"]
    args += [f"--set={s}" for s in TINY] + [f"--search={s}" for s in EPOCHS] + ["-o", str(out)]
    code = main_quietly(args)
    assert code == 0
    return out, _LAST_OUTPUT[0]


_LAST_OUTPUT: list[str] = [""]


def main_quietly(args: list[str]) -> int:
    """Run the CLI in this process, keeping what it printed."""
    import io
    from contextlib import redirect_stdout

    from fenlei import cli

    buffer = io.StringIO()
    console = cli.out  # the commands' console, shared by every cli module
    file, width = console._file, console._width  # rich's own slots (None: follow sys.stdout)
    console._file, console._width = buffer, 200
    try:
        with redirect_stdout(buffer):
            code = cli.main(args)
    finally:
        console._file, console._width = file, width
    _LAST_OUTPUT[0] = buffer.getvalue()
    return code


# ---------------------------------------------------------------- a study end to end


def test_a_study_writes_the_winner_and_its_settings(cli_study: tuple[Path, str]) -> None:
    out, printed = cli_study
    study = _study(out)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 2
    lines = [line for line in printed.splitlines() if line.startswith("trial ")]
    assert len(lines) == 2 and all("best" in line for line in lines)  # one line per trial
    best = max(finished, key=lambda t: t.value or 0.0)
    assert Predictor.from_run(out).predict(["where is my parcel"])  # a complete run folder
    assert json.loads((out / "metrics.json").read_text())["dev"]["accuracy"] == best.value
    for t in finished:  # every trial's settings and scores stay in the study
        assert {"preset", "overrides", "dev_scores", "dev_nll", "train_seconds", "run_dir"} <= set(
            t.user_attrs
        )
    toml = side_paths(out)["toml"]
    assert f"--config {toml}" in toml.read_text()
    trial_cfg = load_config(PRESET, [*TINY, *best.user_attrs["overrides"]])
    again = load_config(toml)
    assert again == trial_cfg  # re-trainable with fenlei train --config
    assert again.model.model_fields_set == trial_cfg.model.model_fields_set
    check(again)


def test_only_the_winner_gets_a_report(cli_study: tuple[Path, str]) -> None:
    out, _ = cli_study
    manifest = json.loads((out / "manifest.json").read_text())
    assert "report.html" in manifest["files"]  # written when published, in the manifest
    assert "<html" in (out / "report.html").read_text("utf-8")[:500].lower()
    Predictor.from_run(out)  # the manifest still verifies
    trials = side_paths(out)["trials"]
    assert not list(trials.glob("trial-*/report.html"))  # no trial wrote one


def test_a_killed_study_resumes_with_its_finished_trials(cli_study: tuple[Path, str]) -> None:
    out, _ = cli_study
    before = {t.number: t.values for t in _study(out).trials}
    result = _tune(out, trials=3)
    after = _study(out).trials
    assert len(after) == 3 and {t.number: t.values for t in after[:2]} == before
    assert [t.state for t in result.trials] == ["complete"] * 3
    assert _tune(out, trials=3).best.number == result.best.number  # nothing left to run


def test_trials_run_in_other_processes_sharing_the_storage(tmp_path: Path) -> None:
    def another_process_then_this_one(job: TuneJob, **kwargs: Any) -> None:
        spec = tmp_path / "job.json"
        spec.write_text(json.dumps(job.to_json()))
        code = (
            "import json, sys; from fenlei.tuning import TuneJob, run_trials; "
            "run_trials(TuneJob.from_json(json.load(open(sys.argv[1]))), n_trials=1, worker=1)"
        )
        subprocess.run([sys.executable, "-c", code, str(spec)], check=True, timeout=300)
        run_trials(job, **kwargs)  # stops at the study's total: one trial more, not two

    result = _tune(tmp_path / "best", launcher=another_process_then_this_one)
    assert [t.state for t in result.trials] == ["complete", "complete"]
    assert (tmp_path / "best" / "model.safetensors").is_file()


class _Interrupt(optuna.pruners.BasePruner):
    """Ctrl-C during the first epoch of the first trial."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        raise KeyboardInterrupt


def test_an_interrupted_trial_runs_again_from_its_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "best"
    with pytest.raises(KeyboardInterrupt):
        _tune(out, search=["train.epochs=[2]"], pruner=_Interrupt())
    (failed,) = _study(out).trials
    assert failed.state == optuna.trial.TrialState.FAIL
    assert (Path(failed.user_attrs["run_dir"]) / "checkpoint").is_dir()
    result = _tune(out, search=["train.epochs=[2]"], trials=1)
    retry = next(t for t in _study(out).trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert retry.user_attrs["retry_of"] == failed.number
    assert retry.params == failed.params
    assert result.best.run_dir == failed.user_attrs["run_dir"]  # continued in its folder


# ---------------------------------------------------------------- latency budget


@pytest.fixture(scope="module")
def latency_study(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("latency") / "best"
    return _tune(out, latency_budget_ms=1e6, latency_samples=5)


def test_a_latency_budget_picks_a_trial_within_it(latency_study: Any) -> None:
    result = latency_study
    assert all(t.latency_ms is not None and t.latency_ms > 0 for t in result.trials)
    assert result.best.latency_ms <= result.budget_ms
    assert result.best.number in {t.number for t in result.pareto}
    assert result.pareto_plot.read_bytes().startswith(b"\x89PNG")
    assert Predictor.from_run(result.run_dir).labels


def test_a_budget_no_trial_meets_names_the_fastest(latency_study: Any) -> None:
    fastest = min(latency_study.trials, key=lambda t: t.latency_ms)
    with pytest.raises(ConfigError, match=rf"fastest, trial {fastest.number} \(linear\)"):
        _tune(latency_study.run_dir, latency_budget_ms=1e-6, latency_samples=5)


def test_each_trial_within_budget_records_its_untrained_probe(latency_study: Any) -> None:
    study = _study(latency_study.run_dir)
    assert all(t.user_attrs["probe_ms"] > 0 for t in study.trials)
    assert not any(t.over_budget for t in latency_study.trials)


def test_a_trial_far_over_budget_is_skipped_untrained_and_probed_again_later(
    tmp_path: Path,
) -> None:
    out = tmp_path / "best"
    with pytest.raises(ConfigError, match=r"2 were skipped untrained, the fastest, trial \d"):
        _tune(out, latency_budget_ms=1e-6, latency_samples=5)
    for trial in _study(out).trials:
        assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["over_budget"]
        assert trial.user_attrs["probe_ms"] > 0
        assert "epochs_run" not in trial.user_attrs  # never trained
        assert not Path(trial.user_attrs["run_dir"]).exists()
    # the same settings, resumed with a budget they meet, are trained (not read as pruned)
    result = _tune(out, latency_budget_ms=1e6, latency_samples=5, trials=4)
    assert result.best.latency_ms is not None and not result.best.over_budget


def test_every_trial_is_timed_with_the_same_threads_whatever_it_trained_with() -> None:
    import torch

    from fenlei.runtime import usable_cores
    from fenlei.tuning.trials import _time_batch1

    seen: list[int] = []

    class Counting:
        def predict_proba(self, texts: list[str]) -> None:
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    _time_batch1(Counting(), ["a"], 3, 1)  # type: ignore[arg-type]
    _time_batch1(Counting(), ["a"], 3, None)  # type: ignore[arg-type]
    assert seen == [1] * 8 + [usable_cores()] * 8  # 5 warm-up calls and 3 timed, each
    assert torch.get_num_threads() == before  # the training's setting is given back


def test_latency_threads_below_one_is_one_error_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--latency-threads must be at least 1"):
        _tune(tmp_path / "best", latency_budget_ms=2.0, latency_threads=0)


def test_a_skipped_trial_says_so_in_its_progress_line() -> None:
    from fenlei.cli.tuning import _trial_line

    skipped = TrialSummary(3, "pruned", "minilm", probe_ms=7.25, over_budget=True)
    line = _trial_line(skipped, None, "accuracy", 2.0)
    assert "trial 3 [minilm] skipped untrained: p50 7.25 ms" in line


# ---------------------------------------------------------------- pruning


def test_a_pruned_trial_stops_cleanly_and_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "best"
    always = optuna.pruners.ThresholdPruner(lower=2.0)  # any accuracy is below it: prune
    with pytest.raises(ConfigError, match=r"no trial .* completed .*1 pruned"):
        _tune(out, trials=1, search=["train.epochs=[3]"], pruner=always)
    (trial,) = _study(out).trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned_at"] == 1 and trial.user_attrs["epochs_run"] == 1
    assert list(trial.intermediate_values) == [1]
    assert not Path(trial.user_attrs["run_dir"]).exists()


# ---------------------------------------------------------------- the winner, in isolation


def _t(n: int, acc: float, ms: float | None = None) -> TrialSummary:
    return TrialSummary(n, "complete", "linear", value=acc, latency_ms=ms, run_dir=f"t{n}")


def test_the_pareto_front_and_the_winner_within_a_budget() -> None:
    trials = [_t(0, 0.80, 1.0), _t(1, 0.85, 3.0), _t(2, 0.84, 3.5), _t(3, 0.90, 9.0)]
    assert [t.number for t in keepers(trials, latency=True)] == [0, 1, 3]
    assert winner(trials, 3.0).number == 1
    assert winner(trials, 0.5) is None
    assert winner([_t(0, 0.8), _t(1, 0.8)], None).number == 0  # a tie: the earlier


def test_a_tie_in_accuracy_goes_to_the_lower_dev_log_loss() -> None:
    def nll(n: int, acc: float, loss: float | None, ms: float | None = None) -> TrialSummary:
        return dataclasses.replace(_t(n, acc, ms), dev_nll=loss)

    assert winner([nll(0, 0.9, 0.30), nll(1, 0.9, 0.20), nll(2, 0.8, 0.01)], None).number == 1
    assert winner([nll(0, 0.9, None), nll(1, 0.9, 0.25)], None).number == 1
    # within a latency budget the faster of two equally accurate trials still wins
    assert winner([nll(0, 0.9, 0.30, 1.0), nll(1, 0.9, 0.20, 2.0)], 3.0).number == 0


def test_a_repeat_of_earlier_settings_is_not_a_second_point_on_the_front() -> None:
    again = TrialSummary(
        2, "complete", "linear", value=0.85, latency_ms=3.0, run_dir="t1", repeat_of=1
    )
    trials = [_t(0, 0.80, 1.0), _t(1, 0.85, 3.0), again]
    assert [t.number for t in keepers(trials, latency=True)] == [0, 1]
    assert [t.number for t in keepers(trials, latency=False)] == [1]
    assert winner(trials, 3.0).number == 1


def test_a_setting_given_with_set_is_not_searched() -> None:
    from fenlei.tuning.space import plan_search

    (family,) = plan_search(["nbsvm"], ["model.nb_c=[0.1,1]"]).families
    assert "model.nb_c" not in family.space and "model.ngram" in family.space
    with pytest.raises(ConfigError, match=r"both set .* and searched"):
        plan_search(["nbsvm"], ["model.ngram=2"], ["model.ngram=[1,2]"])
    scoped = plan_search(["linear", "nbsvm"], ["nbsvm:model.ngram=2"])
    assert "model.ngram" in scoped.family("linear").space
    assert "model.ngram" not in scoped.family("nbsvm").space
    with pytest.raises(ConfigError, match=r"data\.\* settings of nbsvm differ"):
        plan_search(["linear", "nbsvm"], ["nbsvm:data.dev_fraction=0.2"])


def test_toml_leaves_out_nulls_and_says_so() -> None:
    tree, nulls = _toml_tree("linear", ["train.patience=none", "train.lr=0.01"])
    assert tree == {"preset": "linear", "train": {"lr": 0.01}}
    assert nulls == ["train.patience=none"]


# ---------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--search", "train.lrr=[0.1]"], r"search space of linear: train\.lrr=0\.1: .*unknown"),
        (["--search", "model.hidden_size=[8]"], "does not use it"),
        (["--search", "train.lr=0.1"], "JSON list"),
        (["--storage", "sqlite:////no/such/folder/x.db"], "cannot be reached"),
        (["--trials", "0"], "--trials must be at least 1"),
    ],
)
def test_bad_input_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], expected: str
) -> None:
    args = ["tune", str(TRAIN), "--dev", str(DEV), "-p", "linear", "-o", str(tmp_path / "o")]
    line = user_error(capsys, [*args, *extra])
    assert re.search(expected, line), line


def test_an_unknown_family_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["tune", str(TRAIN), "--families", "linear,bert", "-o", str(tmp_path / "o")]
    assert "unknown family 'bert'" in user_error(capsys, args)
    code, _, err = run_cli(capsys, ["tune", str(TRAIN), "-o", str(tmp_path / "o")])
    assert code == 2 and "either --preset" in err


def test_a_study_made_for_other_data_is_refused(tmp_path: Path) -> None:
    def nothing(job: TuneJob, **_: Any) -> None:
        """A launcher that runs no trial: only the study gets created."""

    with pytest.raises(ConfigError, match=r"no trial of study .s. completed \(1 waiting\)"):
        _tune(tmp_path / "a", storage=f"sqlite:///{tmp_path}/s.db", study="s", launcher=nothing)
    other = tmp_path / "other.csv"
    other.write_text(TRAIN.read_text(encoding="utf-8") + "one more row,refund,en\n", "utf-8")
    with pytest.raises(ConfigError, match="created for other data files"):
        tune(
            other,
            out=tmp_path / "b",
            dev=DEV,
            preset=PRESET,
            overrides=TINY,
            storage=f"sqlite:///{tmp_path}/s.db",
            study="s",
            launcher=nothing,
        )


def test_tune_without_optuna_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingExtraError, match=r"fenlei\[tune\]"):
        _tune(tmp_path / "o")


def test_run_trials_is_the_same_job_in_any_process(tmp_path: Path) -> None:
    job = TuneJob(
        data=str(TRAIN), plan=_plan(), storage="sqlite:///x.db", study="s", trials_dir="t"
    )
    assert TuneJob.from_json(json.loads(json.dumps(job.to_json()))) == job
    assert callable(run_trials)


def _plan() -> Any:
    from fenlei.tuning.space import plan_search

    return plan_search([PRESET], TINY, EPOCHS)


def test_fenlei_tune_is_the_function_even_after_its_package_is_imported() -> None:
    import fenlei
    import fenlei.tuning
    from fenlei.tuning.tuner import tune as the_function

    assert fenlei.tune is the_function and fenlei.tuning.tune is the_function
