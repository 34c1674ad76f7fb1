"""Running trials: what any process (this one, another shell, a Ray worker) does.

A :class:`TuneJob` is plain data: where the data and the study are, what is searched and
how trials are scored. :func:`run_trials` is the one entry a worker needs: it loads the
study from the shared storage, makes the splits once, and runs trials until its share, the
study's total or the time is used up. :func:`fenlei.tuning.tune` calls it in this process
by default; a launcher that runs it in several processes (a Ray cluster) plugs in through
its ``launcher`` argument, and the study's storage is what they share.

Each trial trains through :func:`fenlei.pipeline.train_run` into its own folder; the trials
of a process share an :class:`~fenlei.pipeline.EncodingCache`, so a trial whose encoder
settings match an earlier one's reuses its fitted vocabulary and encoded texts. The dev
metric of each epoch (or each C of a solved family) is reported to Optuna through the
training's ``on_epoch`` hook; a pruned trial stops cleanly there
(:class:`~fenlei.train.StopTraining`), is recorded as pruned, and its folder removed.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fenlei.config import RunConfig
from fenlei.data import load_table
from fenlei.errors import ConfigError
from fenlei.pipeline import (
    EncodingCache,
    Splits,
    TrainResult,
    prepare_splits,
    train_run,
    untrained_predictor,
)
from fenlei.predict import Predictor
from fenlei.records import EpochRecord
from fenlei.runtime import configure_torch, training_threads, usable_cores
from fenlei.train import StopTraining
from fenlei.tuning.space import SearchPlan
from fenlei.tuning.study import open_storage, require_optuna, tidy_folders

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "LATENCY_SAMPLES",
    "PROBE_MARGIN",
    "Callback",
    "TuneJob",
    "batch1_latency_ms",
    "run_trials",
    "without_report",
]

logger = logging.getLogger(__name__)

LATENCY_SAMPLES = 100  # single-text predictions timed per trial (after a few warm-up calls)
_WARMUP = 5
# A trial whose untrained model is this much slower than the budget is not trained. On
# SST-2 a trained model's p50 was 0.59-1.47x its probe's (a bag model's table is built from
# a sample; timings on a shared machine move), so only a clear miss is skipped.
PROBE_MARGIN = 1.5

Callback = Callable[["optuna.Study", "FrozenTrial"], None]


@dataclass(frozen=True)
class TuneJob:
    """Everything a process needs to run trials of one study (plain, picklable data).

    Attributes:
        data, dev, test: the tables (dev and test: None to split them from ``data``).
        plan: the families and their search spaces.
        storage: the Optuna storage URL every process shares.
        study: the study's name.
        trials_dir: where each trial's run folder goes (``trial-0007``).
        metric: the dev metric maximised (``accuracy`` or ``macro_f1``).
        latency: also minimise batch-1 p50 latency (a two-objective study, not pruned).
        budget_ms: the latency budget: a trial whose untrained model already takes more than
            :data:`PROBE_MARGIN` times it per text is skipped (recorded as pruned) untrained.
        seed: seeds the sampler (mixed with the worker number and the trials done).
        latency_samples: single-text predictions timed per trial.
        latency_threads: torch threads while a trial is timed (None: one per core, as
            ``fenlei serve`` runs by default), the same for every trial whatever threads
            its training used.
    """

    data: str
    plan: SearchPlan
    storage: str
    study: str
    trials_dir: str
    dev: str | None = None
    test: str | None = None
    metric: str = "accuracy"
    latency: bool = False
    budget_ms: float | None = None
    seed: int = 13
    latency_samples: int = LATENCY_SAMPLES
    latency_threads: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, for a worker in another process (``TuneJob.from_json``)."""
        out = asdict(self)
        out["plan"] = self.plan.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TuneJob:
        """Read :meth:`to_json`'s form."""
        return cls(**{**data, "plan": SearchPlan.from_json(data["plan"])})

    def splits(self) -> Splits:
        """Read the tables and make the splits every trial shares.

        Raises:
            DataError: a table is unreadable or invalid.
            ConfigError: the families' ``data.*`` settings differ.
        """
        cfg = self.plan.data_config()
        return prepare_splits(
            cfg,
            load_table(self.data, cfg),
            load_table(self.dev, cfg) if self.dev else None,
            load_table(self.test, cfg) if self.test else None,
        )


