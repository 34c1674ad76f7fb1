"""The report's sections that read the model's outputs: scores, confusions, calibration,
the most confident mistakes (with token highlights), latency and size, label issues.

Each function returns plain values for the template; none of them formats HTML (the
template escapes every text).
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fenlei.calibrate import expected_calibration_error
from fenlei.ensemble import EnsemblePredictor
from fenlei.errors import DataError, FenleiError
from fenlei.explain import Explanation
from fenlei.predict import Predictor

__all__ = [
    "Mistake",
    "Segment",
    "calibration_points",
    "latency",
    "mistakes",
    "read_label_issues",
    "segments",
    "top_confusions",
]

MAX_SHOWN_CHARS = 1500  # of a mistake's text; the rest is cut with an ellipsis
MAX_ISSUES = 25
MAX_CELL_CHARS = 400
_TOWARDS = (230, 97, 1)  # orange: pushes towards the (wrong) predicted label
_AGAINST = (33, 102, 172)  # blue: pushes away from it


@dataclass(frozen=True)
class Segment:
    """A run of a shown text: plain (no ``style``) or a scored word with its highlight."""

    text: str
    style: str = ""
    title: str = ""


@dataclass(frozen=True)
class Mistake:
    """A confidently wrong prediction: the text, what it is and what the model said."""

    text: str
    lang: str
    true: str
    predicted: str
    confidence: float
    segments: list[Segment]
    explained: bool


def top_confusions(
    matrix: np.ndarray, labels: Sequence[str], k: int = 15
) -> list[tuple[str, str, int, float]]:
    """The ``k`` most frequent (true, predicted, count, share of the true label) errors."""
    off = matrix.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = matrix.sum(axis=1)
    out = []
    for i, j in zip(*np.unravel_index(flat, off.shape), strict=True):
        if off[i, j] == 0:
            break
        out.append((labels[i], labels[j], int(off[i, j]), float(off[i, j] / max(rows[i], 1))))
    return out


def calibration_points(
    probs: np.ndarray, targets: np.ndarray, *, multi_label: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """(confidence, correct, ECE) as :func:`fenlei.calibrate.expected_calibration_error`
    counts them: the top label's probability (single-label) or every (text, label) pair."""
    if multi_label:
        confidence = np.maximum(probs, 1 - probs).ravel()
        correct = ((probs >= 0.5) == (targets > 0.5)).ravel()
    else:
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == targets
    ece = expected_calibration_error(probs, targets, multi_label=multi_label)
    return confidence.astype(np.float64), correct, ece


def segments(
    text: str, explanation: Explanation | None, limit: int = MAX_SHOWN_CHARS
) -> list[Segment]:
    """``text`` (cut at ``limit`` characters) as plain runs and highlighted words."""
    shown = text[:limit]
    tail = [Segment("…")] if len(text) > limit else []
    if explanation is None:
        return [Segment(shown), *tail]
    scale = max((abs(t.score) for t in explanation.tokens), default=0.0) or 1.0
    out, at = [], 0
    for tok in explanation.tokens:
        if tok.start < at or tok.end > limit:
            continue
        if tok.start > at:
            out.append(Segment(shown[at : tok.start]))
        alpha = min(abs(tok.score) / scale, 1.0) * 0.75
        r, g, b = _TOWARDS if tok.score > 0 else _AGAINST
        out.append(
            Segment(
                shown[tok.start : tok.end],
                style=f"background:rgba({r},{g},{b},{alpha:.2f})",
                title=f"{tok.score:+.3f}",
            )
        )
        at = tok.end
    if at < len(shown):
        out.append(Segment(shown[at:]))
    return [*out, *tail]


def _wrong_rows(probs: np.ndarray, targets: np.ndarray, multi_label: bool) -> np.ndarray:
    """Rows predicted wrongly, most confident first."""
    if multi_label:
        wrong = ((probs >= 0.5) != (targets > 0.5)).any(axis=1)
    else:
        wrong = probs.argmax(axis=1) != targets
    rows = np.flatnonzero(wrong)
    return rows[np.argsort(-probs[rows].max(axis=1), kind="stable")]


def mistakes(
    predictor: Predictor | EnsemblePredictor,
    texts: Sequence[str],
    true: Sequence[str],
    probs: np.ndarray,
    targets: np.ndarray,
    *,
    k: int,
    explain_seconds: float,
    lang_of: Any,
) -> list[Mistake]:
    """The ``k`` most confident mistakes, explained (token highlights) while the time
    budget lasts; an explanation that cannot be made leaves the text unhighlighted."""
    labels = predictor.labels
    out: list[Mistake] = []
    deadline = time.perf_counter() + explain_seconds
    can_explain = True
    for row in _wrong_rows(probs, targets, predictor.rule.multi_label)[:k]:
        text = texts[row]
        explanation = None
        if can_explain and time.perf_counter() < deadline:
            try:
                explanation = predictor.explain([text])[0]
            except FenleiError:  # no tokens, only model.onnx, captum missing: show it plain
                can_explain = False
        out.append(
            Mistake(
                text=text,
                lang=lang_of(text),
                true=true[row],
                predicted=labels[int(probs[row].argmax())],
                confidence=float(probs[row].max()),
                segments=segments(text, explanation),
                explained=explanation is not None,
            )
        )
    return out


def latency(
    predictor: Predictor | EnsemblePredictor, texts: Sequence[str], budget: float = 1.5
) -> dict[str, float]:
    """Median milliseconds of one text and of a batch of 64 on this machine (a few runs
    within ``budget`` seconds)."""
    one, batch = list(texts[:1]) or ["?"], list(texts[:64]) or ["?"]
    predictor.predict_proba(one)  # warm-up
    singles: list[float] = []
    stop = time.perf_counter() + budget / 2
    while len(singles) < 3 or (time.perf_counter() < stop and len(singles) < 50):
        started = time.perf_counter()
        predictor.predict_proba(one)
        singles.append((time.perf_counter() - started) * 1000)
    batches: list[float] = []
    stop = time.perf_counter() + budget / 2
    while not batches or (time.perf_counter() < stop and len(batches) < 10):
        started = time.perf_counter()
        predictor.predict_proba(batch)
        batches.append((time.perf_counter() - started) * 1000)
    return {
        "one_ms": statistics.median(singles),
        "batch_ms": statistics.median(batches),
        "batch": float(len(batch)),
    }


def _cells(row: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v)[:MAX_CELL_CHARS] for k, v in row.items()}


def read_label_issues(path: Path) -> tuple[list[str], list[dict[str, str]], int]:
    """The columns, the first :data:`MAX_ISSUES` rows and the number of rows of a
    ``fenlei audit`` file (``.csv``, ``.jsonl`` or ``.json``).

    Raises:
        DataError: the file cannot be read or is not one of these.
    """
    try:
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            rows: list[Any] = list(csv.DictReader(raw.splitlines()))
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        elif path.suffix == ".json":
            data = json.loads(raw)
            rows = data.get("rows", []) if isinstance(data, dict) else data
        else:
            raise DataError(
                "expected the .csv, .jsonl or .json that `fenlei audit` writes", path=str(path)
            )
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise DataError(f"cannot read the label issues ({exc})", path=str(path)) from exc
    if not all(isinstance(r, dict) for r in rows):
        raise DataError("expected one object per label issue", path=str(path))
    columns = list(rows[0]) if rows else []
    return columns, [_cells(r) for r in rows[:MAX_ISSUES]], len(rows)
