"""MiniLM's two heads on the same reduced jobs: ``transformer.v1`` (mean-pooled, fenlei's own
linear layer) against ``transformer.v2`` (the architecture's sequence-classification head,
which exports to Hugging Face). The measurement behind the ``minilm`` preset's default head.

Each cell trains the ``minilm`` preset for one epoch on the first rows of the harness's
shuffled splits (same rows, seed and settings for both heads) and scores dev and test.
Results go, cell by cell, to ``bench/results/minilm_heads.json``; docs/interop.md has the table.

    .venv/bin/python -m bench.head_compare --dataset sst2 --rows 4000,500,872

Never part of the test suite; needs the ``minilm`` extra.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.harness import DATASETS, RESULTS, WORK, _atomic_json, machine, prepare_dataset
from bench.peers._common import read_table

__all__ = ["main", "run_cell"]

HEADS = ("transformer.v1", "transformer.v2")
OUT = RESULTS / "minilm_heads.json"


def _rows(dataset: str, rows: tuple[int, int, int]) -> dict[str, tuple[list[str], list[str]]]:
    files = prepare_dataset(DATASETS[dataset])["files"]
    split = {}
    for part, n in zip(("train", "valid", "test"), rows, strict=True):
        texts, labels = read_table(files[part]["path"])
        split[part] = (texts[:n], labels[:n])
    return split


def run_cell(
    dataset: str, head: str, rows: tuple[int, int, int], *, seed: int, epochs: int
) -> dict[str, Any]:
    """Train one head on one reduced job; its dev and test accuracy and the wall time."""
    from fenlei import TextClassifier

    split = _rows(dataset, rows)
    run_dir = WORK / "head_compare" / f"{dataset}-{head}-{seed}"
    clf = TextClassifier(
        "minilm",
        overrides=[f"model.architecture={head}", "eval.report=false"],
        epochs=epochs,
        seed=seed,
        run_dir=run_dir,
    )
    start = time.perf_counter()
    clf.fit(*split["train"], X_dev=split["valid"][0], y_dev=split["valid"][1])
    train_s = time.perf_counter() - start
    return {
        "dataset": dataset,
        "head": head,
        "rows": list(rows),
        "seed": seed,
        "epochs": epochs,
        "dev_accuracy": round(clf.score(*split["valid"]), 4),
        "test_accuracy": round(clf.score(*split["test"]), 4),
        "train_s": round(train_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--rows", default="4000,500,872", help="train,dev,test rows")
    parser.add_argument("--seeds", default="13", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    rows = tuple(int(n) for n in args.rows.split(","))
    assert len(rows) == 3, "--rows takes train,dev,test"
    results: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {"cells": []}
    results["machine"] = machine()
    for seed in (int(s) for s in args.seeds.split(",")):
        for head in HEADS:
            cell = run_cell(args.dataset, head, rows, seed=seed, epochs=args.epochs)  # type: ignore[arg-type]
            key = (cell["dataset"], cell["head"], cell["seed"], cell["rows"])
            results["cells"] = [
                c
                for c in results["cells"]
                if (c["dataset"], c["head"], c["seed"], c["rows"]) != key
            ] + [cell]
            _atomic_json(OUT, results)  # cell by cell: a stopped job keeps what finished
            print(json.dumps(cell), flush=True)


if __name__ == "__main__":
    main()
