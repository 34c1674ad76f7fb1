"""What is fitted on dev after training: a temperature, per-label thresholds, a reject point.

Temperature scaling (Guo et al. 2017) divides a model's logits by one number ``T`` chosen to
minimise the negative log-likelihood of the dev labels; it changes how confident the
probabilities are, never which label is most probable. Multi-label models get one
temperature for all their sigmoid outputs: the outputs share one network and one scale, a
temperature per label would be fitted on the few dev positives of a rare label, and each
label's decision point is tuned separately anyway (:func:`tune_thresholds`).

On the calibrated dev probabilities the decision is then tuned: a threshold per label for
multi-label models (:func:`tune_thresholds`: the best F1, or the highest recall at a target
precision), a confidence below which a single-label model abstains (:func:`choose_reject`:
the largest coverage at a target accuracy). :class:`Calibration` holds all three; it is
saved as the run folder's ``calibration.json`` and applied by
:class:`~fenlei.predict.Predictor` (between the logits and the probabilities, and in its
:class:`~fenlei.decision.DecisionRule`), so predict, evaluate and serve use the same values.

Example:
    >>> fit = fit_temperature(dev_logits, dev_labels, multi_label=False)  # doctest: +SKIP
    >>> predictor.calibrated(Calibration(temperature=fit.temperature))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fenlei.decision import DecisionRule
from fenlei.errors import ArtifactError

__all__ = [
    "CALIBRATION_FILE",
    "ECE_BINS",
    "Calibration",
    "CurvePoint",
    "TemperatureFit",
    "ThresholdFit",
    "choose_reject",
    "coverage_curve",
    "expected_calibration_error",
    "fit_temperature",
    "nll",
    "read_calibration",
    "reject_point",
    "tune_thresholds",
]

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
# The search range of the temperature; a fitted value at either end means the dev set
# pushes it off the scale (a model worse than uniform), and the end is kept.
_T_MIN, _T_MAX = 0.01, 100.0
_MAX_FILE_BYTES = 16 << 20


# ---------------------------------------------------------------- temperature


def _sigmoid_targets(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Targets in the shape of sigmoid logits: (N, C) 0/1 as given, or (N,) class ids of a
    one-logit binary head -> (N, 1)."""
    if targets.ndim == 1:
        return targets.reshape(-1, 1).astype(np.float64)
    return targets.astype(np.float64)


def _is_softmax(logits: np.ndarray, multi_label: bool) -> bool:
    return not multi_label and logits.shape[1] > 1


