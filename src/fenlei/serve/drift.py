"""Drift monitoring: recent traffic against the training distribution, per statistic.

Training writes ``reference.json`` (bin edges and dev shares for text length, unknown-token
rate, predicted label and confidence; see :mod:`fenlei.reference`). A :class:`DriftMonitor`
keeps the last ``window`` texts' values of each statistic, histograms them on the same
edges and reports the population stability index (PSI). Thresholds: PSI < 0.1 stable,
0.1-0.2 warn (moderate shift), > 0.2 drifted.

The per-text values come from :func:`fenlei.reference.statistics`, the function that
measured the reference, so training and serving cannot measure differently. The service
hands over the input statistics its predictor computed while scoring a batch
(:meth:`~fenlei.predict.Predictor.score`), so a served batch is tokenized once.

Example:
    >>> monitor = DriftMonitor.from_predictor(predictor, window=1000)  # doctest: +SKIP
    >>> monitor.observe(texts, probs); monitor.report("intents").drifted  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fenlei.errors import ArtifactError
from fenlei.predict import ServablePredictor, TextStats
from fenlei.reference import (
    DRIFT_THRESHOLD,
    STATISTICS,
    WARN_THRESHOLD,
    bin_shares,
    psi,
    psi_noise,
    statistics,
)
from fenlei.serve.schemas import DriftReport, DriftStatistic

__all__ = ["DriftMonitor", "load_reference"]

MeasureTexts = Callable[[Sequence[str]], TextStats]


def load_reference(run_dir: Path) -> dict[str, Any] | None:
    """``reference.json`` of a run folder with edges as floats (``None`` -> inf); None if absent.

    Raises:
        ArtifactError: the file exists but is not a valid reference.
    """
    path = run_dir / "reference.json"
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
        for stat in ref["statistics"].values():
            stat["edges"] = [math.inf if e is None else float(e) for e in stat["edges"]]
            stat["shares"] = [float(s) for s in stat["shares"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path} is not a valid reference file: {exc}") from exc
    return dict(ref)


def _status(value: float | None, warn: float, drift: float) -> str:
    if value is None:
        return "insufficient_data"
    if value > drift:
        return "drifted"
    return "warn" if value > warn else "stable"


class DriftMonitor:
    """Rolling window of per-text statistics and their PSI against the reference.

    Thread-safe: :meth:`observe` runs in the inference thread, :meth:`report` on the loop.
    """

    def __init__(
        self,
        reference: dict[str, Any],
        *,
        text_stats: MeasureTexts,
        window: int = 1000,
        min_samples: int = 100,
    ) -> None:
        self.reference = reference
        self.text_stats = text_stats
        self.window = window
        self.min_samples = min_samples
        thresholds = reference.get("thresholds", {})
        self.warn = float(thresholds.get("warn", WARN_THRESHOLD))
        self.drift = float(thresholds.get("drift", DRIFT_THRESHOLD))
        self.names = [s for s in STATISTICS if s in reference["statistics"]]
        self._values: dict[str, deque[float]] = {s: deque(maxlen=window) for s in self.names}
        self._lock = threading.Lock()

    @classmethod
    def from_predictor(
        cls, predictor: ServablePredictor, *, window: int = 1000, min_samples: int = 100
    ) -> DriftMonitor | None:
        """A monitor for a predictor loaded from a run folder; None without reference.json."""
        run_dir = predictor.info().run_dir
        reference = None if run_dir is None else load_reference(run_dir)
        if reference is None:
            return None
        return cls(
            reference, text_stats=predictor.text_stats, window=window, min_samples=min_samples
        )

    def observe(
        self, texts: Sequence[str], probs: np.ndarray, *, stats: TextStats | None = None
    ) -> None:
        """Add a batch of texts and their probabilities (N, n_labels) to the window.

        Args:
            texts: the batch's texts.
            probs: their probabilities (N, C).
            stats: their input statistics, when the predictor already measured them while
                scoring (else they are measured here, which tokenizes the texts again).
        """
        if len(texts) == 0:
            return
        values = statistics(self.text_stats(texts) if stats is None else stats, probs)
        with self._lock:
            for name in self.names:
                self._values[name].extend(values[name])

    def psi_values(self) -> dict[str, float | None]:
        """PSI per statistic; None while the window holds fewer than ``min_samples``."""
        with self._lock:
            snapshot = {name: list(vals) for name, vals in self._values.items()}
        out: dict[str, float | None] = {}
        for name, vals in snapshot.items():
            if len(vals) < self.min_samples:
                out[name] = None
                continue
            stat = self.reference["statistics"][name]
            out[name] = round(psi(stat["shares"], bin_shares(vals, stat["edges"])), 6)
        return out

    @property
    def size(self) -> int:
        """Texts currently in the window."""
        with self._lock:
            return max((len(v) for v in self._values.values()), default=0)

    def _noise(self, name: str, window: int) -> float | None:
        n_reference = int(self.reference.get("n", 0))
        if window < self.min_samples or n_reference <= 0:
            return None
        shares = self.reference["statistics"][name]["shares"]
        return round(psi_noise(shares, n_reference, window), 6)

    def report(self, model: str) -> DriftReport:
        """PSI, its sampling noise and a status per statistic; whether any has drifted."""
        values = self.psi_values()
        window = self.size
        stats = {
            name: DriftStatistic(
                psi=v,
                status=_status(v, self.warn, self.drift),  # type: ignore[arg-type]
                noise=self._noise(name, window),
            )
            for name, v in values.items()
        }
        return DriftReport(
            model=model,
            window=self.size,
            window_size=self.window,
            min_samples=self.min_samples,
            thresholds={"warn": self.warn, "drift": self.drift},
            drifted=any(s.status == "drifted" for s in stats.values()),
            statistics=stats,
        )

    def reset(self) -> None:
        """Empty the window (e.g. after a retrained model is deployed)."""
        with self._lock:
            for vals in self._values.values():
                vals.clear()
