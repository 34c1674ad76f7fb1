"""Reference statistics of the training distribution, and the population stability index.

Training writes ``reference.json`` into the run folder: for each monitored statistic the bin
edges and the share of dev texts per bin. A server histograms recent traffic on the same
edges and compares with :func:`psi`. Statistics: text length (characters), unknown-token
rate, predicted label, and confidence (top probability).

Conventional reading of PSI: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 drifted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fenlei.predict import ServablePredictor, TextStats

__all__ = [
    "DRIFT_THRESHOLD",
    "STATISTICS",
    "WARN_THRESHOLD",
    "bin_shares",
    "psi",
    "psi_noise",
    "reference_stats",
    "statistics",
    "text_statistics",
]

WARN_THRESHOLD = 0.1
DRIFT_THRESHOLD = 0.2
STATISTICS = ("length", "unknown_rate", "label", "confidence")
_UNKNOWN_EDGES = [0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
_CONFIDENCE_EDGES = [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
_EPS = 1e-4


def _length_edges(lengths: Sequence[int], bins: int = 10) -> list[float]:
    quantiles = np.quantile(np.asarray(lengths, dtype=float), np.linspace(0, 1, bins + 1))
    edges = sorted({0.0, *(float(q) for q in quantiles[1:-1]), math.inf})
    return edges


def bin_shares(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    """Share of ``values`` per bin ``[edges[i], edges[i+1])`` (last bin closed)."""
    if not values:
        return [0.0] * (len(edges) - 1)
    inner = np.asarray(edges[1:-1], dtype=float)
    index = np.searchsorted(inner, np.asarray(values, dtype=float), side="right")
    counts = np.bincount(index, minlength=len(edges) - 1)
    return (counts / counts.sum()).tolist()  # type: ignore[no-any-return]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index between two distributions over the same bins.

    Example:
        >>> round(psi([0.5, 0.5], [0.5, 0.5]), 3)
        0.0
    """
    e = np.clip(np.asarray(expected, dtype=float), _EPS, None)
    a = np.clip(np.asarray(actual, dtype=float), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_noise(expected: Sequence[float], n_expected: int, n_actual: int) -> float:
    """The PSI expected from sampling alone when nothing has changed.

    With counts from two samples of the same distribution over ``k`` occupied bins, PSI is
    about a chi-square with ``k - 1`` degrees of freedom scaled by ``1/n_expected +
    1/n_actual``; its mean is that product. On a 100-text dev set and a 200-text window with
    10 length bins this is already 0.14, which is why small reference sets look drifted.

    Example:
        >>> round(psi_noise([0.25] * 4, 1000, 1000), 4)
        0.006
    """
    occupied = sum(1 for share in expected if share > 0)
    if n_expected <= 0 or n_actual <= 0:
        return math.inf
    return max(0, occupied - 1) * (1 / n_expected + 1 / n_actual)


def statistics(stats: TextStats, probs: np.ndarray) -> dict[str, list[float]]:
    """Per-text values of every monitored statistic, from a predictor's input statistics and
    its probabilities (N, C); labels as label indices. The drift monitor calls this too, so
    training and serving measure the same thing.
    """
    probs = np.asarray(probs)
    empty = probs.shape[0] == 0
    return {
        "length": stats.length.astype(float).tolist(),
        "unknown_rate": stats.unknown_rate.astype(float).tolist(),
        "label": [] if empty else probs.argmax(axis=1).astype(float).tolist(),
        "confidence": [] if empty else probs.max(axis=1).astype(float).tolist(),
    }


def text_statistics(
    predictor: ServablePredictor, texts: Sequence[str], *, probs: np.ndarray | None = None
) -> dict[str, list[float]]:
    """Per-text values of every monitored statistic (labels as label indices).

    Args:
        predictor: what scores the texts.
        texts: the texts.
        probs: the predictor's probabilities of ``texts`` when already computed (N, C);
            then the model does not run again.
    """
    if probs is None:
        scored = predictor.score(texts)
        return statistics(scored.stats, scored.probs)
    if len(probs) != len(texts):
        raise ValueError(f"{len(probs)} rows of probabilities for {len(texts)} texts")
    return statistics(predictor.text_stats(texts), probs)


def reference_stats(
    predictor: ServablePredictor, texts: Sequence[str], *, probs: np.ndarray | None = None
) -> dict[str, Any]:
    """Bin edges and reference shares of every statistic, measured on ``texts`` (dev).

    Args:
        predictor: the trained predictor.
        texts: the reference texts (the dev split).
        probs: the predictor's probabilities of ``texts`` (N, C), when already computed (the
            pipeline predicts dev once for every post-training step).

    Returns:
        ``{"n": ..., "thresholds": {...}, "statistics": {name: {"edges", "shares"}}}``,
        JSON-ready (an infinite edge is written as ``null``).
    """
    values = text_statistics(predictor, texts, probs=probs)
    n_labels = len(predictor.labels)
    edges = {
        "length": _length_edges([int(v) for v in values["length"]]),
        "unknown_rate": _UNKNOWN_EDGES,
        "label": [i - 0.5 for i in range(n_labels + 1)],
        "confidence": _CONFIDENCE_EDGES,
    }
    stats = {
        name: {
            "edges": [None if math.isinf(x) else x for x in edges[name]],
            "shares": bin_shares(values[name], edges[name]),
        }
        for name in STATISTICS
    }
    return {
        "n": len(texts),
        "labels": list(predictor.labels),
        "thresholds": {"warn": WARN_THRESHOLD, "drift": DRIFT_THRESHOLD},
        "statistics": stats,
    }
