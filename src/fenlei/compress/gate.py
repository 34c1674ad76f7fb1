"""The accuracy gate: source and compressed model measured side by side on the same data.

:func:`measure` scores a predictor (accuracy, macro-F1) and times it (median batch-1
latency, texts per second in batches of 32); :func:`check_gate` refuses a compressed model
that loses more than ``max_drop`` accuracy. :func:`dev_split` rebuilds a run's own dev split
from ``splits.json`` (its source table and row numbers, recorded at training).

Example:
    >>> dev = dev_split(Path("runs/demo"), predictor.info().data)  # doctest: +SKIP
    >>> measure(predictor, dev, name="source", size_mb=1.2).accuracy  # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fenlei.after_training import SPLITS_FILE
from fenlei.config import DataConfig
from fenlei.data import Dataset, load_table
from fenlei.errors import ConfigError, DataError, FenleiError
from fenlei.evaluate import score_probabilities
from fenlei.predict import Predictor

__all__ = [
    "AccuracyGateError",
    "Measured",
    "check_gate",
    "dev_split",
    "measure",
    "recorded_split",
]

LATENCY_TEXTS = 100  # texts timed one at a time (the median is reported)
THROUGHPUT_TEXTS = 512  # texts timed in batches of THROUGHPUT_BATCH
THROUGHPUT_BATCH = 32
_SPLIT_SUFFIX = re.compile(r" \[(train|dev|test) split\]$")


class AccuracyGateError(FenleiError):
    """The compressed model lost more accuracy than allowed (``--max-drop``)."""


@dataclass(frozen=True)
class Measured:
    """One model on the gate's data: scores, speed and size.

    Attributes:
        name: ``"source"`` or ``"compressed"``.
        backend: ``"torch"`` or ``"onnx"``, as measured.
        n: texts scored.
        accuracy, macro_f1: on the gate's data.
        p50_ms: median milliseconds of one text per call.
        texts_per_s: texts per second in batches of 32.
        size_mb: the file that holds the served weights (``model.onnx`` for the ONNX
            backend, else ``model.safetensors``), in MB (10^6 bytes).
        folder_mb: the whole run folder, in MB.
    """

    name: str
    backend: str
    n: int
    accuracy: float
    macro_f1: float
    p50_ms: float
    texts_per_s: float
    size_mb: float
    folder_mb: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (rounded)."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _timings(predictor: Predictor, texts: list[str]) -> tuple[float, float]:
    """(median batch-1 ms, texts/s at batch 32) over the first texts of ``texts``."""
    one = texts[:LATENCY_TEXTS]
    for text in one[:3]:  # warm up (first-call allocations, ONNX Runtime's arena)
        predictor.predict_proba([text], batch_size=1)
    times = []
    for text in one:
        start = time.perf_counter()
        predictor.predict_proba([text], batch_size=1)
        times.append((time.perf_counter() - start) * 1000)
    many = texts[:THROUGHPUT_TEXTS]
    start = time.perf_counter()
    predictor.predict_proba(many, batch_size=THROUGHPUT_BATCH)
    return statistics.median(times), len(many) / max(time.perf_counter() - start, 1e-9)


def measure(predictor: Predictor, data: Dataset, *, name: str, run_dir: Path) -> Measured:
    """Score and time ``predictor`` on ``data``; sizes from ``run_dir``.

    Example:
        >>> measure(p, dev, name="source", run_dir=Path("runs/demo"))  # doctest: +SKIP
    """
    probs = predictor.predict_proba(data.texts)
    scores = score_probabilities(probs, data, predictor.labels, predictor.rule)
    p50, rate = _timings(predictor, data.texts)
    weights = run_dir / ("model.onnx" if predictor.backend == "onnx" else "model.safetensors")
    return Measured(
        name=name,
        backend=predictor.backend,
        n=len(data),
        accuracy=scores.accuracy,
        macro_f1=scores.macro_f1,
        p50_ms=p50,
        texts_per_s=rate,
        size_mb=_mb(weights),
        folder_mb=_mb(run_dir),
    )


def check_gate(source: Measured, new: Measured, *, max_drop: float, force: bool) -> None:
    """Refuse ``new`` when it loses more than ``max_drop`` accuracy against ``source``.

    Raises:
        AccuracyGateError: the drop is larger and ``force`` is False.
    """
    drop = source.accuracy - new.accuracy
    if drop > max_drop and not force:
        raise AccuracyGateError(
            f"the compressed model scores {new.accuracy:.4f} accuracy against the source's "
            f"{source.accuracy:.4f} on {new.n} texts, a drop of {drop:.4f} > --max-drop "
            f"{max_drop}; nothing was written (keep more rows, raise --max-drop, or --force)"
        )


def recorded_split(run_dir: Path, cfg: DataConfig, name: str = "dev") -> Dataset:
    """The run's ``name`` split (``train``, ``dev``) as it was at training: ``splits.json``'s
    source table and row numbers.

    Raises:
        ConfigError: the run folder has no ``splits.json``, the split came from memory
            (``fit(X, y)``) or its source table is gone (then pass the table).
        DataError: the source table changed (a recorded row is missing).
    """
    option = "--data DEV" if name == "dev" else f"--{name} {name.upper()}"
    path = run_dir / SPLITS_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} records no {name} split ({SPLITS_FILE}); pass {option}")
    try:
        split = json.loads(path.read_text(encoding="utf-8"))[name]
        source, rows = str(split["source"]), [int(r) for r in split["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); pass {option}") from exc
    source = _SPLIT_SUFFIX.sub("", source)  # a split made from the training table
    if not Path(source).is_file():
        raise ConfigError(
            f"{run_dir}'s {name} split came from {source}, which is not a file here; pass {option}"
        )
    table = load_table(source, cfg)
    by_row = {ex.source_row: ex for ex in table.examples}
    missing = [r for r in rows if r not in by_row]
    if missing:
        raise DataError(
            f"row {missing[0]} of the {name} split is not in the table any more; pass {option}",
            path=source,
        )
    return Dataset(
        tuple(by_row[r] for r in rows),
        source=f"{source} [{name} split]",
        multi_label=table.multi_label,
    )


def dev_split(run_dir: Path, cfg: DataConfig) -> Dataset:
    """The run's dev split as it was at training (:func:`recorded_split`)."""
    return recorded_split(run_dir, cfg, "dev")
