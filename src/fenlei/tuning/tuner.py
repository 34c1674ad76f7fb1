"""``tune``: search a family's settings (or several families) and keep the best run folder.

The whole job, in order: check the arguments and validate the search
(:func:`~fenlei.tuning.space.plan_search`); open (or resume) the study in its storage,
refusing one made for other data or another search; queue the presets' own settings as the
first trials of a new study and interrupted trials once more; run the trials (in this
process, or through a ``launcher``); pick the winner (the best dev score, or the most
accurate trial within the latency budget); copy its run folder to ``out`` and write its
settings beside it as TOML that ``fenlei train --config`` reads; with a latency budget, plot
the Pareto front.

Files beside ``out`` (``runs/best``): ``runs/best.optuna.db`` (the default storage),
``runs/best.trials/`` (trial run folders; only those that may still win are kept),
``runs/best.toml`` and, with a latency budget, ``runs/best.pareto.png``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from fenlei import run_folder
from fenlei.artifact import MANIFEST, atomic_write_text
from fenlei.config import apply_overrides
from fenlei.errors import ArtifactError, ConfigError, MissingExtraError
from fenlei.report import REPORT_FILE, TRAINING_LIMITS, build_report
from fenlei.tuning.space import plan_search
from fenlei.tuning.study import (
    TrialSummary,
    count_finished,
    fingerprint,
    keepers,
    open_storage,
    open_study,
    require_optuna,
    retry_interrupted,
    summaries,
    winner,
)
from fenlei.tuning.trials import LATENCY_SAMPLES, Callback, TuneJob, run_trials

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["METRICS", "Launcher", "TuneResult", "side_paths", "tune"]

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_f1")

Launcher = Callable[..., None]
"""Runs trials of a job: called like :func:`~fenlei.tuning.trials.run_trials` (``job`` and
the keyword arguments ``n_trials``, ``total``, ``timeout``, ``pruner``, ``callbacks``);
it may spread them over processes that share ``job.storage``."""


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` produced.

    Attributes:
        run_dir: the winner's run folder (a copy of its trial folder).
        config_path: the winner's settings as TOML (``fenlei train --config``).
        best: the winning trial.
        trials: every trial of the study.
        pareto: with a latency budget, the trials on the (accuracy, latency) front.
        pareto_plot: with a latency budget, the plot of the front.
        study, storage: where the study lives (to resume it or look into it).
        metric: the dev metric maximised.
        budget_ms: the latency budget, if any.
    """

    run_dir: Path
    config_path: Path
    best: TrialSummary
    trials: list[TrialSummary]
    study: str
    storage: str
    metric: str = "accuracy"
    budget_ms: float | None = None
    pareto: list[TrialSummary] = field(default_factory=list)
    pareto_plot: Path | None = None


def side_paths(out: Path) -> dict[str, Path]:
    """The files and folders ``tune`` keeps beside ``out``."""
    return {
        name: out.with_name(out.name + suffix)
        for name, suffix in (
            ("db", ".optuna.db"),
            ("trials", ".trials"),
            ("toml", ".toml"),
            ("pareto", ".pareto.png"),
        )
    }


