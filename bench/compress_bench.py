"""``fenlei compress`` against its source: one cell per (run folder, compression).

Each cell compresses a trained run folder with :func:`fenlei.compress.compress` (the gate
measures both models on the run's dev split, or ``--data``), then scores both on ``--test``
with the same predictors and writes ``bench/results/compress_<cell>.json`` (the gate's
table, test accuracy of both, the ratios, the command). Timings run in this process with
``--threads`` for PyTorch and ONNX Runtime alike; ratios come from one run::

    nohup nice .venv/bin/python -m bench.compress_bench --cell imdb-nbsvm-int8-rows200k \\
        --source /tmp/cmp/imdb-nbsvm --int8 --prune rows=200000 \\
        --test /work/shared/data/imdb/test.csv.gz > /tmp/cmp/bench.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import RESULTS
from bench.peers._common import read_table
from fenlei.compress import compress
from fenlei.data import load_table
from fenlei.evaluate import score_probabilities
from fenlei.predict import Predictor
from fenlei.runtime import configure_torch

WORK = Path(os.environ.get("FENLEI_BENCH_WORK", "/tmp/fenlei-bench")) / "compress"


def _test_scores(run_dir: Path, backend: str, test: str, threads: int) -> dict[str, Any]:
    predictor = Predictor.from_run(run_dir, backend=backend, threads=threads)
    data = load_table(test, predictor.info().data)
    started = time.perf_counter()
    probs = predictor.predict_proba(data.texts)
    seconds = time.perf_counter() - started
    scores = score_probabilities(probs, data, predictor.labels, predictor.rule)
    return {
        "backend": predictor.backend,
        "n": len(data),
        "accuracy": round(scores.accuracy, 4),
        "macro_f1": round(scores.macro_f1, 4),
        "seconds": round(seconds, 2),
    }


def _train_table(args: argparse.Namespace) -> Path | None:
    """``--train``, or its first ``--train-rows`` rows (the rows a reduced source saw)."""
    if args.train is None or args.train_rows is None:
        return args.train
    texts, labels = read_table(args.train)
    path = WORK / f"{args.cell}-train{args.train_rows}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts[: args.train_rows], labels[: args.train_rows], strict=True))
    return path


def run_cell(args: argparse.Namespace) -> dict[str, Any]:
    """Compress, score on test, and write the cell's JSON."""
    configure_torch(threads=args.threads)
    out = WORK / args.cell
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = compress(
        args.source,
        out,
        int8=args.int8,
        prune=args.prune,
        data=args.data,
        max_drop=1.0,  # the bench records the trade; the gate's refusal is tested elsewhere
        threads=args.threads,
        train=_train_table(args),
        recover_epochs=args.recover_epochs,
    )
    src, new = result.source, result.compressed
    cell: dict[str, Any] = {
        "cell": args.cell,
        "command": " ".join(["python -m bench.compress_bench", *sys.argv[1:]]),
        "source": str(args.source),
        "note": args.note,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "gate_data": result.data,
        "models": [src.to_json(), new.to_json()],
        "ratios": {
            "p50": round(new.p50_ms / src.p50_ms, 3),
            "texts_per_s": round(new.texts_per_s / src.texts_per_s, 3),
            "size": round(new.size_mb / src.size_mb, 4),
            "folder": round(new.folder_mb / src.folder_mb, 4),
        },
        "gate_drop_points": round(100 * result.drop, 2),
        "seconds": round(result.seconds, 1),
    }
    if args.test:
        before = _test_scores(Path(args.source), "torch", args.test, args.threads)
        after = _test_scores(out, "auto", args.test, args.threads)
        cell["test"] = {"source": before, "compressed": after}
        cell["test_drop_points"] = round(100 * (before["accuracy"] - after["accuracy"]), 2)
    path = RESULTS / f"compress_{args.cell}.json"
    path.write_text(json.dumps(cell, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(cell, indent=1, ensure_ascii=False))
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True, help="name of the result file's cell")
    parser.add_argument("--source", type=Path, required=True, help="trained run folder")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--prune", default=None, help="rows=N, rows=F or layers=K")
    parser.add_argument("--train", type=Path, default=None, help="layers=K: recovery table")
    parser.add_argument("--train-rows", type=int, default=None, help="first rows of --train")
    parser.add_argument("--recover-epochs", type=int, default=1)
    parser.add_argument("--data", default=None, help="gate data (default: the run's dev split)")
    parser.add_argument("--test", default=None, help="labelled test table, scored for both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="how the source was trained")
    run_cell(parser.parse_args())


if __name__ == "__main__":
    main()