def batch1_latency_ms(
    run_dir: str | Path,
    texts: Sequence[str],
    *,
    samples: int = LATENCY_SAMPLES,
    threads: int | None = None,
) -> float:
    """Median wall time (ms) of predicting one text at a time with the run folder's model,
    loaded as ``fenlei serve`` would load it (backend and device ``auto``) on this machine,
    with ``threads`` torch threads (None: one per core, ``fenlei serve``'s default).

    Example:
        >>> batch1_latency_ms("runs/x", ["great film", "dull"], samples=50)  # doctest: +SKIP
        0.41
    """
    predictor = Predictor.from_run(run_dir, threads=threads)
    return _time_batch1(predictor, texts, samples, threads)


def _time_batch1(
    predictor: Predictor, texts: Sequence[str], samples: int, threads: int | None
) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads or usable_cores())  # every trial timed alike
    try:
        times = []
        for i in range(_WARMUP + samples):
            text = [texts[i % len(texts)]]
            start = time.perf_counter()
            predictor.predict_proba(text)
            if i >= _WARMUP:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return float(np.median(times) * 1000.0)


@dataclass
class _Report:
    """The ``on_epoch`` hook of one trial: report the best dev score so far, stop if pruned."""

    trial: optuna.Trial
    metric: str
    prune: bool
    best: float = float("-inf")
    pruned_at: int | None = None

    def __call__(self, record: EpochRecord) -> None:
        self.best = max(self.best, record.dev[self.metric])
        if not self.prune:  # Optuna prunes single-objective studies only
            return
        self.trial.report(self.best, record.epoch)
        if self.trial.should_prune():
            self.pruned_at = record.epoch
            raise StopTraining(f"pruned by Optuna after epoch {record.epoch}")


def _record(trial: optuna.Trial, result: TrainResult, metric: str) -> float:
    metrics = result.metrics
    value = float(getattr(metrics.dev, metric))
    if metrics.test is not None:
        trial.set_user_attr("test", float(getattr(metrics.test, metric)))
    trial.set_user_attr(
        "dev_scores", {"accuracy": metrics.dev.accuracy, "macro_f1": metrics.dev.macro_f1}
    )
    if metrics.calibration is not None:  # breaks ties in accuracy (study.winner)
        trial.set_user_attr("dev_nll", metrics.calibration.nll_after)
    trial.set_user_attr("train_seconds", metrics.train_seconds)
    trial.set_user_attr("epochs_run", metrics.epochs_run)
    trial.set_user_attr("best_epoch", metrics.best_epoch)
    best = next((r for r in result.history if r.epoch == metrics.best_epoch), None)
    if best is not None and best.param:
        trial.set_user_attr("best_param", dict(best.param))
    return value


@dataclass
class _Objective:
    """Train one trial; return its dev score (and its latency)."""

    job: TuneJob
    splits: Splits
    dev_texts: list[str] = field(default_factory=list)
    cache: EncodingCache | None = None  # encoders and encodings shared by the trials

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        family, overrides = self.job.plan.suggest(trial)
        trial.set_user_attr("preset", family.preset)
        trial.set_user_attr("overrides", overrides)
        done = _same_params(trial)
        if done is not None:
            return _repeat(trial, done)
        cfg = without_report(family.config(overrides))
        retry_of = trial.user_attrs.get("retry_of")
        folder = (
            Path(self.job.trials_dir)
            / f"trial-{retry_of if retry_of is not None else trial.number:04d}"
        )
        trial.set_user_attr("run_dir", str(folder))
        return self._train(trial, cfg, folder)

    def _train(
        self, trial: optuna.Trial, cfg: RunConfig, folder: Path
    ) -> float | tuple[float, float]:
        optuna = require_optuna()
        configure_torch(threads=training_threads(cfg.train.threads).count)  # an entry point
        if self.job.budget_ms is not None and not folder.is_dir():
            self._probe(trial, cfg)
        report = _Report(trial, self.job.metric, prune=not self.job.latency)
        result = train_run(
            cfg,
            self.splits,
            folder,
            resume=folder.is_dir(),
            overwrite=True,
            on_epoch=report,
            cache=self.cache,
        )
        value = _record(trial, result, self.job.metric)
        if report.pruned_at is not None:
            trial.set_user_attr("pruned_at", report.pruned_at)
            shutil.rmtree(folder, ignore_errors=True)
            raise optuna.TrialPruned(f"pruned after epoch {report.pruned_at}")
        if not self.job.latency:
            return value
        latency = batch1_latency_ms(
            folder,
            self.dev_texts,
            samples=self.job.latency_samples,
            threads=self.job.latency_threads,
        )
        return value, latency

    def _probe(self, trial: optuna.Trial, cfg: RunConfig) -> None:
        """Time the untrained model; skip the trial (pruned) when it clearly cannot meet
        the budget, so no training is spent on it."""
        optuna = require_optuna()
        assert self.job.budget_ms is not None
        predictor = untrained_predictor(cfg, self.splits, cache=self.cache)

        def timed() -> float:
            return _time_batch1(
                predictor, self.dev_texts, self.job.latency_samples, self.job.latency_threads
            )

        limit = self.job.budget_ms * PROBE_MARGIN
        probe = timed()
        if probe > limit:  # timed again before skipping: another process may have held a core
            probe = min(probe, timed())
        trial.set_user_attr("probe_ms", probe)
        if probe > limit:
            trial.set_user_attr("over_budget", True)
            raise optuna.TrialPruned(
                f"untrained, it takes {probe:.2f} ms per text, over {PROBE_MARGIN:g} x the "
                f"budget of {self.job.budget_ms:g} ms: not trained"
            )


