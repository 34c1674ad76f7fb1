"""Building an ensemble run folder from run folders (``fenlei ensemble``).

:func:`build_ensemble` opens every member (verified, one model each, one label set), scores
them on dev (and test), sets the weights (equal, or :func:`tune_weights` on dev only), and
writes the folder :mod:`fenlei.ensemble` describes into a temporary folder next to ``out``,
renamed into place at the end: a failure leaves nothing behind.

Example:
    >>> runs = ["runs/nbsvm", "runs/linear"]
    >>> result = build_ensemble(runs, "runs/ens", data="dev.csv")  # doctest: +SKIP
    >>> result.dev.accuracy  # doctest: +SKIP
    0.9317
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fenlei.artifact import MANIFEST, atomic_write_text, verify_manifest, write_manifest
from fenlei.config import DataConfig
from fenlei.data import Dataset, load_table
from fenlei.ensemble import (
    ENSEMBLE_FILE,
    KIND,
    MAX_MEMBERS,
    MEMBERS_DIR,
    EnsembleFile,
    EnsemblePredictor,
    MemberEntry,
    read_json,
)
from fenlei.errors import ArtifactError, ConfigError
from fenlei.evaluate import score_probabilities
from fenlei.files import staged_folder
from fenlei.predict import Predictor
from fenlei.records import Scores
from fenlei.reference import reference_stats

__all__ = [
    "WEIGHTINGS",
    "EnsembleResult",
    "MemberResult",
    "build_ensemble",
    "tune_weights",
]

logger = logging.getLogger(__name__)

WEIGHTINGS = ("equal", "tuned")
_EPS = 1e-7  # probabilities are clipped here before the log of the tuning loss


def tune_weights(
    probs: Sequence[np.ndarray], truth: np.ndarray, *, multi_label: bool = False
) -> np.ndarray:
    """The weights (on the simplex) whose weighted mean has the least log-loss on ``truth``.

    The loss, ``-mean log(sum_m w_m p_m[y])``, is convex in the weights, so SciPy's SLSQP
    from equal weights finds the best point; weights are rounded to 4 decimals. For
    multi-label each (text, label) entry counts as one Bernoulli outcome.

    Args:
        probs: each member's probabilities (N, C), columns in the same label order.
        truth: (N,) label indices, or (N, C) 0/1 for multi-label.
        multi_label: how to read ``truth``.

    Returns:
        (M,) weights summing to 1.

    Example:
        >>> tune_weights([np.eye(2), np.full((2, 2), 0.5)], np.array([0, 1]))
        array([1., 0.])
    """
    from scipy.optimize import minimize

    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probs])  # (M, N, C)
    m = stacked.shape[0]
    if multi_label:  # the probability each member gave to what happened
        outcome = np.where(np.asarray(truth, dtype=bool)[None], stacked, 1.0 - stacked)
        hit = outcome.reshape(m, -1)
    else:
        hit = stacked[:, np.arange(stacked.shape[1]), np.asarray(truth)]  # (M, N)

    def loss(w: np.ndarray) -> float:
        return float(-np.log(np.clip(w @ hit, _EPS, None)).mean())

    def grad(w: np.ndarray) -> np.ndarray:
        return -(hit / np.clip(w @ hit, _EPS, None)).mean(axis=1)  # type: ignore[no-any-return]

    equal = np.full(m, 1.0 / m)
    result = minimize(
        loss,
        equal,
        jac=grad,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}],
    )
    best = np.clip(result.x, 0.0, None)
    best = best / best.sum() if best.sum() > 0 else equal
    if loss(best) > loss(equal):  # the solver stopped early: never worse than equal
        best = equal
    rounded = np.round(best, 4)
    return rounded / rounded.sum()  # type: ignore[no-any-return]


def _truth(dataset: Dataset, labels: Sequence[str], multi_label: bool) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}  # unknown labels were refused when scored
    if multi_label:
        y = np.zeros((len(dataset), len(labels)), dtype=int)
        for row, ex in enumerate(dataset.examples):
            y[row, [index[lab] for lab in ex.labels]] = 1
        return y
    return np.array([index[ex.labels[0]] for ex in dataset.examples])


# ---------------------------------------------------------------- building


@dataclass(frozen=True)
class MemberResult:
    """A member as the build saw it: its name, source, weight and scores."""

    name: str
    source: Path
    architecture: str
    weight: float
    dev: Scores
    test: Scores | None


@dataclass(frozen=True)
class EnsembleResult:
    """What :func:`build_ensemble` wrote: the folder, the members and the scores."""

    run_dir: Path
    weighting: str
    members: list[MemberResult]
    dev: Scores
    test: Scores | None
    seconds: float


def _member_names(runs: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for run in runs:
        base = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in run.name)
        base = base.lstrip("._-")[:90] or "member"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def _open_members(runs: Sequence[Path]) -> list[Predictor]:
    """Each run as a verified one-model predictor; labels must agree with the first's."""
    members = []
    for run in runs:
        if _kind(run) == KIND:
            raise ConfigError(
                f"{run} is itself an ensemble; list its members' run folders instead "
                "(a member must be one model)"
            )
        members.append(Predictor.from_run(run, backend="torch", device="cpu"))
    first = members[0]
    for run, member in zip(runs[1:], members[1:], strict=True):
        if set(member.labels) != set(first.labels) or member.multi_label != first.multi_label:
            raise ConfigError(
                f"{runs[0]} has labels {', '.join(first.labels)} but {run} has "
                f"{', '.join(member.labels)}; an ensemble's members must share one label set"
            )
    return members


