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
import statistics
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


def _interleaved_p50(
    source: Path, new: Path, texts: list[str], threads: int, rounds: int
) -> dict[str, Any]:
    """Batch-1 p50 of both folders, timed in alternating rounds (load drifts between them).

    The gate times the source and then the new model once each; on a shared 2-core machine
    the ratio of two such medians moves by 10 % between runs. Here each round times 100
    texts on the source, then the same texts on the new model, and the ratio reported is
    the median of the per-round ratios.
    """
    predictors = [
        Predictor.from_run(source, backend="torch", threads=threads),
        Predictor.from_run(new, backend="auto", threads=threads),
    ]
    sample = texts[:100]
    for predictor in predictors:  # warm up
        predictor.predict_proba(sample[:5], batch_size=1)
    p50s: list[list[float]] = [[], []]
    for _ in range(rounds):
        for predictor, out in zip(predictors, p50s, strict=True):
            times = []
            for text in sample:
                start = time.perf_counter()
                predictor.predict_proba([text], batch_size=1)
                times.append((time.perf_counter() - start) * 1000)
            out.append(round(statistics.median(times), 3))
    ratios = [b / a for a, b in zip(*p50s, strict=True)]
    return {
        "rounds": rounds,
        "source_p50_ms": p50s[0],
        "compressed_p50_ms": p50s[1],
        "p50_ratio": round(statistics.median(ratios), 3),
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
    if args.rounds and (args.data or args.test):  # texts to time: the gate's, or test's
        texts = load_table(args.data or args.test).texts
        cell["interleaved"] = _interleaved_p50(
            Path(args.source), out, texts, args.threads, args.rounds
        )
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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--note", default="", help="how the source was trained")
    run_cell(parser.parse_args())


if __name__ == "__main__":
    main()
