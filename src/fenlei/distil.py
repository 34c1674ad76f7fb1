"""Knowledge distillation: a student model learns a teacher's probabilities (``fenlei distil``).

:func:`distil` opens the teacher run folder(s) (any kind, an ensemble included: several
teachers are averaged), has them label a *transfer set* — the training texts, ``augment``
perturbed copies of each (:func:`fenlei.augment.augment_text`: word deletion, masking, swaps
and n-gram shuffles; character level for CJK text) and an optional table of unlabelled
texts — and trains the student preset on those probabilities softened at ``temperature``,
mixed with the true labels of the training texts by ``alpha`` (Hinton et al., 2015;
Tang et al., 2019). The soft-target loss itself lives in :mod:`fenlei.train.objective`.

The result is an ordinary run folder whose ``metrics.json`` also holds a ``distillation``
entry (the teachers, their dev scores and the student's). It is written to a temporary
folder next to ``out`` and renamed into place at the end, so a failure leaves nothing.

Example:
    >>> result = distil(["runs/ens"], student="linear", data="train.csv", dev="dev.csv",
    ...                 out="runs/student")  # doctest: +SKIP
    >>> result.student_dev.accuracy, result.teacher_dev.accuracy  # doctest: +SKIP
    (0.931, 0.925)
"""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fenlei.artifact import update_manifest, verify_manifest
from fenlei.augment import augment_text
from fenlei.config import DataConfig, RunConfig, load_config, with_overrides
from fenlei.data import Dataset, iter_texts, load_table
from fenlei.decision import DecisionRule
from fenlei.errors import ArtifactError, ConfigError, DataError
from fenlei.evaluate import score_probabilities
from fenlei.files import atomic_write_text, staged_folder
from fenlei.loader import open_predictor, run_kind
from fenlei.models import check, family_of
from fenlei.pipeline import Splits, TrainResult, prepare_splits, train_run
from fenlei.predict import ServablePredictor
from fenlei.progress import ProgressReporter, counter
from fenlei.records import Scores
from fenlei.train import SoftLabels

__all__ = ["MAX_AUGMENT", "DistilResult", "Teacher", "distil", "soften", "teacher_probs"]

logger = logging.getLogger(__name__)

MAX_AUGMENT = 50  # copies per training text
LABEL_BLOCK = 4096  # texts a teacher labels between two progress updates
_EPS = 1e-7  # probabilities are clipped here before their logarithm


