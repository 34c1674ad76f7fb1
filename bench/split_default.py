"""Should one input file be split train/dev/test (80/10/10, today) or train/dev (90/10)?

``fenlei train DATA`` with no ``--dev``/``--test`` holds back 10 % as dev (model selection,
calibration, thresholds) and 10 % as an internal test split (an unbiased estimate). This
measures both sides of that choice on each set's real test file, which neither variant sees:

- the *cost* of holding back a test split: real-test accuracy of the 90/10 model minus the
  80/10/10 model's;
- what the internal test split *buys*: how far each variant's own estimate lands from the
  real-test accuracy (80/10/10: its internal test accuracy; 90/10: its dev accuracy, which
  chose the epoch, so it is optimistic).

Each (set, variant) is trained with ``--seeds`` split seeds on the harness's train file; the
real test is the harness's test file. Results: ``bench/results/split_default.json``.

    .venv/bin/python -m bench.split_default --sets sst2,chnsenticorp --seeds 13,1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import DATASETS, RESULTS, _atomic_json, machine, prepare_dataset

__all__ = ["main", "run_cell"]

OUT = RESULTS / "split_default.json"
VARIANTS = {"80/10/10": ["data.test_fraction=0.1"], "90/10": ["data.test_fraction=0"]}


def run_cell(dataset: str, variant: str, seed: int, preset: str) -> dict[str, Any]:
    """Train ``preset`` on ``dataset``'s train file split as ``variant`` with ``seed``."""
    from fenlei.config import load_config
    from fenlei.data import load_table
    from fenlei.evaluate import score_probabilities
    from fenlei.pipeline import prepare_splits, train_run

    files = prepare_dataset(DATASETS[dataset])["files"]
    overrides = [*VARIANTS[variant], f"data.split_seed={seed}", "train.threads=1"]
    cfg = load_config(preset, [*overrides, "eval.plots=false", "eval.report=false"])
    train, test = load_table(files["train"]["path"], cfg.data), load_table(files["test"]["path"])
    splits = prepare_splits(cfg.data, train)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_run(cfg, splits, Path(tmp) / "run")
        predictor = result.predictor
        probs = predictor.predict_proba(test.texts)
        real = score_probabilities(probs, test, predictor.labels, predictor.rule)
    metrics = result.metrics
    return {
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "preset": preset,
        "train_rows": len(splits.train),
        "dev_accuracy": round(metrics.dev.accuracy, 4),
        "internal_test_accuracy": None if metrics.test is None else round(metrics.test.accuracy, 4),
        "real_test_accuracy": round(real.accuracy, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _real(cells: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    return [(c, c["real_test_accuracy"]) for c in cells]


def _summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per set: mean cost of holding back a test split, and each variant's estimate error."""
    out: dict[str, Any] = {}
    for dataset in sorted({c["dataset"] for c in cells}):
        mine = [c for c in cells if c["dataset"] == dataset]
        three = [c for c in mine if c["variant"] == "80/10/10"]
        two = [c for c in mine if c["variant"] == "90/10"]
        if not three or not two:
            continue
        mean = statistics.fmean
        real3 = mean(c["real_test_accuracy"] for c in three)
        real2 = mean(c["real_test_accuracy"] for c in two)
        out[dataset] = {
            "cost_points": round(100 * (real2 - real3), 2),
            "internal_test_error_points": round(
                100 * mean(abs(c["internal_test_accuracy"] - real) for c, real in _real(three)), 2
            ),
            "dev_optimism_points": round(
                100 * mean(c["dev_accuracy"] - c["real_test_accuracy"] for c in two), 2
            ),
            "dev_error_points": round(
                100 * mean(abs(c["dev_accuracy"] - c["real_test_accuracy"]) for c in two), 2
            ),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    """Run every (set, variant, seed) cell not yet in the result file, saving each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="sst2,chnsenticorp,waimai_10k,sms_spam")
    parser.add_argument("--seeds", default="13,1")
    parser.add_argument("--preset", default="linear")
    args = parser.parse_args(argv)
    done = json.loads(OUT.read_text("utf-8")) if OUT.is_file() else {"cells": []}
    cells: list[dict[str, Any]] = done["cells"]
    key = {(c["dataset"], c["variant"], c["seed"], c["preset"]) for c in cells}
    for dataset in args.sets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for variant in VARIANTS:
                if (dataset, variant, seed, args.preset) in key:
                    continue
                cells.append(run_cell(dataset, variant, seed, args.preset))
                print(json.dumps(cells[-1]), flush=True)
                _atomic_json(
                    OUT, {"machine": machine(), "cells": cells, "summary": _summary(cells)}
                )
    print(json.dumps(_summary(cells), indent=1))


if __name__ == "__main__":
    main()
