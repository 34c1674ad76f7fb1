"""Metrics (scikit-learn) and plots (matplotlib) for a predictor on a labelled dataset.

Enter through :func:`evaluate` (predict a labelled dataset, return a JSON-ready dict),
:func:`score_probabilities` (score probabilities already computed, as a typed
:class:`~fenlei.records.Scores`; the pipeline predicts dev and test once for every step) and
:func:`write_plots`, which draws the confusion matrix and the training curves into ``plots/``.
Labels are decided by the predictor's :class:`~fenlei.decision.DecisionRule`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fenlei.artifact import atomic_write
from fenlei.calibrate import coverage_curve, reject_point
from fenlei.data import Dataset
from fenlei.decision import DecisionRule
from fenlei.errors import DataError
from fenlei.plotting import save_png
from fenlei.predict import ServablePredictor
from fenlei.records import ClassScores, EpochRecord, Scores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CURVE_COVERAGES",
    "draw_confusion",
    "draw_history",
    "evaluate",
    "label_targets",
    "plot_confusion",
    "plot_history",
    "reject_report",
    "score_probabilities",
    "write_plots",
]

logger = logging.getLogger(__name__)


def label_targets(dataset: Dataset, labels: Sequence[str], multi_label: bool) -> np.ndarray:
    """The dataset's labels as targets: (N,) label indices, or (N, C) 0/1 for multi-label.

    Raises:
        DataError: a label is not one of ``labels`` (names the file and row).
    """
    labels = tuple(labels)
    index = {name: i for i, name in enumerate(labels)}
    for ex in dataset.examples:
        for lab in ex.labels:
            if lab not in index:
                raise DataError(
                    f"label {lab!r} is not one the model knows ({', '.join(labels)})",
                    path=dataset.source,
                    row=ex.source_row,
                )
    if multi_label:
        y = np.zeros((len(dataset), len(labels)), dtype=int)
        for row, ex in enumerate(dataset.examples):
            y[row, [index[lab] for lab in ex.labels]] = 1
        return y
    return np.array([index[ex.labels[0]] for ex in dataset.examples])


def score_probabilities(
    probs: np.ndarray, dataset: Dataset, labels: Sequence[str], rule: DecisionRule
) -> Scores:
    """Score probabilities already computed for ``dataset`` (the pipeline predicts once).

    Args:
        probs: (N, C) probabilities of ``dataset``'s texts, columns in ``labels`` order.
        dataset: the labelled examples the probabilities are of.
        labels: the label names.
        rule: how probabilities become decided labels (the predictor's).

    Returns:
        Accuracy, macro/micro F1, per-class precision/recall/F1, the confusion matrix
        (single-label) and ROC-AUC (binary).

    Raises:
        DataError: a label of the dataset is unknown to the model.
        ValueError: ``probs`` does not have one row per text and one column per label.

    Example:
        >>> p = predictor.predict_proba(dev.texts)  # doctest: +SKIP
        >>> score_probabilities(p, dev, predictor.labels, predictor.rule).n  # doctest: +SKIP
        215
    """
    names = tuple(labels)
    probs = np.asarray(probs)
    if probs.shape != (len(dataset), len(names)):
        raise ValueError(
            f"probabilities of shape {probs.shape} for {len(dataset)} texts x {len(names)} labels"
        )
    y_true = label_targets(dataset, names, rule.multi_label)
    y_pred = rule.predicted(probs)
    label_ids = list(range(len(names)))
    from sklearn.metrics import (  # here, not at import: training never loads them
        accuracy_score,
        classification_report,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    report = classification_report(
        y_true,
        y_pred,
        labels=None if rule.multi_label else label_ids,
        target_names=list(names),
        output_dict=True,
        zero_division=0,
    )
    matrix, auc = None, None
    if not rule.multi_label:
        matrix = confusion_matrix(y_true, y_pred, labels=label_ids).tolist()
        if len(names) == 2 and len(set(y_true.tolist())) == 2:
            auc = float(roc_auc_score(y_true, probs[:, 1]))
    return Scores(
        n=len(dataset),
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        micro_f1=float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        per_class={
            name: ClassScores(
                precision=float(report[name]["precision"]),
                recall=float(report[name]["recall"]),
                f1=float(report[name]["f1-score"]),
                support=int(report[name]["support"]),
            )
            for name in names
        },
        confusion_matrix=matrix,
        roc_auc=auc,
    )


def evaluate(predictor: ServablePredictor, dataset: Dataset) -> dict[str, Any]:
    """Accuracy, macro/micro F1, per-class precision/recall/F1, confusion matrix, ROC-AUC.

    Predicts ``dataset`` and scores it with :func:`score_probabilities`.

    Args:
        predictor: a trained model.
        dataset: labelled examples whose labels the model knows.

    Returns:
        A JSON-ready dict: ``accuracy``, ``macro_f1``, ``micro_f1``, ``per_class``,
        ``confusion_matrix`` (single-label), ``roc_auc`` (binary), ``n``, and for a
        single-label model ``reject`` (:func:`reject_report`: the coverage-accuracy curve and
        the rule's reject point). The scores are those of the most probable label of every
        text (full coverage); ``reject`` says what the texts kept at the reject point score.

    Raises:
        DataError: a label of the dataset is unknown to the model.

    Example:
        >>> evaluate(Predictor.from_run("runs/demo"), load_table("test.csv"))  # doctest: +SKIP
    """
    rule = predictor.rule
    y_true = label_targets(dataset, predictor.labels, rule.multi_label)  # before predicting
    probs = predictor.predict_proba(dataset.texts)
    metrics = score_probabilities(probs, dataset, predictor.labels, rule).to_json()
    if not rule.multi_label:
        metrics["reject"] = reject_report(probs, y_true, rule)
    return metrics


# coverages at which `fenlei evaluate` shows the coverage-accuracy curve
CURVE_COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def reject_report(probs: np.ndarray, y_true: np.ndarray, rule: DecisionRule) -> dict[str, Any]:
    """The coverage-accuracy curve of a single-label model and the rule's point on it.

    Args:
        probs: (N, C) probabilities.
        y_true: (N,) true label indices.
        rule: the decision rule (its ``abstain_below`` is the chosen point).

    Returns:
        ``{"chosen": {"threshold", "coverage", "accuracy"}, "curve": [...]}``: the chosen
        point (threshold 0, full coverage when the rule never abstains) and, for each of
        :data:`CURVE_COVERAGES`, the most confident texts that make up at least that share
        with their accuracy and the lowest confidence kept.

    Example:
        >>> reject_report(probs, y, predictor.rule)["chosen"]["coverage"]  # doctest: +SKIP
        0.87
    """
    curve = coverage_curve(probs, y_true)
    shown = []
    for share in CURVE_COVERAGES:
        point = next((p for p in curve if p.coverage >= share - 1e-12), None)
        if point is not None and point not in shown:
            shown.append(point)
    return {
        "chosen": reject_point(probs, y_true, rule.abstain_below).to_json(),
        "curve": [p.to_json() for p in shown],
    }


def _save_figure(draw: Callable[[Figure], object], path: Path, size: tuple[float, float]) -> None:
    atomic_write(path, lambda tmp: save_png(draw, tmp, size=size))


CONFUSION_VALUES_UP_TO = 30


def draw_confusion(fig: Figure, matrix: list[list[int]], labels: Sequence[str], split: str) -> None:
    """Draw a confusion matrix (rows: true, columns: predicted) of ``split`` on ``fig``."""
    from sklearn.metrics import ConfusionMatrixDisplay

    ax = fig.add_subplot()
    many = len(labels) > CONFUSION_VALUES_UP_TO  # a number per cell is unreadable and slow
    ConfusionMatrixDisplay(np.array(matrix), display_labels=list(labels)).plot(
        ax=ax, cmap="Blues", colorbar=many, xticks_rotation=45, include_values=not many
    )
    ax.set_title(f"Confusion matrix ({split})")


MAX_CONFUSION_INCHES = 16.0


def plot_confusion(
    matrix: list[list[int]], labels: tuple[str, ...], path: Path, *, split: str = "test"
) -> None:
    """Draw a confusion matrix (rows: true, columns: predicted) of ``split`` as a PNG."""
    # capped: at 151 labels the uncapped figure was 7,465 px square, 2.1 GiB and 23 s
    size = min(max(5.0, 0.55 * len(labels) + 2), MAX_CONFUSION_INCHES)
    _save_figure(lambda fig: draw_confusion(fig, matrix, labels, split), path, (size, size))


def draw_history(fig: Figure, history: Sequence[EpochRecord]) -> None:
    """Draw training loss, dev loss and dev accuracy per epoch on ``fig``."""
    epochs = [r.epoch for r in history]
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [r.train_loss for r in history], marker="o", label="train loss")
    left.plot(epochs, [r.dev["loss"] for r in history], marker="o", label="dev loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [r.dev["accuracy"] for r in history], marker="o", label="dev accuracy")
    right.plot(epochs, [r.dev["macro_f1"] for r in history], marker="o", label="dev macro-F1")
    right.set_xlabel("epoch")
    right.legend()
    fig.suptitle("Training curves")


def plot_history(history: list[EpochRecord], path: Path) -> None:
    """Draw training loss, dev loss and dev accuracy per epoch as a PNG."""
    _save_figure(lambda fig: draw_history(fig, history), path, (10, 4))


def write_plots(
    run_dir: Path,
    labels: tuple[str, ...],
    history: list[EpochRecord],
    test_metrics: dict[str, Any] | None,
    *,
    split: str = "test",
) -> list[Path]:
    """Write ``plots/training_curves.png`` and, when known, ``plots/confusion_matrix.png``
    (of ``split``, the split ``test_metrics`` are of)."""
    written = []
    if history:
        path = run_dir / "plots" / "training_curves.png"
        plot_history(history, path)
        written.append(path)
    if test_metrics and "confusion_matrix" in test_metrics:
        path = run_dir / "plots" / "confusion_matrix.png"
        plot_confusion(test_metrics["confusion_matrix"], labels, path, split=split)
        written.append(path)
    return written