def _check_args(
    trials: int, timeout: float | None, budget: float | None, metric: str, samples: int
) -> None:
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, not {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--time must be a positive number of seconds, not {timeout}")
    if budget is not None and budget <= 0:
        raise ConfigError(f"--latency-budget must be a positive number of ms, not {budget}")
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if samples < 1:
        raise ConfigError(f"latency_samples must be at least 1, not {samples}")


def _presets(preset: str | None, families: Sequence[str] | str | None) -> list[str]:
    if (preset is None) == (families is None):
        raise ConfigError("give either --preset P or --families a,b,... (one of them)")
    if preset is not None:
        return [preset]
    names = families.split(",") if isinstance(families, str) else list(families or [])
    return [n.strip() for n in names if n.strip()]


def _check_out(out: Path, toml: Path) -> None:
    """Refuse an ``out`` that is not new, empty or the output of an earlier ``tune``."""
    run_folder.check_writable(out)
    if (out / MANIFEST).is_file() and not toml.is_file():
        raise ArtifactError(
            f"{out} already holds a run that fenlei tune did not write; choose another --out"
        )


def _study_name(data: Path, presets: Sequence[str]) -> str:
    stem = re.sub(r"[^\w.-]+", "-", data.name.split(".")[0]) or "data"
    return f"{stem}-{'+'.join(presets)}"


def tune(
    data: str | Path,
    *,
    out: str | Path,
    dev: str | Path | None = None,
    test: str | Path | None = None,
    preset: str | None = None,
    families: Sequence[str] | str | None = None,
    overrides: Sequence[str] = (),
    search: Sequence[str] = (),
    trials: int = 20,
    timeout: float | None = None,
    latency_budget_ms: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    metric: str = "accuracy",
    seed: int = 13,
    latency_samples: int = LATENCY_SAMPLES,
    latency_threads: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    launcher: Launcher | None = None,
    on_trial: Callable[[TrialSummary, TrialSummary | None], None] | None = None,
) -> TuneResult:
    """Search settings with Optuna and keep the best run folder in ``out``.

    Args:
        data: the training table (dev, and test, split from it unless given).
        out: where the winner's run folder goes; the study, trial folders and TOML go beside.
        dev, test: separate dev and test tables.
        preset: tune one family, starting from this preset.
        families: or choose among several (preset names, a list or ``"linear,nbsvm"``).
        overrides: ``[preset:]section.key=value`` settings every trial gets (a searched
            key given here is fixed instead).
        search: ``[preset:]section.key=[choices]`` replacing or adding search-space keys.
        trials: the study's total of complete and pruned trials (a resumed study counts the
            ones it has).
        timeout: seconds to spend: no trial starts after it, nor one that would end after
            it at the pace of the trials before it.
        latency_budget_ms: measure each trial's batch-1 p50 latency; the study then has two
            objectives and the winner is the most accurate trial within the budget.
        storage: an Optuna RDB storage URL (default ``sqlite:///<out>.optuna.db``).
        study: the study's name (default: from the data file and families).
        metric: the dev metric maximised: ``accuracy`` or ``macro_f1``.
        seed: seeds the sampler.
        latency_samples: single-text predictions timed per trial.
        latency_threads: torch threads while each trial is timed (None: one per core, as
            ``fenlei serve`` runs by default); give the server's ``--threads``.
        pruner: an Optuna pruner (default: median pruning on the dev metric per epoch).
        launcher: runs the trials (default: :func:`~fenlei.tuning.trials.run_trials` here).
        on_trial: called after each trial of this process with it and the best so far.

    Returns:
        The winner's run folder and TOML, and every trial.

    Raises:
        ConfigError: bad arguments, an unknown family, a search-space typo, an unreachable
            storage, a study made for other data or another search, or a latency budget
            that no trial meets (naming the fastest trial).
        DataError: a table is unreadable or invalid.
        ArtifactError: ``out`` holds files that ``tune`` did not write.
        MissingExtraError: optuna is not installed.

    Example:
        >>> tune("train.csv", preset="linear", trials=20, out="runs/best")  # doctest: +SKIP
    """
    _check_args(trials, timeout, latency_budget_ms, metric, latency_samples)
    if latency_threads is not None and latency_threads < 1:
        raise ConfigError(f"--latency-threads must be at least 1, not {latency_threads}")
    require_optuna()
    plan = plan_search(_presets(preset, families), overrides, search)
    out = Path(out)
    paths = side_paths(out)
    _check_out(out, paths["toml"])
    out.parent.mkdir(parents=True, exist_ok=True)
    job = TuneJob(
        data=str(Path(data).resolve()),
        dev=_absolute(dev),
        test=_absolute(test),
        plan=plan,
        storage=storage or f"sqlite:///{paths['db'].resolve()}",
        study=study or _study_name(Path(data), [f.preset for f in plan.families]),
        trials_dir=str(paths["trials"].resolve()),
        metric=metric,
        latency=latency_budget_ms is not None,
        budget_ms=latency_budget_ms,
        seed=seed,
        latency_samples=latency_samples,
        latency_threads=latency_threads,
    )
    the_study = _prepare_study(job, [Path(p) for p in (data, dev, test) if p is not None])
    remaining = trials - count_finished(the_study)
    if remaining > 0:
        (launcher or run_trials)(
            job,
            n_trials=remaining,
            total=trials,
            timeout=timeout,
            pruner=pruner,
            callbacks=[_progress(on_trial, latency_budget_ms)] if on_trial else [],
        )
    return _finish(job, the_study, out, paths, latency_budget_ms)


def _absolute(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _prepare_study(job: TuneJob, files: Sequence[Path]) -> optuna.Study:
    """Open (or create) the job's study; queue the presets' own settings in a new one and
    interrupted trials once more.

    Raises:
        ConfigError: the storage cannot be reached, or the study is for other data or search.
        DataError: a data file cannot be read.
    """
    objective = [job.metric, "latency_ms"] if job.latency else [job.metric]
    ident = fingerprint(files, {"plan": job.plan.to_json(), "objective": objective})
    directions = ["maximize", "minimize"] if job.latency else ["maximize"]
    study, new = open_study(open_storage(job.storage), job.study, ident, directions)
    if new:
        for params in job.plan.default_params():
            study.enqueue_trial(params, skip_if_exists=True)
    retry_interrupted(study)
    return study


def _progress(
    on_trial: Callable[[TrialSummary, TrialSummary | None], None], budget: float | None
) -> Callback:
    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        on_trial(TrialSummary.of(trial), winner(summaries(study), budget))

    return report


def _finish(
    job: TuneJob, study: optuna.Study, out: Path, paths: dict[str, Path], budget: float | None
) -> TuneResult:
    trials = summaries(study)
    front = keepers(trials, latency=job.latency)
    plot = None
    if budget is not None and front:
        from fenlei.tuning.plot import write_pareto_plot

        plot = write_pareto_plot(paths["pareto"], trials, front, budget, job.metric)
    best = winner(trials, budget)
    if best is None:
        raise ConfigError(_no_winner(trials, budget, job.study))
    assert best.run_dir is not None and best.preset is not None
    if not Path(best.run_dir, MANIFEST).is_file():
        raise ArtifactError(
            f"trial {best.number}'s run folder {best.run_dir} is not on this machine; train "
            "it with its settings (fenlei tune prints them) or run tune where it ran"
        )
    report = job.plan.family(best.preset).config(best.overrides).eval.report
    _publish(Path(best.run_dir), out, report=report)
    toml = _write_toml(paths["toml"], job, best)
    return TuneResult(
        run_dir=out,
        config_path=toml,
        best=best,
        trials=trials,
        study=job.study,
        storage=job.storage,
        metric=job.metric,
        budget_ms=budget,
        pareto=front if budget is not None else [],
        pareto_plot=plot,
    )


def _no_winner(trials: Sequence[TrialSummary], budget: float | None, study: str) -> str:
    timed = [t for t in trials if t.state == "complete" and t.latency_ms is not None]
    if budget is not None and timed:
        fastest = min(timed, key=lambda t: t.latency_ms or 0.0)
        return (
            f"no trial meets the latency budget of {budget:g} ms: the fastest, trial "
            f"{fastest.number} ({fastest.preset}), takes {fastest.latency_ms:.2f} ms per text; "
            "raise --latency-budget or add faster families"
        )
    skipped = [t for t in trials if t.over_budget and t.probe_ms is not None]
    if budget is not None and skipped:
        fastest = min(skipped, key=lambda t: t.probe_ms or 0.0)
        return (
            f"no trial meets the latency budget of {budget:g} ms: {len(skipped)} were skipped "
            f"untrained, the fastest, trial {fastest.number} ({fastest.preset}), taking "
            f"{fastest.probe_ms:.2f} ms per text; raise --latency-budget or add faster families"
        )
    states = ", ".join(f"{n} {s}" for s, n in _count_states(trials).items())
    return f"no trial of study {study!r} completed ({states or 'none ran'}); see the log above"


def _count_states(trials: Sequence[TrialSummary]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def _publish(source: Path, out: Path, *, report: bool) -> None:
    """Copy the winner's run folder to ``out`` (replacing an earlier tune's winner), with its
    ``report.html`` when its settings ask for one (trials train without); two processes of
    one study that finish together take turns."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(source, staging / "run", ignore=shutil.ignore_patterns(".*", "checkpoint"))
        if report and not (staging / "run" / REPORT_FILE).is_file():
            build_report(staging / "run", staging / "run" / REPORT_FILE, limits=TRAINING_LIMITS)
        with FileLock(str(source.parent / ".publish.lock")):
            if out.exists():  # an earlier tune's winner (checked by _check_out)
                out.rename(staging / "old")
            (staging / "run").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _toml_tree(preset: str, overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The TOML tree of ``preset`` + ``overrides``, and the overrides TOML cannot hold
    (a null value: TOML has none)."""
    tree = apply_overrides({"preset": preset}, list(overrides))
    nulls: list[str] = []

    def drop_nulls(node: dict[str, Any], path: str) -> None:
        for key in list(node):
            if isinstance(node[key], dict):
                drop_nulls(node[key], f"{path}{key}.")
            elif node[key] is None:
                nulls.append(f"{path}{key}=none")
                del node[key]

    drop_nulls(tree, "")
    return tree, nulls


def _write_toml(path: Path, job: TuneJob, best: TrialSummary) -> Path:
    try:
        import tomli_w
    except ImportError as exc:
        raise MissingExtraError("tomli-w", "tune", "fenlei tune") from exc

    assert best.preset is not None
    family = job.plan.family(best.preset)
    tree, nulls = _toml_tree(best.preset, [*family.overrides, *best.overrides])
    score = f"dev {job.metric} {best.value:.4f}" + (
        f", p50 {best.latency_ms:.2f} ms" if best.latency_ms is not None else ""
    )
    lines = [
        f"# fenlei tune: trial {best.number} of study {job.study!r} ({score})",
        f"# retrain: fenlei train {job.data} --config {path}",
    ]
    if nulls:
        logger.warning("TOML has no null: add --set %s when training from %s", nulls, path)
        lines.append(f"# and add: {' '.join('--set ' + n for n in nulls)}")
    atomic_write_text(path, "\n".join(lines) + "\n" + tomli_w.dumps(tree))
    logger.info("trial %d's settings: %s", best.number, json.dumps(list(best.overrides)))
    return path