def _kind(run: Path) -> str | None:
    """The manifest's kind, if it can be read (else loading the run names the problem)."""
    try:
        raw = read_json(run / MANIFEST)
    except ArtifactError:
        return None
    return str(raw.get("kind")) if isinstance(raw, dict) else None


def _table(data: str | Path | Dataset | None, cfg: DataConfig | None) -> Dataset | None:
    if data is None or isinstance(data, Dataset):
        return data
    return load_table(data, cfg or DataConfig())


def _copy_member(source: Path, target: Path, verified: Mapping[str, Any]) -> None:
    """Copy a run folder (not its hidden files or a checkpoint); check that the copy is what
    was verified when loaded."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*", "checkpoint"))
    if verify_manifest(target)["files"] != verified["files"]:
        raise ArtifactError(f"{source} changed while the ensemble was built; build it again")


def _counts(dataset: Dataset) -> dict[str, Any]:
    labels = Counter(lab for ex in dataset.examples for lab in ex.labels)
    return {"rows": len(dataset), "labels": dict(sorted(labels.items()))}


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise ArtifactError(f"{out} already exists; choose a new --out folder for the ensemble")


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _metrics(
    ens: EnsemblePredictor,
    results: list[MemberResult],
    dev: tuple[Dataset, Scores],
    test: tuple[Dataset, Scores] | None,
    seconds: float,
) -> dict[str, Any]:
    """``metrics.json``: a run's keys (an ensemble trains no epoch) plus weights and members."""
    sets = [dev] if test is None else [dev, test]
    out: dict[str, Any] = {
        "best_epoch": 0,
        "epochs_run": 0,
        "stopped_early": False,
        "train_seconds": round(seconds, 3),
        "data": {data.source: _counts(data) for data, _ in sets},
        "dev": dev[1].to_json(),
        "kind": KIND,
        "weights": {n: float(w) for n, w in zip(ens.names, ens.weights, strict=True)},
        "members": {
            r.name: {"architecture": r.architecture, "dev": r.dev.to_json()}
            | ({} if r.test is None else {"test": r.test.to_json()})
            for r in results
        },
    }
    if test is not None:
        out["test"] = test[1].to_json()
    return out


def _write_folder(
    staging: Path,
    ens: EnsemblePredictor,
    spec: EnsembleFile,
    metrics: dict[str, Any],
    reference: dict[str, Any],
) -> None:
    _write_json(staging / ENSEMBLE_FILE, spec.model_dump(mode="json"))
    labels = {"labels": list(ens.labels), "multi_label": ens.rule.multi_label}
    _write_json(staging / "labels.json", labels)
    _write_json(staging / "metrics.json", metrics)
    _write_json(staging / "reference.json", reference)
    write_manifest(staging, kind=KIND)


def _weights(
    how: str, ens: EnsemblePredictor, dev: Dataset, dev_each: list[np.ndarray]
) -> tuple[np.ndarray, dict[str, float | int | str] | None]:
    """The weights, and for ``tuned`` how they were found (on dev only)."""
    m = len(dev_each)
    equal = np.full(m, 1.0 / m)
    if how == "equal":
        return equal, None
    multi = ens.rule.multi_label
    truth = _truth(dev, ens.labels, multi)
    tuned = tune_weights(dev_each, truth, multi_label=multi)
    loss = {
        name: _log_loss(dev_each, w, truth, multi)
        for name, w in (("equal", equal), ("tuned", tuned))
    }
    about: dict[str, float | int | str] = {
        "method": "scipy SLSQP on the simplex, dev log-loss",
        "data": dev.source,
        "n": len(dev),
        "log_loss": round(loss["tuned"], 6),
        "equal_log_loss": round(loss["equal"], 6),
    }
    return tuned, about


def _log_loss(probs: list[np.ndarray], w: np.ndarray, truth: np.ndarray, multi: bool) -> float:
    mixed = sum(wi * np.asarray(p, dtype=np.float64) for wi, p in zip(w, probs, strict=True))
    mixed = np.clip(np.asarray(mixed), _EPS, 1 - _EPS)
    if multi:
        return float(-np.mean(truth * np.log(mixed) + (1 - truth) * np.log(1 - mixed)))
    return float(-np.mean(np.log(mixed[np.arange(len(truth)), truth])))