def nll(logits: np.ndarray, targets: np.ndarray, *, multi_label: bool) -> float:
    """Mean negative log-likelihood of ``targets`` under ``logits`` (N, C or 1).

    Single-label: cross-entropy of the softmax (or, for a one-logit binary head, of the
    sigmoid), ``targets`` (N,) class ids. Multi-label: binary cross-entropy averaged over
    every text and label, ``targets`` (N, C) 0/1.

    Example:
        >>> round(nll(np.array([[0.0, 0.0]]), np.array([1]), multi_label=False), 4)
        0.6931
    """
    from scipy.special import log_softmax  # here, as scipy.optimize: training never needs them

    z = np.asarray(logits, dtype=np.float64)
    if _is_softmax(z, multi_label):
        picked = log_softmax(z, axis=1)[np.arange(len(z)), np.asarray(targets, dtype=int)]
        return float(-picked.mean())
    y = _sigmoid_targets(z, np.asarray(targets))
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _all_right(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> bool:
    """Every dev decision is right: the likelihood then grows without end as T -> 0."""
    if _is_softmax(logits, multi_label):
        return bool(np.all(logits.argmax(axis=1) == targets))
    y = _sigmoid_targets(logits, targets)
    return bool(np.all((logits > 0) == (y > 0.5)))


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and the dev NLL before and after.

    Attributes:
        temperature: logits are divided by it (1.0: unchanged).
        nll_before, nll_after: mean dev negative log-likelihood at T=1 and at ``temperature``.
        note: why nothing was fitted (None when fitted).
    """

    temperature: float
    nll_before: float
    nll_after: float
    note: str | None = None


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray, *, multi_label: bool
) -> TemperatureFit:
    """The temperature that minimises the dev NLL (a bounded 1-D search over log T).

    The NLL is convex in 1/T, so the minimum found is the minimum. When every dev decision
    is already right there is none (confidence can always grow) and T stays 1.

    Args:
        logits: (N, C) dev logits, or (N, 1) of a one-logit binary head.
        targets: (N,) class ids, or (N, C) 0/1 for multi-label.
        multi_label: sigmoid outputs, one per label.

    Returns:
        The temperature and the dev NLL before and after.

    Example:
        >>> fit_temperature(2.0 * logits, labels, multi_label=False).temperature  # doctest: +SKIP
        2.0
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets)
    before = nll(z, y, multi_label=multi_label)
    if len(z) == 0:
        return TemperatureFit(1.0, before, before, "no dev texts")
    if _all_right(z, y, multi_label):
        note = "every dev decision is right: nothing to calibrate against"
        return TemperatureFit(1.0, before, before, note)
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: nll(z / math.exp(log_t), y, multi_label=multi_label),
        bounds=(math.log(_T_MIN), math.log(_T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    temperature = float(math.exp(result.x))
    after = nll(z / temperature, y, multi_label=multi_label)
    if after > before:  # the search never does worse than T=1, but keep that a guarantee
        return TemperatureFit(1.0, before, before, "T=1 fits dev best")
    return TemperatureFit(temperature, before, after)


# ---------------------------------------------------------------- calibration error


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, *, multi_label: bool, bins: int = ECE_BINS
) -> float:
    """Expected calibration error over ``bins`` equal-width confidence bins.

    Single-label: the confidence is the top probability and a text counts as right when its
    most probable label is the true one (Guo et al. 2017). Multi-label: every (text, label)
    pair is one binary decision at 0.5, its confidence ``max(p, 1 - p)``. ECE is the
    size-weighted mean of |accuracy - mean confidence| over the bins.

    Example:
        >>> expected_calibration_error(np.array([[0.1, 0.9]] * 10), np.array([1] * 9 + [0]),
        ...                            multi_label=False)
        0.0
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets)
    if p.shape[0] == 0:
        return 0.0
    if multi_label:
        conf = np.maximum(p, 1 - p).ravel()
        right = ((p >= 0.5) == (y > 0.5)).ravel()
    else:
        conf = p.max(axis=1)
        right = p.argmax(axis=1) == y
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 joins the first
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    gap = np.abs(
        np.bincount(which, weights=right.astype(np.float64), minlength=bins)
        - np.bincount(which, weights=conf, minlength=bins)
    )
    return float(np.round(gap.sum() / counts.sum(), 12))


# ---------------------------------------------------------------- per-label thresholds


def _below(scores: np.ndarray, threshold: float) -> float:
    """Halfway between ``threshold`` and the highest score under it (0 if none), so the
    dev decisions stay the same and a new text just below a dev score is not cut off."""
    lower = scores[scores < threshold]
    return float((threshold + (lower.max() if lower.size else 0.0)) / 2)


@dataclass(frozen=True)
class ThresholdFit:
    """Per-label thresholds tuned on dev.

    Attributes:
        thresholds: one per label, in label order.
        unmet: labels (indices) for which no threshold reaches the target precision on dev;
            they keep their best-F1 threshold.
        best_precision: the highest dev precision each unmet label reaches.
        untuned: labels without a positive dev example; they keep the default threshold.
    """

    thresholds: tuple[float, ...]
    unmet: tuple[int, ...] = ()
    best_precision: tuple[float, ...] = ()
    untuned: tuple[int, ...] = ()


def _label_threshold(
    scores: np.ndarray, truth: np.ndarray, min_precision: float | None
) -> tuple[float, float | None]:
    """(threshold, None) or (best-F1 threshold, highest precision) when the target is unmet."""
    from sklearn.metrics import precision_recall_curve  # here: pandas and pyarrow come with it

    precision, recall, cuts = precision_recall_curve(truth, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    best_f1 = int(np.argmax(f1))
    if min_precision is None:
        return _below(scores, float(cuts[best_f1])), None
    meets = np.flatnonzero(precision >= min_precision)
    if meets.size == 0:
        return _below(scores, float(cuts[best_f1])), float(precision.max())
    best = int(meets[np.argmax(recall[meets])])  # the highest recall at the target
    return _below(scores, float(cuts[best])), None


def tune_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    *,
    min_precision: float | None = None,
    default: float = 0.5,
) -> ThresholdFit:
    """A threshold per label on dev: the best F1, or with ``min_precision`` the highest
    recall whose precision reaches it.

    Each threshold lies halfway between the dev score it keeps and the next lower one, so
    on dev it decides exactly as the tuned point.

    Args:
        probs: (N, C) calibrated dev probabilities.
        targets: (N, C) 0/1 dev labels.
        min_precision: the precision every label should reach (None: the best F1).
        default: the threshold of a label that has no positive dev example.

    Returns:
        The thresholds, and the labels where the target is out of reach.

    Example:
        >>> tune_thresholds(np.array([[0.9], [0.4], [0.2]]), np.array([[1], [1], [0]])).thresholds
        (0.30000000000000004,)
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets).astype(int)
    thresholds: list[float] = []
    unmet: list[int] = []
    best: list[float] = []
    untuned: list[int] = []
    for j in range(p.shape[1]):
        if not y[:, j].any():
            thresholds.append(default)
            untuned.append(j)
            continue
        threshold, reached = _label_threshold(p[:, j], y[:, j], min_precision)
        thresholds.append(threshold)
        if reached is not None:
            unmet.append(j)
            best.append(reached)
    return ThresholdFit(tuple(thresholds), tuple(unmet), tuple(best), tuple(untuned))


