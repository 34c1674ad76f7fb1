"""The Optuna study behind ``fenlei tune``: storage, identity, trial records and the winner.

The study lives in an Optuna RDB storage (by default a SQLite file beside the output), so a
killed ``tune`` keeps its finished trials, and several processes or machines can run trials
of one study by pointing at the same storage URL (Optuna's own mechanism). Each trial keeps
its settings and scores in the study's user attributes (:class:`TrialSummary` reads them).

A study remembers what it was created for: a fingerprint of the data files and of the search
(:func:`fingerprint`); opening it for other data or another search is refused. A trial that
was interrupted (Ctrl-C, or killed: the storage's heartbeat marks it failed once it goes
stale) is queued once more with the same settings and continues from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fenlei.errors import ConfigError, DataError, MissingExtraError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

__all__ = [
    "TrialSummary",
    "count_finished",
    "fingerprint",
    "keepers",
    "open_storage",
    "open_study",
    "quiet_optuna",
    "require_optuna",
    "retry_interrupted",
    "summaries",
    "tidy_folders",
    "winner",
]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30  # a running trial writes a heartbeat this often; stale after 3 misses
_ATTR = "fenlei"  # the study's user attribute holding what it was created for


def require_optuna() -> Any:
    """The ``optuna`` module.

    Raises:
        MissingExtraError: optuna is not installed (``pip install 'fenlei[tune]'``).
    """
    try:
        import optuna
    except ImportError as exc:
        raise MissingExtraError("optuna", "tune", "fenlei tune") from exc
    return optuna


def quiet_optuna() -> None:
    """Keep Optuna's own per-trial INFO lines out of the log (the CLI prints its own)."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(url: str, *, heartbeat: bool = True) -> RDBStorage:
    """Connect to an Optuna RDB storage (``sqlite:///...``, ``postgresql://...``).

    With ``heartbeat``, a running trial writes a heartbeat every :data:`HEARTBEAT_S` seconds;
    one that stops (its process was killed) is marked failed and retried once.

    Raises:
        ConfigError: the URL is malformed, its database driver is missing, or the database
            cannot be reached or created.
    """
    optuna = require_optuna()
    from sqlalchemy.exc import SQLAlchemyError

    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {
            "heartbeat_interval": HEARTBEAT_S,
            "grace_period": 3 * HEARTBEAT_S,
            "heartbeat_stale_trial_callback": retry_trial,
        }
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cast("RDBStorage", optuna.storages.RDBStorage(url, **kwargs))
    except ImportError as exc:
        raise ConfigError(
            f"storage {url!r} needs a database driver that is not installed "
            f"({exc.__cause__ or exc})"
        ) from exc
    except (SQLAlchemyError, ValueError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise ConfigError(
            f"storage {url!r} cannot be reached or created: {reason}; give a reachable "
            "--storage URL (e.g. sqlite:///tune.db) or leave it out"
        ) from exc


def _sha256_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise DataError(
                f"cannot read the table: {exc.strerror or exc}", path=str(path)
            ) from exc
        digest.update(b"\0")
    return digest.hexdigest()


def fingerprint(files: Sequence[Path], search: Any) -> dict[str, Any]:
    """What a study is for: the data files' contents and the search (a JSON-able object).

    Raises:
        DataError: a data file cannot be read.
    """
    blob = json.dumps(search, sort_keys=True, ensure_ascii=False)
    return {
        "data": _sha256_files(files),
        "files": [str(p) for p in files],
        "search": hashlib.sha256(blob.encode("utf-8")).hexdigest(),
        "plan": search,
    }


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    ident: dict[str, Any],
    directions: Sequence[str],
) -> tuple[optuna.Study, bool]:
    """Load study ``name`` when it exists (and was made for the same data and search), else
    create it; return it and whether it is new.

    Raises:
        ConfigError: the study was created for other data or another search.
    """
    optuna = require_optuna()
    if name in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        _check_identity(study, name, ident)
        return study, False
    study = optuna.create_study(
        storage=storage, study_name=name, directions=list(directions), load_if_exists=True
    )
    if _ATTR not in study.user_attrs:  # another process may have created it a moment ago
        study.set_user_attr(_ATTR, ident)
    _check_identity(study, name, ident)
    return study, True


def _check_identity(study: optuna.Study, name: str, ident: dict[str, Any]) -> None:
    then = study.user_attrs.get(_ATTR)
    if not isinstance(then, dict):
        raise ConfigError(
            f"study {name!r} in this storage was not created by fenlei tune; give another "
            "--study name"
        )
    for part, what in (("data", "data files"), ("search", "families, settings or metric")):
        if then.get(part) != ident[part]:
            raise ConfigError(
                f"study {name!r} was created for other {what} (it tuned "
                f"{', '.join(then.get('files', []))}); give another --study name or --storage, "
                "or the same data and search to resume it"
            )