def build_ensemble(
    runs: Sequence[str | Path],
    out: str | Path,
    *,
    weights: str = "equal",
    data: str | Path | Dataset | None = None,
    test: str | Path | Dataset | None = None,
) -> EnsembleResult:
    """Write an ensemble run folder of ``runs`` (copied in) to ``out``.

    Args:
        runs: two or more one-model run folders with the same labels.
        out: the folder to write; it must not exist.
        weights: ``"equal"``, or ``"tuned"`` (least log-loss on ``data``; never on test).
        data: dev data, a labelled table (read with the first member's columns) or a
            :class:`~fenlei.data.Dataset`: scores, weights and the drift reference.
        test: optional test data, scored for ``metrics.json`` and the table only.

    Returns:
        The folder, the weights and every member's and the ensemble's scores.

    Raises:
        ConfigError: fewer than two runs, an unknown weighting, no dev data, a member that
            is an ensemble, or labels that differ (naming both runs).
        ArtifactError: ``out`` exists, or a run folder is missing files or fails
            verification (naming the file).
        DataError: unreadable data, or a label no member knows.

    Example:
        >>> runs = ["runs/a", "runs/b"]
        >>> build_ensemble(runs, "runs/ab", weights="tuned", data="dev.csv")  # doctest: +SKIP
    """
    started = time.perf_counter()
    sources, target = [Path(r) for r in runs], Path(out)
    _check_request(sources, target, weights, data)
    members = _open_members(sources)
    names = _member_names(sources)
    cfg = members[0].info().data
    dev = _table(data, cfg)
    assert dev is not None  # _check_request refused None
    test_set = _table(test, cfg)
    ens = EnsemblePredictor(members, [1.0] * len(members), names=names)
    dev_each = ens.member_probas(dev.texts)
    test_each = ens.member_probas(test_set.texts) if test_set is not None else None
    w, tuning = _weights(weights, ens, dev, dev_each)
    ens = EnsemblePredictor(members, w, names=names)
    results = [
        MemberResult(
            name=name,
            source=source,
            architecture=member.info().architecture,
            weight=float(weight),
            dev=score_probabilities(dev_each[i], dev, ens.labels, ens.rule),
            test=None
            if test_set is None or test_each is None
            else score_probabilities(test_each[i], test_set, ens.labels, ens.rule),
        )
        for i, (name, source, member, weight) in enumerate(
            zip(names, sources, members, ens.weights, strict=True)
        )
    ]
    dev_probs = ens.mix(dev_each)
    dev_scores = score_probabilities(dev_probs, dev, ens.labels, ens.rule)
    test_scores = None
    if test_set is not None and test_each is not None:
        test_scores = score_probabilities(ens.mix(test_each), test_set, ens.labels, ens.rule)
    spec = EnsembleFile(
        weighting="tuned" if weights == "tuned" else "equal",
        members=[
            MemberEntry(
                name=r.name, weight=r.weight, source=str(r.source), architecture=r.architecture
            )
            for r in results
        ],
        tuning=tuning,
    )
    seconds = time.perf_counter() - started
    metrics = _metrics(
        ens,
        results,
        (dev, dev_scores),
        None if test_set is None or test_scores is None else (test_set, test_scores),
        seconds,
    )
    reference = reference_stats(ens, dev.texts, probs=dev_probs)
    _write_atomically(
        target, sources, members, names, lambda s: _write_folder(s, ens, spec, metrics, reference)
    )
    logger.info(
        "wrote ensemble %s (%s)", target, ", ".join(f"{r.name} {r.weight:.3f}" for r in results)
    )
    return EnsembleResult(target, spec.weighting, results, dev_scores, test_scores, seconds)


def _check_request(
    sources: list[Path], target: Path, weights: str, data: str | Path | Dataset | None
) -> None:
    if weights not in WEIGHTINGS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTINGS)}, not {weights!r}")
    if len(sources) < 2:
        only = f" ({sources[0]})" if sources else ""
        raise ConfigError(
            f"an ensemble needs at least two run folders, got {len(sources)}{only}; "
            "name two or more"
        )
    if len(sources) > MAX_MEMBERS:
        raise ConfigError(f"an ensemble holds at most {MAX_MEMBERS} members, got {len(sources)}")
    _check_out(target)
    for source in sources:
        if target.resolve().is_relative_to(source.resolve()):
            raise ConfigError(
                f"--out {target} is inside the member {source}, which would then hold a file "
                "its manifest does not list; write the ensemble elsewhere"
            )
    if data is None:
        raise ConfigError(
            "an ensemble is scored, weighted and given its drift reference on dev data: "
            "pass --data DEV (a labelled table the members did not train on)"
        )


def _write_atomically(
    target: Path,
    sources: list[Path],
    members: list[Predictor],
    names: list[str],
    write: Any,
) -> None:
    """Copy the members and write the folder in a temporary folder next to ``target``, then
    rename it into place; on any failure the temporary folder is removed."""
    with staged_folder(target) as staging:
        for name, source, member in zip(names, sources, members, strict=True):
            assert member.run is not None  # loaded from its folder
            _copy_member(source, staging / MEMBERS_DIR / name, member.run.manifest)
        write(staging)
        _check_out(target)