# ---------------------------------------------------------------- reject option


@dataclass(frozen=True)
class CurvePoint:
    """One point of the coverage-accuracy curve: keep texts whose top probability reaches
    ``threshold``; ``coverage`` of all texts are kept, ``accuracy`` of them are right."""

    threshold: float
    coverage: float
    accuracy: float

    def to_json(self) -> dict[str, float]:
        """The JSON-ready form."""
        return {"threshold": self.threshold, "coverage": self.coverage, "accuracy": self.accuracy}


def coverage_curve(probs: np.ndarray, targets: np.ndarray) -> list[CurvePoint]:
    """Coverage and accuracy of the kept texts at every distinct confidence, most confident
    first (single-label; ``targets`` (N,) class ids).

    Example:
        >>> [p.coverage for p in coverage_curve(np.array([[0.9, 0.1], [0.4, 0.6]]),
        ...                                     np.array([0, 0]))]
        [0.5, 1.0]
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[0] == 0:
        return []
    conf = p.max(axis=1)
    right = (p.argmax(axis=1) == np.asarray(targets)).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    kept_right = np.cumsum(right)
    # the last text of each run of equal confidence: a threshold keeps all of them or none
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))
    n = len(conf)
    return [
        CurvePoint(float(conf[i]), float((i + 1) / n), float(kept_right[i] / (i + 1))) for i in ends
    ]


def reject_point(probs: np.ndarray, targets: np.ndarray, threshold: float | None) -> CurvePoint:
    """Coverage and accuracy at ``threshold`` (texts whose top probability is below it are
    abstained on; None: none are).

    Example:
        >>> reject_point(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]), 0.7).coverage
        0.5
    """
    p = np.asarray(probs, dtype=np.float64)
    t = 0.0 if threshold is None else threshold
    if p.shape[0] == 0:
        return CurvePoint(t, 0.0, 0.0)
    kept = p.max(axis=1) >= t
    right = p.argmax(axis=1) == np.asarray(targets)
    accuracy = float(right[kept].mean()) if kept.any() else 0.0
    return CurvePoint(t, float(kept.mean()), accuracy)


def choose_reject(
    probs: np.ndarray, targets: np.ndarray, target_accuracy: float
) -> CurvePoint | None:
    """The reject point with the largest coverage whose accuracy reaches ``target_accuracy``.

    Its threshold lies halfway between the last confidence kept and the next lower one (0
    when every text is kept), so dev is decided exactly as at the point.

    Returns:
        The point, or None when not even the most confident texts reach the target.

    Example:
        >>> choose_reject(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]), 0.9).coverage
        0.5
    """
    curve = coverage_curve(probs, targets)
    meets = [point for point in curve if point.accuracy >= target_accuracy]
    if not meets:
        return None
    best = max(meets, key=lambda point: point.coverage)
    if best.coverage >= 1.0:
        return CurvePoint(0.0, 1.0, best.accuracy)
    conf = np.asarray(probs, dtype=np.float64).max(axis=1)
    return CurvePoint(_below(conf, best.threshold), best.coverage, best.accuracy)


# ---------------------------------------------------------------- the saved calibration


class _CalibrationFile(BaseModel):
    """The schema of ``calibration.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = Field(1, ge=1, le=1)
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False)
    thresholds: list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] | None = Field(
        None, description="Multi-label: one per label."
    )
    abstain_below: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    fitted_on: str = "dev"
    details: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Calibration:
    """What :class:`~fenlei.predict.Predictor` applies on top of the model.

    Attributes:
        temperature: logits are divided by it before the softmax/sigmoid (1.0: unchanged).
        thresholds: multi-label: a threshold per label (None: the run's ``eval.threshold``).
        abstain_below: single-label: a text whose top probability is below it is abstained
            on (None: never).
        details: how the values were chosen (targets, dev numbers), kept for people.
    """

    temperature: float = 1.0
    thresholds: tuple[float, ...] | None = None
    abstain_below: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_identity(self) -> bool:
        """Nothing fitted: the model's own probabilities and the configured rule."""
        return self.temperature == 1.0 and self.thresholds is None and self.abstain_below is None

    def scale(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) logits divided by the temperature (the same array when it is 1)."""
        return logits if self.temperature == 1.0 else logits / np.float32(self.temperature)

    def rule(
        self, *, multi_label: bool, threshold: float | tuple[float, ...] = 0.5
    ) -> DecisionRule:
        """The decision rule with these thresholds and reject point (``threshold``: the
        global one when there are no per-label thresholds)."""
        return DecisionRule(
            multi_label=multi_label,
            threshold=self.thresholds if self.thresholds is not None else threshold,
            abstain_below=self.abstain_below,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready form: ``calibration.json``."""
        return _CalibrationFile(
            temperature=self.temperature,
            thresholds=None if self.thresholds is None else list(self.thresholds),
            abstain_below=self.abstain_below,
            details=self.details,
        ).model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Any, *, path: Path | None = None) -> Calibration:
        """Read what :meth:`to_json` wrote.

        Raises:
            ArtifactError: ``data`` does not follow the schema (names the field).
        """
        try:
            parsed = _CalibrationFile.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise ArtifactError(
                f"{path or CALIBRATION_FILE}: {where}: {first['msg']}; restore the run folder "
                "or train again"
            ) from exc
        return cls(
            temperature=parsed.temperature,
            thresholds=None if parsed.thresholds is None else tuple(parsed.thresholds),
            abstain_below=parsed.abstain_below,
            details=dict(parsed.details),
        )


def read_calibration(run_dir: Path, n_labels: int) -> Calibration:
    """The run folder's ``calibration.json``; an identity calibration when there is none
    (run folders written before calibration existed).

    Call it on a folder whose manifest is verified (:func:`fenlei.artifact.load_run`): the
    file is then the one training wrote.

    Raises:
        ArtifactError: the file is unreadable, does not follow the schema, or has a number
            of thresholds other than ``n_labels``.
    """
    path = run_dir / CALIBRATION_FILE
    if not path.is_file():
        return Calibration()
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ArtifactError(f"{path} is larger than {_MAX_FILE_BYTES >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
    calibration = Calibration.from_json(data, path=path)
    if calibration.thresholds is not None and len(calibration.thresholds) != n_labels:
        raise ArtifactError(
            f"{path}: {len(calibration.thresholds)} thresholds for {n_labels} labels; restore "
            "the run folder or train again"
        )
    return calibration