@dataclass(frozen=True)
class TrialSummary:
    """One trial as the study records it.

    Attributes:
        number: the trial's number in the study.
        state: ``"complete"``, ``"pruned"``, ``"fail"``, ``"running"`` or ``"waiting"``.
        preset: the family's preset (None when it failed before choosing).
        overrides: the ``section.key=value`` settings it drew.
        value: its dev score (the study's metric); None unless complete.
        latency_ms: batch-1 p50 latency on this machine (latency studies only).
        test: its test score, when the data has a test split.
        seconds: wall time of the trial.
        run_dir: its run folder (kept only while it may still win).
        pruned_at: the epoch (or solve) it was pruned after.
        retry_of: the interrupted trial it continues (in that trial's folder).
        probe_ms: with a latency budget, the batch-1 p50 of its untrained model.
        over_budget: skipped untrained, its probe far over the budget (state ``pruned``).
        repeat_of: the earlier trial whose settings it drew again (its results, not retrained).
        dev_nll: its mean dev negative log-likelihood after temperature scaling (families
            that calibrate), which breaks ties in the dev score.
    """

    number: int
    state: str
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    value: float | None = None
    latency_ms: float | None = None
    test: float | None = None
    seconds: float | None = None
    run_dir: str | None = None
    pruned_at: int | None = None
    retry_of: int | None = None
    probe_ms: float | None = None
    over_budget: bool = False
    repeat_of: int | None = None
    dev_nll: float | None = None

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialSummary:
        """Read a trial's record."""
        attrs = trial.user_attrs
        values = trial.values or []
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        return cls(
            number=trial.number,
            state=trial.state.name.lower(),
            preset=attrs.get("preset"),
            overrides=tuple(attrs.get("overrides", ())),
            value=values[0] if values else None,
            latency_ms=values[1] if len(values) > 1 else None,
            test=attrs.get("test"),
            seconds=seconds,
            run_dir=attrs.get("run_dir"),
            pruned_at=attrs.get("pruned_at"),
            retry_of=attrs.get("retry_of"),
            probe_ms=attrs.get("probe_ms"),
            over_budget=bool(attrs.get("over_budget", False)),
            repeat_of=attrs.get("repeat_of"),
            dev_nll=attrs.get("dev_nll"),
        )


def summaries(study: optuna.Study) -> list[TrialSummary]:
    """Every trial of the study, in order."""
    return [TrialSummary.of(t) for t in study.get_trials(deepcopy=False)]


def count_finished(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: complete or pruned."""
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))


def _dominated(t: TrialSummary, others: Sequence[TrialSummary]) -> bool:
    assert t.value is not None and t.latency_ms is not None
    for u in others:
        assert u.value is not None and u.latency_ms is not None
        no_worse = u.value >= t.value and u.latency_ms <= t.latency_ms
        if no_worse and (u.value > t.value or u.latency_ms < t.latency_ms):
            return True
    return False


def keepers(trials: Sequence[TrialSummary], *, latency: bool) -> list[TrialSummary]:
    """The complete trials that may still win: the best (ties kept), or with a latency
    objective the Pareto front of (accuracy, latency). A trial outside it never enters it
    again, so its run folder can go. A repeat of earlier settings is left out: the earlier
    trial stands for it (and holds the folder)."""
    done = [
        t for t in trials if t.state == "complete" and t.value is not None and t.repeat_of is None
    ]
    if latency:
        timed = [t for t in done if t.latency_ms is not None]
        return sorted(
            (t for t in timed if not _dominated(t, timed)), key=lambda t: t.latency_ms or 0.0
        )
    best = max((t.value for t in done if t.value is not None), default=math.nan)
    return [t for t in done if t.value == best]


def winner(trials: Sequence[TrialSummary], budget_ms: float | None) -> TrialSummary | None:
    """The most accurate complete trial (within ``budget_ms`` when given; ties: the faster,
    then the lower dev log-loss, then the earlier); None when no trial qualifies.

    A dev split of a few hundred texts scores accuracy in steps of a few tenths of a
    point, so many trials tie (on sms_spam's 557 dev texts, 10 of the 32 settings a study
    trained tied at the top); the log-loss, continuous, prefers the one that is right with
    more confidence.
    """
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    if budget_ms is not None:
        done = [t for t in done if t.latency_ms is not None and t.latency_ms <= budget_ms]
    if not done:
        return None
    return min(
        done,
        key=lambda t: (
            -(t.value or 0.0),
            t.latency_ms or 0.0,
            math.inf if t.dev_nll is None else t.dev_nll,
            t.number,
        ),
    )


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue an interrupted trial once more, with its settings, to continue in its folder."""
    optuna = require_optuna()
    if "retry_of" in trial.user_attrs or not trial.params:
        return  # a retry that failed again, or a trial that never started training
    queued = {
        t.user_attrs.get("retry_of")
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    }
    if trial.number not in queued:
        logger.info("trial %d was interrupted: queued again", trial.number)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def retry_interrupted(study: optuna.Study) -> None:
    """Queue each interrupted trial (failed with a run folder, not retried yet) once more."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        folder = t.user_attrs.get("run_dir")
        if t.state.name == "FAIL" and t.number not in retried and folder and Path(folder).is_dir():
            retry_trial(study, t)


def tidy_folders(study: optuna.Study, root: Path, *, latency: bool) -> None:
    """Remove the run folders (under ``root`` only) of trials that can no longer win; keep
    those of running trials and of interrupted ones that wait for their retry."""
    trials = summaries(study)
    keep = {t.run_dir for t in keepers(trials, latency=latency)}
    keep |= {t.run_dir for t in trials if t.state in ("running", "waiting")}
    retried = {t.retry_of for t in trials if t.retry_of is not None}
    keep |= {
        t.run_dir
        for t in trials
        if t.state == "fail" and t.retry_of is None and t.number not in retried
    }
    for t in trials:
        if t.run_dir and t.run_dir not in keep and Path(t.run_dir).parent == root:
            shutil.rmtree(t.run_dir, ignore_errors=True)