@dataclass(frozen=True)
class Teacher:
    """A teacher as the distillation saw it: its folder, kind, family and dev scores."""

    run: Path
    kind: str
    architecture: str
    dev: Scores

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` form."""
        return {
            "run": str(self.run),
            "kind": self.kind,
            "architecture": self.architecture,
            "dev": self.dev.to_json(),
        }


@dataclass(frozen=True)
class DistilResult:
    """What :func:`distil` wrote: the student's run, the teachers and both sides' dev scores.

    Attributes:
        run_dir: the student's run folder.
        train: the student's training result (predictor, metrics, history).
        teachers: each teacher and its dev scores.
        teacher_dev: the teachers' (averaged) dev scores.
        student_dev: the student's dev scores.
        transfer: rows of the transfer set: ``labelled``, ``augmented``, ``unlabelled``.
        seconds: wall time of the whole distillation.
    """

    run_dir: Path
    train: TrainResult
    teachers: list[Teacher]
    teacher_dev: Scores
    student_dev: Scores
    transfer: dict[str, int]
    seconds: float


def soften(probs: np.ndarray, temperature: float, *, multi_label: bool = False) -> np.ndarray:
    """Probabilities at ``temperature``: ``softmax(log p / T)`` (per label
    ``sigmoid(logit p / T)`` for multi-label); T > 1 flattens them, T = 1 keeps them.

    Example:
        >>> soften(np.array([[0.8, 0.2]]), 2.0).round(3)
        array([[0.667, 0.333]])
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    if multi_label:
        logit = np.log(p) - np.log1p(-p)
        return 1.0 / (1.0 + np.exp(-logit / temperature))  # type: ignore[no-any-return]
    z = np.log(p) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def teacher_probs(
    teachers: Sequence[ServablePredictor],
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int = 256,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The teachers' mean probabilities (N, C) of ``texts``, columns in ``labels`` order;
    ``advance`` is told of each block of texts a teacher has labelled."""
    total = np.zeros((len(texts), len(labels)), dtype=np.float64)
    block = max(batch_size, LABEL_BLOCK)
    for teacher in teachers:
        order = [list(teacher.labels).index(name) for name in labels]
        for start in range(0, len(texts), block):
            part = list(texts[start : start + block])
            probs = teacher.predict_proba(part, batch_size=batch_size)
            total[start : start + len(part)] += np.asarray(probs, dtype=np.float64)[:, order]
            if advance is not None:
                advance(len(part))
    return total / len(teachers)


def _check_request(
    runs: list[Path], out: Path, temperature: float, alpha: float, augment: int
) -> None:
    if not runs:
        raise ConfigError("distil needs at least one teacher run folder")
    if not temperature > 0 or not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"--temperature must be > 0 and --alpha in [0, 1], not {temperature} and {alpha}"
        )
    if not 0 <= augment <= MAX_AUGMENT:
        raise ConfigError(f"--augment must be 0..{MAX_AUGMENT} copies per text, not {augment}")
    if out.exists() or out.is_symlink():
        raise ArtifactError(f"{out} already exists; choose a new --out folder for the student")
    for run in runs:
        if out.resolve().is_relative_to(run.resolve()):
            raise ConfigError(
                f"--out {out} is inside the teacher {run}; write the student elsewhere"
            )


def _student_config(student: str | Path | RunConfig, overrides: Sequence[str]) -> RunConfig:
    if isinstance(student, RunConfig):
        cfg = with_overrides(student, list(overrides))
    else:
        cfg = load_config(student, list(overrides))
    family = family_of(cfg.model.architecture)
    if not family.soft_targets:
        raise ConfigError(
            f"{family.name} learns from hard labels only and cannot learn a teacher's "
            "probabilities; choose a student family that learns from soft targets (linear, "
            "nbsvm, lstm, transformer)"
        )
    check(cfg)
    return cfg


def _open_teachers(runs: list[Path]) -> list[ServablePredictor]:
    teachers = [open_predictor(run) for run in runs]
    first = teachers[0]
    for run, teacher in zip(runs[1:], teachers[1:], strict=True):
        if (
            set(teacher.labels) != set(first.labels)
            or teacher.rule.multi_label != first.rule.multi_label
        ):
            raise ConfigError(
                f"teacher {runs[0]} has labels {', '.join(first.labels)} but teacher {run} has "
                f"{', '.join(teacher.labels)}; teachers must share one label set"
            )
    return teachers


def _check_labels(run: Path, teacher: ServablePredictor, splits: Splits, data: str) -> None:
    ours = splits.labels
    if set(ours.names) != set(teacher.labels) or ours.multi_label != teacher.rule.multi_label:
        raise ConfigError(
            f"teacher {run} has labels {', '.join(teacher.labels)} but {data} has "
            f"{', '.join(ours.names)}; a student learns the teacher's label set, so the "
            "training data must have the same labels"
        )


def _unlabelled(path: Path, cfg: DataConfig) -> list[str]:
    texts = [text for _, _, text in iter_texts(path, cfg)]
    if not texts:
        raise DataError("the unlabelled file has no texts; give a table with texts", path=str(path))
    return texts


def _augmented(texts: Sequence[str], copies: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [augment_text(text, rng) for _ in range(copies) for text in texts]


def _table(table: str | Path | Dataset | None, cfg: DataConfig) -> Dataset | None:
    if table is None or isinstance(table, Dataset):
        return table
    return load_table(table, cfg)


def distil(
    teachers: Sequence[str | Path],
    *,
    data: str | Path | Dataset,
    out: str | Path,
    student: str | Path | RunConfig = "linear",
    dev: str | Path | Dataset | None = None,
    test: str | Path | Dataset | None = None,
    unlabelled: str | Path | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    augment: int = 2,
    overrides: Sequence[str] = (),
    progress: ProgressReporter | None = None,
) -> DistilResult:
    """Train ``student`` on the teachers' softened probabilities and the true labels.

    Args:
        teachers: one or more run folders of any kind (an ensemble too); several are averaged.
        data: the labelled training table (read with the student's ``data.*`` settings), or
            a loaded :class:`~fenlei.data.Dataset`.
        out: the student's run folder; it must not exist.
        student: a preset or TOML file (any family; ``nbsvm`` fits the mixed soft targets
            as weighted examples), or a resolved :class:`~fenlei.config.RunConfig`.
        dev: the dev table (default: split from ``data``); scores teacher and student.
        test: an optional test table, scored for the student's ``metrics.json``.
        unlabelled: an optional table of texts (labels not needed) the teachers label too.
        temperature: the softmax temperature of the soft targets (and of the student's
            logits in the soft loss, scaled by its square).
        alpha: weight of the soft loss; ``1 - alpha`` weighs the training texts' true labels.
        augment: perturbed copies of each training text the teachers label (0: none).
        overrides: ``key=value`` settings for the student (as ``--set``).
        progress: receives training progress.

    Returns:
        The student's run folder and training result, the teachers' and student's dev scores.

    Raises:
        ConfigError: a student family without soft targets, bad ``temperature``,
            ``alpha`` or ``augment``, teachers or data whose labels differ (naming both),
            ``out`` inside a teacher.
        ArtifactError: ``out`` exists, or a teacher folder fails verification (named).
        DataError: unreadable tables, or an unlabelled file without texts.

    Example:
        >>> distil(["runs/nbsvm", "runs/linear"], data="train.csv", dev="dev.csv",
        ...        student="linear", out="runs/student")  # doctest: +SKIP
    """
    started = time.perf_counter()
    runs, target = [Path(t) for t in teachers], Path(out)
    _check_request(runs, target, temperature, alpha, augment)
    cfg = _student_config(student, overrides)
    models = _open_teachers(runs)
    train_table = _table(data, cfg.data)
    assert train_table is not None
    splits = prepare_splits(cfg.data, train_table, _table(dev, cfg.data), _table(test, cfg.data))
    _check_labels(runs[0], models[0], splits, train_table.source)
    extra_unlabelled = [] if unlabelled is None else _unlabelled(Path(unlabelled), cfg.data)
    copies = _augmented(splits.train.texts, augment, cfg.train.seed)
    labels, multi = splits.labels.names, splits.labels.multi_label
    texts = [*splits.train.texts, *copies, *extra_unlabelled]
    logger.info("teachers label %d texts", len(texts))
    soft = SoftLabels(
        probs=soften(
            teacher_probs(
                models,
                texts,
                labels,
                advance=counter(progress, "teachers label", len(texts) * len(models)),
            ),
            temperature,
            multi_label=multi,
        ),
        extra=[*copies, *extra_unlabelled],
        temperature=temperature,
        alpha=alpha,
    )
    rule = DecisionRule(multi_label=multi, threshold=cfg.eval.threshold)
    each = [teacher_probs([m], splits.dev.texts, labels) for m in models]
    found = [
        Teacher(
            run,
            run_kind(run),
            m.info().architecture,
            score_probabilities(p, splits.dev, labels, rule),
        )
        for run, m, p in zip(runs, models, each, strict=True)
    ]
    teacher_dev = score_probabilities(np.mean(each, axis=0), splits.dev, labels, rule)
    transfer = {
        "labelled": len(splits.train),
        "augmented": len(copies),
        "unlabelled": len(extra_unlabelled),
    }
    about = {
        "teachers": [t.to_json() for t in found],
        "teacher_dev": teacher_dev.to_json(),
        "temperature": temperature,
        "alpha": alpha,
        "augment": augment,
        "transfer": transfer,
    }
    result = _train_atomically(cfg, splits, target, soft, about, progress)
    return DistilResult(
        target,
        result,
        found,
        teacher_dev,
        result.metrics.dev,
        transfer,
        time.perf_counter() - started,
    )


def _train_atomically(
    cfg: RunConfig,
    splits: Splits,
    target: Path,
    soft: SoftLabels,
    about: dict[str, Any],
    progress: ProgressReporter | None,
) -> TrainResult:
    """Train in a temporary folder next to ``target``, record the distillation in its
    ``metrics.json``, then rename it into place; on any failure the folder is removed."""
    with staged_folder(target) as staging:
        result = train_run(cfg, splits, staging, soft=soft, progress=progress)
        about["student_dev"] = result.metrics.dev.to_json()
        manifest = verify_manifest(staging)
        metrics = {**result.metrics.to_json(), "distillation": about}
        atomic_write_text(
            staging / "metrics.json", json.dumps(metrics, indent=1, ensure_ascii=False)
        )
        update_manifest(staging, manifest, "metrics.json")
    logger.info("wrote student %s", target)
    result.run_dir = target
    return result


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`distil`: importing ``fenlei.distil`` makes the
    package attribute ``fenlei.distil`` this module, and ``fenlei.distil(...)`` is the
    documented API, so the module forwards calls to the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> DistilResult:
        return distil(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
