"""Accuracy of averaging two benchmark cells' model probabilities (not a fenlei feature yet).

Reads the run folders that ``python -m bench`` left under ``/tmp/fenlei-bench/harness/cells``
and the same test split, and reports each model's accuracy and that of their average
(equal weights: nothing is tuned on the test set; other weights are printed for the record
only). Writes ``bench/results/<dataset>_ensemble.json``::

    .venv/bin/python bench/ensemble_check.py --dataset imdb --systems fenlei-nbsvm,fenlei-minilm-256
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch

from fenlei.predict import Predictor

HARNESS = Path("/tmp/fenlei-bench/harness")
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    """Score each model and their equal-weight average on the cells' test split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="imdb")
    parser.add_argument("--systems", default="fenlei-nbsvm,fenlei-minilm-256")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with gzip.open(HARNESS / "data" / args.dataset / "test.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    texts, truth = [r["text"] for r in rows], np.array([r["label"] for r in rows])
    probs, labels = {}, None
    for system in args.systems.split(","):
        predictor = Predictor.from_run(
            HARNESS / "cells" / f"{args.dataset}__{system}" / "run", backend="torch"
        )
        if labels is not None and list(predictor.labels) != labels:
            raise SystemExit(f"{system} has other labels than the first system")
        labels = list(predictor.labels)
        probs[system] = predictor.predict_proba(texts)
    assert labels is not None
    names = np.array(labels)

    def accuracy(p: np.ndarray) -> float:
        return float((names[p.argmax(axis=1)] == truth).mean())

    average = sum(probs.values()) / len(probs)
    result = {
        "dataset": args.dataset,
        "systems": list(probs),
        "test_rows": len(texts),
        "accuracy": {s: accuracy(p) for s, p in probs.items()},
        "equal_weight_average_accuracy": accuracy(average),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if len(probs) == 2:
        first, second = probs.values()
        result["other_weights_for_the_record"] = {
            f"{w:.1f}": accuracy(w * first + (1 - w) * second) for w in (0.3, 0.4, 0.6, 0.7)
        }
    out = RESULTS / f"{args.dataset}_ensemble.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
