"""fenlei cells: one preset trained and timed in its own process (so peak RSS is per cell).

Run by :mod:`bench.harness` as ``.venv/bin/python -m bench.fenlei_systems task.json`` with the
project's virtual environment; prints one JSON object as the last stdout line.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sklearn.linear_model  # noqa: F401  (nbsvm's solver: imported before the clock, as peers' are)
import torch
import torch._dynamo

# kept out of the training clock as every peer's imports are)
from bench.peers import _common as c
from fenlei.config import load_config
from fenlei.data import Dataset
from fenlei.models import training_mmap_threshold
from fenlei.pipeline import prepare_splits, train_run
from fenlei.runtime import configure_torch
from fenlei.train.table_step import load_kernels

# run-folder files needed to load a model (checkpoint/ and plots/ are training by-products)
MODEL_FILES = (
    "config.json",
    "labels.json",
    "tokenizer.json",
    "model_config.json",
    "model.safetensors",
    "manifest.json",
)


def _dataset(path: str, limit: int | None = None) -> Dataset:
    texts, labels = c.read_table(path)
    if limit:
        texts, labels = texts[:limit], labels[:limit]
    return Dataset.from_lists(texts, labels, source=path)


def main() -> None:
    task = c.load_task()
    opts: dict[str, Any] = task.get("options", {})
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    overrides = [f"train.threads={threads}", "eval.plots=false", *opts.get("overrides", [])]
    cfg = load_config(opts["preset"], overrides)
    configure_torch(
        threads=threads, seed=cfg.train.seed, mmap_threshold=training_mmap_threshold(cfg)
    )
    load_kernels()  # numba's first use is an import, kept out of the clock as torch._dynamo's
    train = _dataset(task["train"], task.get("train_limit"))
    splits = prepare_splits(cfg.data, train, _dataset(task["valid"]), _dataset(task["test"]))
    run_dir = Path(task["workdir"]) / "run"
    result = train_run(cfg, splits, run_dir, overwrite=True)
    predictor = result.predictor
    test_texts = splits.test.texts if splits.test is not None else []

    def predict(texts: list[str]) -> list[str]:
        return [p.label for p in predictor.predict(texts)]

    predictions = predict(test_texts)
    timing = c.time_inference(predict, test_texts)
    size = sum((run_dir / name).stat().st_size for name in MODEL_FILES if (run_dir / name).exists())
    c.emit(
        {
            "predictions": predictions,
            "train_seconds": result.metrics.train_seconds,
            "model_bytes": size,
            "best_epoch": result.metrics.best_epoch,
            "epochs_run": result.metrics.epochs_run,
            "dev_accuracy_per_epoch": [h.dev["accuracy"] for h in result.history],
            # a solved family (nbsvm): the setting of each solve ({"c": ...})
            **({"params": [h.param for h in result.history]} if result.history[0].param else {}),
            "settings": {"preset": opts["preset"], "overrides": overrides},
            "versions": {"fenlei": version("fenlei"), "torch": torch.__version__},
            **timing,
        }
    )


if __name__ == "__main__":
    main()
