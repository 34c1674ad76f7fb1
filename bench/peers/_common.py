"""Shared, standard-library-only helpers for one benchmark cell running in its own process.

Every cell script (a peer in its own virtual environment, or fenlei in the project's) reads a
task JSON, trains on ``train`` (model selection on ``valid`` where the system has any), predicts
``test``, times batch-1 latency and batch-32 throughput, and prints one JSON object as the last
line of stdout. The parent (:mod:`bench.harness`) computes the metrics from the predictions.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LATENCY_TEXTS = 200
LATENCY_WARMUP = 10
THROUGHPUT_TEXTS = 1024
THROUGHPUT_BATCH = 32


def read_table(path: str | Path) -> tuple[list[str], list[str]]:
    """Texts and labels of a ``text,label`` CSV (gzip when the name ends in ``.gz``)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    texts: list[str] = []
    labels: list[str] = []
    with opener(path, "rt", encoding="utf-8", newline="") as fh:  # type: ignore[operator]
        for row in csv.DictReader(fh):
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, labels


def load_task() -> dict[str, Any]:
    """The task JSON named by the first command-line argument."""
    return dict(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_bytes(path: str | Path) -> int:
    """Total size of a file or of every file under a folder."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def time_inference(
    predict: Callable[[Sequence[str]], Sequence[str]], texts: Sequence[str]
) -> dict[str, Any]:
    """Batch-1 latencies (ms, one per text) and batch-32 throughput (texts/s)."""
    sample = list(texts[: LATENCY_TEXTS + LATENCY_WARMUP])
    for text in sample[:LATENCY_WARMUP]:
        predict([text])
    latencies = []
    for text in sample[LATENCY_WARMUP:]:
        t0 = time.perf_counter()
        predict([text])
        latencies.append((time.perf_counter() - t0) * 1000)
    batch_texts = list(texts[:THROUGHPUT_TEXTS])
    predict(batch_texts[:THROUGHPUT_BATCH])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(batch_texts), THROUGHPUT_BATCH):
        predict(batch_texts[i : i + THROUGHPUT_BATCH])
    seconds = time.perf_counter() - t0
    return {
        "latency_ms": latencies,
        "throughput_texts": len(batch_texts),
        "throughput_per_s": len(batch_texts) / seconds if seconds > 0 else None,
    }


def emit(result: dict[str, Any]) -> None:
    """Print the result as the last stdout line (the parent reads only that line)."""
    result.setdefault("peak_rss_mib", peak_rss_mib())
    result.setdefault("pid", os.getpid())
    sys.stdout.write("\n" + json.dumps(result, ensure_ascii=False) + "\n")
    sys.stdout.flush()


CJK_RANGES = (
    ("\u3400", "\u9fff"),  # CJK unified ideographs (+ extension A)
    ("\uf900", "\ufaff"),  # compatibility ideographs
    ("\u3000", "\u303f"),  # CJK punctuation
    ("\uff00", "\uffef"),  # full-width forms
)


def space_chars(text: str) -> str:
    """Put spaces around every CJK character, so whitespace tokenizers see one per token."""
    out = []
    for ch in text:
        if any(lo <= ch <= hi for lo, hi in CJK_RANGES):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())
