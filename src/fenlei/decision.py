"""The decision rule: turning probabilities into labels, in one place.

:class:`DecisionRule` is the only code that decides which label(s) a text gets. The
:class:`~fenlei.predict.Predictor`, :func:`~fenlei.evaluate.evaluate`, the training loop's dev
metric (which drives early stopping) and the HTTP service all call it, so they cannot
disagree. Single-label: the most probable label, or none (the text is *abstained* on) when
its probability is below the rule's reject point. Multi-label: every label whose probability
reaches its threshold (one global threshold, or one per label). The per-label thresholds and
the reject point are tuned on dev (:mod:`fenlei.calibrate`).

Example:
    >>> rule = DecisionRule(multi_label=True, threshold=0.5)
    >>> rule.choose(np.array([[0.7, 0.2, 0.6]])).tolist()
    [[True, False, True]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Decided", "DecisionRule", "decide"]


@dataclass(frozen=True)
class DecisionRule:
    """How probabilities (N, C) become chosen labels.

    Args:
        multi_label: each label is decided on its own (sigmoid outputs).
        threshold: multi-label only: one threshold for every label, or one per label.
        abstain_below: single-label only: a text whose top probability is below it gets no
            label (it is abstained on); None: every text gets its most probable label.
    """

    multi_label: bool = False
    threshold: float | tuple[float, ...] = 0.5
    abstain_below: float | None = None

    def thresholds(self, n_labels: int) -> np.ndarray:
        """The threshold of each label, shape (C,)."""
        if isinstance(self.threshold, tuple):
            if len(self.threshold) != n_labels:
                raise ValueError(
                    f"{len(self.threshold)} thresholds for {n_labels} labels; give one per label"
                )
            return np.asarray(self.threshold, dtype=np.float64)
        return np.full(n_labels, float(self.threshold))

    def choose(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) probabilities -> (N, C) booleans: the labels each text gets."""
        probs = np.asarray(probs)
        if self.multi_label:
            return probs >= self.thresholds(probs.shape[1])
        chosen = np.zeros(probs.shape, dtype=bool)
        if probs.shape[0]:
            chosen[np.arange(probs.shape[0]), probs.argmax(axis=1)] = True
            chosen[self.abstained(probs)] = False
        return chosen

    def abstained(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) probabilities -> (N,) booleans: the texts the rule gives no label (their
        top probability is below :attr:`abstain_below`; never for multi-label)."""
        probs = np.asarray(probs)
        if self.multi_label or self.abstain_below is None or probs.shape[0] == 0:
            return np.zeros(probs.shape[0], dtype=bool)
        out: np.ndarray = probs.max(axis=1) < self.abstain_below
        return out

    def predicted(self, probs: np.ndarray) -> np.ndarray:
        """Predictions in scikit-learn's shape: (N,) class indices, or (N, C) 0/1 for
        multi-label. Single-label: the most probable label also where the rule abstains
        (scores at full coverage; :meth:`abstained` says which)."""
        if self.multi_label:
            return self.choose(probs).astype(int)
        best: np.ndarray = np.asarray(probs).argmax(axis=1)
        return best


@dataclass(frozen=True)
class Decided:
    """One text's decision: the best label and its probability, every chosen label, and
    whether the rule abstained (then ``labels`` is empty and ``label`` is still the most
    probable one)."""

    label: str
    score: float
    labels: tuple[str, ...]
    abstained: bool = False


def decide(probs: np.ndarray, labels: Sequence[str], rule: DecisionRule) -> list[Decided]:
    """Apply ``rule`` to probabilities (N, C) whose columns are ``labels``.

    ``label`` and ``score`` are the most probable label and its probability; ``labels`` is
    what the rule chose (for multi-label, possibly none or several; none when the rule
    abstains, which ``abstained`` says).

    Example:
        >>> decide(np.array([[0.2, 0.8]]), ["neg", "pos"], DecisionRule())[0].label
        'pos'
    """
    probs = np.asarray(probs)
    chosen = rule.choose(probs)
    abstained = rule.abstained(probs)
    best = probs.argmax(axis=1) if probs.shape[0] else np.zeros(0, dtype=int)
    names = tuple(labels)
    return [
        Decided(
            label=names[int(b)],
            score=float(row[int(b)]),
            labels=tuple(names[j] for j in np.flatnonzero(pick)),
            abstained=bool(out),
        )
        for row, b, pick, out in zip(probs, best, chosen, abstained, strict=True)
    ]
