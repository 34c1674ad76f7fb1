"""Benchmark: the classic Keras IMDB network (``seed-lstm`` preset) trained by fenlei.

Not a test. Trains on ``../shared/data/imdb/train.csv.gz`` (10 % held out as dev, stratified,
seed 13, to pick the best epoch), evaluates on the 25,000 test reviews, and reports test
accuracy, wall time per epoch and peak memory. Results go to ``bench/results/seed_imdb.json``.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \
        .venv/bin/python bench/seed_imdb.py [--set train.epochs=10] [--data ../shared/data/imdb]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from fenlei.config import load_config
from fenlei.data import load_table
from fenlei.pipeline import prepare_splits, train_run
from fenlei.progress import RichProgress
from fenlei.runtime import configure_torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/imdb")
    parser.add_argument("--preset", default="seed-lstm")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("/tmp/fenlei-bench/seed_imdb"))
    parser.add_argument("--resume", action="store_true", help="Continue an interrupted run.")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "seed_imdb.json")
    args = parser.parse_args()

    cfg = load_config(args.preset, ["data.test_fraction=0.0", *args.overrides])
    started = time.perf_counter()
    train = load_table(args.data / "train.csv.gz", cfg.data)
    test = load_table(args.data / "test.csv.gz", cfg.data)
    splits = prepare_splits(cfg.data, train, None, test)
    load_seconds = time.perf_counter() - started
    configure_torch(threads=cfg.train.threads, seed=cfg.train.seed)
    result = train_run(
        cfg,
        splits,
        args.out,
        overwrite=not args.resume,
        resume=args.resume,
        progress=RichProgress(cfg.train.monitor),
    )
    epochs = [r.seconds for r in result.history]
    report = {
        "benchmark": "seed_imdb",
        "preset": args.preset,
        "overrides": args.overrides,
        "train_rows": len(splits.train),
        "dev_rows": len(splits.dev),
        "test_rows": len(test),
        "test_accuracy": result.metrics.test.accuracy,
        "test_macro_f1": result.metrics.test.macro_f1,
        "best_epoch": result.metrics.best_epoch,
        "dev_accuracy_per_epoch": [r.dev["accuracy"] for r in result.history],
        "seconds_per_epoch": epochs,
        "mean_seconds_per_epoch": sum(epochs) / len(epochs),
        "train_seconds_total": result.metrics.train_seconds,
        "load_seconds": load_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