def without_report(cfg: RunConfig) -> RunConfig:
    """A trial's config: no ``report.html`` (a few seconds a trial that only the winner
    keeps; :func:`fenlei.tuning.tune` writes the winner's when it publishes it)."""
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"report": False})})


def _same_params(trial: optuna.Trial) -> FrozenTrial | None:
    """A finished trial that drew exactly these settings (TPE may draw a set again); one
    skipped for the latency budget is probed again (the budget may have changed)."""
    optuna = require_optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for done in trial.study.get_trials(deepcopy=False, states=states):
        if done.params == trial.params and not done.user_attrs.get("over_budget"):
            return done
    return None


def _repeat(trial: optuna.Trial, done: FrozenTrial) -> float | tuple[float, float]:
    """Record a repeat of ``done``'s settings with its results instead of training again."""
    optuna = require_optuna()
    for key, value in done.user_attrs.items():
        if key not in ("retry_of",):
            trial.set_user_attr(key, value)
    trial.set_user_attr("repeat_of", done.number)
    if done.state == optuna.trial.TrialState.PRUNED:
        raise optuna.TrialPruned(f"same settings as trial {done.number}, which was pruned")
    values = done.values
    return (values[0], values[1]) if len(values) > 1 else values[0]


def _sampler_seed(job: TuneJob, study: optuna.Study, worker: int) -> int:
    # A resumed study or a second worker must not replay the first one's random draws.
    return job.seed + 7919 * worker + len(study.get_trials(deepcopy=False))


def run_trials(
    job: TuneJob,
    *,
    n_trials: int | None,
    total: int | None = None,
    timeout: float | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    callbacks: Sequence[Callback] = (),
    worker: int = 0,
) -> None:
    """Run trials of ``job``'s study in this process (the entry of any worker).

    Args:
        job: the study and what it searches.
        n_trials: trials this process runs at most (None: until ``total`` or ``timeout``).
        total: stop when the study holds this many complete or pruned trials (counted over
            every process sharing the storage).
        timeout: seconds for this call: no trial starts after it, nor one that would end
            after it at the pace of the trials before it.
        pruner: default Optuna's ``MedianPruner`` (5 trials first, not before epoch 2).
        callbacks: called in this process after each trial with the study and the trial.
        worker: this worker's number (0, 1, ...): seeds its sampler apart from the others'.

    Raises:
        DataError: a table is unreadable or invalid.
        ConfigError: the storage cannot be reached, or the study does not exist.
    """
    op = require_optuna()
    storage = open_storage(job.storage)
    study = op.load_study(study_name=job.study, storage=storage)
    study.sampler = op.samplers.TPESampler(seed=_sampler_seed(job, study, worker))
    study.pruner = pruner or op.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    splits = job.splits()
    cache = EncodingCache(splits, keep=len(job.plan.families))
    objective = _Objective(job, splits, list(splits.dev.texts), cache)
    root = Path(job.trials_dir)
    root.mkdir(parents=True, exist_ok=True)
    states = (op.trial.TrialState.COMPLETE, op.trial.TrialState.PRUNED)
    stop = [op.study.MaxTrialsCallback(total, states=states)] if total else []

    def tidy(study: optuna.Study, trial: FrozenTrial) -> None:
        tidy_folders(study, root, latency=job.latency)

    deadline = [_Deadline(timeout)] if timeout else []
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=timeout,
        catch=(ConfigError,),
        callbacks=[*stop, *deadline, tidy, *callbacks],
    )


@dataclass
class _Deadline:
    """Stop before a trial that, at the pace of this process's trials so far, would end
    after ``seconds`` (Optuna's own timeout only keeps a trial from starting after it)."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    trials: int = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.trials += 1
        elapsed = time.monotonic() - self.started
        if elapsed + elapsed / self.trials > self.seconds:
            study.stop()
