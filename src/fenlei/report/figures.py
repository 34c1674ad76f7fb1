"""The report's figures, each a PNG (bytes) drawn through :mod:`fenlei.plotting`.

Every figure has a size cap, so a report of 150+ labels or 25,000 texts stays small and
quick: the heat map shows the most frequent :data:`HEATMAP_LABELS` labels, the
precision-recall plot the :data:`PR_CLASSES` most frequent classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fenlei.calibrate import ECE_BINS
from fenlei.evaluate import draw_history
from fenlei.plotting import render
from fenlei.records import EpochRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "HEATMAP_LABELS",
    "PR_CLASSES",
    "confusion_heatmap",
    "length_histogram",
    "pr_curves",
    "reliability_diagram",
    "training_curves",
]

HEATMAP_LABELS = 40  # the heat map's rows and columns at most
PR_CLASSES = 8  # precision-recall curves drawn at most
ANNOTATED_LABELS = 6  # a heat map this small writes each cell's share (text is slow to lay out)
DPI = 80


def length_histogram(lengths: Mapping[str, np.ndarray]) -> bytes:
    """Text lengths (characters) per split, up to the 99th percentile of all texts."""
    every = np.concatenate([v for v in lengths.values() if len(v)] or [np.zeros(1)])
    top = max(float(np.percentile(every, 99)), 1.0)
    bins = np.linspace(0, top, 41).tolist()

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for name, values in lengths.items():
            kept = np.clip(values, 0, top)
            ax.hist(kept, bins=bins, histtype="step", density=True, label=name, linewidth=1.5)
        ax.set_xlabel("characters (longer texts counted in the last bin)")
        ax.set_ylabel("share of texts")
        ax.legend()

    return render(draw, size=(6.4, 3.2), dpi=DPI)


def confusion_heatmap(matrix: np.ndarray, labels: Sequence[str], split: str) -> bytes:
    """The row-normalised confusion matrix of the most frequent labels (true in rows)."""
    support = matrix.sum(axis=1)
    keep = np.sort(np.argsort(-support, kind="stable")[:HEATMAP_LABELS])
    shown = matrix[np.ix_(keep, keep)].astype(np.float64)
    rows = np.maximum(matrix[keep].sum(axis=1, keepdims=True), 1)
    share = shown / rows
    names = [labels[i] for i in keep]
    side = min(4.0 + 0.28 * len(names), 14.0)

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(names) <= ANNOTATED_LABELS:
            for (i, j), value in np.ndenumerate(share):
                color = "white" if value > 0.5 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
        cut = "" if len(names) == len(labels) else f", {len(names)} most frequent labels"
        ax.set_title(f"Confusion matrix ({split}, share of each true label{cut})")
        fig.colorbar(image, ax=ax, shrink=0.7)

    return render(draw, size=(side, side), dpi=DPI)


def reliability_diagram(confidence: np.ndarray, correct: np.ndarray, split: str) -> bytes:
    """Accuracy against mean confidence in :data:`~fenlei.calibrate.ECE_BINS` equal bins."""
    which = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    counts = np.bincount(which, minlength=ECE_BINS)
    hits = np.bincount(which, weights=correct.astype(np.float64), minlength=ECE_BINS)
    conf = np.bincount(which, weights=confidence, minlength=ECE_BINS)
    used = counts > 0
    centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS

    def draw(fig: Figure) -> None:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        top.plot([0, 1], [0, 1], ls="--", c="0.6", label="perfectly calibrated")
        top.bar(
            centres[used],
            hits[used] / counts[used],
            width=1 / ECE_BINS,
            edgecolor="C0",
            alpha=0.6,
            label="accuracy",
        )
        top.plot(
            conf[used] / counts[used],
            hits[used] / counts[used],
            "o",
            c="C3",
            ms=4,
            label="mean confidence",
        )
        top.set_ylabel("accuracy")
        top.set_title(f"Reliability ({split})")
        top.legend(fontsize=8)
        bottom.bar(centres, counts, width=1 / ECE_BINS, color="0.5")
        bottom.set_xlabel("confidence")
        bottom.set_ylabel("texts")

    return render(draw, size=(5.0, 5.0), dpi=DPI)


def pr_curves(probs: np.ndarray, onehot: np.ndarray, labels: Sequence[str], split: str) -> bytes:
    """Precision against recall of the :data:`PR_CLASSES` most frequent classes (of the
    positive class alone for two labels)."""
    from sklearn.metrics import precision_recall_curve  # here: pandas comes with it

    support = onehot.sum(axis=0)
    order = np.argsort(-support, kind="stable")
    classes = [1] if len(labels) == 2 and onehot.shape[1] == 2 else list(order[:PR_CLASSES])
    classes = [c for c in classes if support[c] > 0]

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for c in classes:
            precision, recall, _ = precision_recall_curve(onehot[:, c], probs[:, c])
            ax.plot(recall, precision, label=f"{labels[c]} (n={int(support[c])})", lw=1.3)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        cut = ""
        if len(labels) > 2 and len(classes) < len(labels):
            cut = f", {len(classes)} most frequent of {len(labels)}"
        ax.set_title(f"Precision-recall ({split}{cut})")
        ax.legend(fontsize=8, loc="lower left")

    return render(draw, size=(6.0, 4.2), dpi=DPI)


def training_curves(history: Sequence[EpochRecord]) -> bytes:
    """Loss and dev scores per epoch (or per solve of a solved family)."""
    return render(lambda fig: draw_history(fig, history), size=(9.0, 3.6), dpi=DPI)
