"""Distilled students against their teachers, on the harness's splits.

Each cell distils teacher run folder(s) into a student preset with ``fenlei.distil`` on the
harness's split (``bench.harness.prepare_dataset``: train, a 10 % ``valid`` as dev, and the
test set: ChnSentiCorp's and SST-2's ``dev.csv.gz``). Teachers are the ensemble benchmark's
run folders (``bench.ensemble_bench``: members trained on train with valid as dev, ensembles
weighted on valid), trained here when missing. A cell records the teacher's and the
student's accuracy on valid and test, the student's batch-1 p50 latency (torch, one text at
a time over the first test texts) and size; finished cells are written to
``bench/results/distil_<dataset>.json`` at once, and a re-run skips them::

    nohup nice .venv/bin/python -m bench.distil_bench --datasets chnsenticorp > distil.log &

A transformer cut down by ``fenlei compress --prune layers=K`` (``bench.compress_bench``) is
recovered by distilling its source: ``--from-compress CELL`` records that result as a
student of the same table (timed with the backend it is served with)::

    python -m bench.distil_bench --datasets sst2 --from-compress sst2-minilm-layers2-int8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.ensemble_bench import WORK as ENSEMBLE_WORK
from bench.ensemble_bench import _latency_ms, _member, _size_mb
from bench.harness import DATASETS, RESULTS, prepare_dataset
from fenlei.combine import build_ensemble
from fenlei.data import load_table
from fenlei.distil import distil
from fenlei.evaluate import score_probabilities
from fenlei.loader import open_predictor
from fenlei.runtime import configure_torch

WORK = Path(os.environ.get("FENLEI_BENCH_WORK", "/tmp/fenlei-bench")) / "distil"

# cell name -> teacher (members joined by "+", an ensemble tuned on valid when several),
# student preset, student overrides, temperature, alpha, augmented copies per text
CELLS: dict[str, tuple[str, str, list[str], float, float, int]] = {
    "ens2-linear-t2-a05-x2": ("nbsvm+linear", "linear", [], 2.0, 0.5, 2),
    "ens2-linear-t1-a05-x2": ("nbsvm+linear", "linear", [], 1.0, 0.5, 2),
    "ens2-linear-t2-a05-x0": ("nbsvm+linear", "linear", [], 2.0, 0.5, 0),
    "ens2-linear-t2-a1-x4": ("nbsvm+linear", "linear", [], 2.0, 1.0, 4),
    # nbsvm as a student (a solved family fitting the teacher's probabilities as weights)
    "ens2-nbsvm-t1-a05-x2": ("nbsvm+linear", "nbsvm", [], 1.0, 0.5, 2),
    "ens2-nbsvm-t2-a05-x2": ("nbsvm+linear", "nbsvm", [], 2.0, 0.5, 2),
    "ens2-nbsvm-t1-a05-x0": ("nbsvm+linear", "nbsvm", [], 1.0, 0.5, 0),
    "ens3-nbsvm-t1-a05-x2": ("nbsvm+linear+lstm", "nbsvm", [], 1.0, 0.5, 2),
    # SST-2: the minilm preset on the full training split teaches the small families
    "minilm-lstm-t2-a05-x2": ("minilm", "lstm", [], 2.0, 0.5, 2),
    "minilm-linear-t2-a05-x2": ("minilm", "linear", [], 2.0, 0.5, 2),
    "minilm-lstm-t2-a1-x2": ("minilm", "lstm", [], 2.0, 1.0, 2),  # the teacher alone (Tang)
}


def _teacher(dataset: str, members: str, files: dict[str, Any], threads: int) -> Path:
    names = members.split("+")
    runs = [_member(dataset, name, files, threads) for name in names]
    if len(runs) == 1:
        return runs[0]
    out = ENSEMBLE_WORK / dataset / f"ens-{members}-tuned"
    if not (out / "manifest.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        build_ensemble(
            runs, out, weights="tuned", data=files["valid"]["path"], test=files["test"]["path"]
        )
    return out


def _scores(section: dict[str, Any]) -> dict[str, float]:
    return {"accuracy": round(section["accuracy"], 4), "macro_f1": round(section["macro_f1"], 4)}


def _test_scores(run: Path, test: str) -> dict[str, float]:
    """Accuracy and macro-F1 of ``run`` on ``test`` (a member trained without a test split)."""
    predictor = open_predictor(run)
    data = load_table(test, predictor.info().data)
    scores = score_probabilities(
        predictor.predict_proba(data.texts), data, predictor.labels, predictor.rule
    )
    return {"accuracy": round(scores.accuracy, 4), "macro_f1": round(scores.macro_f1, 4)}


def _teacher_record(run: Path, test: str) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    test_texts = load_table(test).texts[:200]
    return {
        "run": str(run),
        "dev": _scores(metrics["dev"]),
        "test": _test_scores(run, test),  # as served, whatever the training recorded
        "batch1_p50_ms": _latency_ms(run, test_texts),
        "size_mb": _size_mb(run),
    }


def run_cell(dataset: str, name: str, files: dict[str, Any], threads: int) -> dict[str, Any]:
    """Distil one cell; return its record."""
    members, student, overrides, temperature, alpha, augment = CELLS[name]
    teacher = _teacher(dataset, members, files, threads)
    out = WORK / dataset / name
    shutil.rmtree(out, ignore_errors=True)
    settings = [f"train.threads={threads}", "eval.plots=false", *overrides]
    configure_torch(threads=threads)
    result = distil(
        [teacher],
        data=files["train"]["path"],
        dev=files["valid"]["path"],
        test=files["test"]["path"],
        out=out,
        student=student,
        overrides=settings,
        temperature=temperature,
        alpha=alpha,
        augment=augment,
    )
    test_texts = load_table(files["test"]["path"]).texts[:200]
    metrics = result.train.metrics
    assert metrics.test is not None
    sets = " ".join(f"--set {s}" for s in settings)
    return {
        "cell": name,
        "teacher": {"members": members, **_teacher_record(teacher, files["test"]["path"])},
        "student": {
            "preset": student,
            "overrides": overrides,
            "dev": {
                "accuracy": round(metrics.dev.accuracy, 4),
                "macro_f1": round(metrics.dev.macro_f1, 4),
            },
            "test": {
                "accuracy": round(metrics.test.accuracy, 4),
                "macro_f1": round(metrics.test.macro_f1, 4),
            },
            "batch1_p50_ms": _latency_ms(out, test_texts),
            "size_mb": _size_mb(out),
            "epochs_run": metrics.epochs_run,
        },
        "temperature": temperature,
        "alpha": alpha,
        "augment": augment,
        "transfer": result.transfer,
        "seconds": round(result.seconds, 1),
        "command": (
            f"fenlei distil {teacher} --student {student} --data {files['train']['path']} "
            f"--dev {files['valid']['path']} --test {files['test']['path']} "
            f"--temperature {temperature} --alpha {alpha} --augment {augment} {sets} --out {out}"
        ),
    }


def compressed_cell(dataset: str, name: str, files: dict[str, Any]) -> dict[str, Any]:
    """A ``fenlei compress --prune layers=K`` result (bench/results/compress_<name>.json and
    its folder) as a distillation cell: the layer-dropped model *is* a student distilled
    from its source. Its latency is timed here like every student's (batch-1 p50 over 200
    test texts) but with the backend it is served with (an int8 model: ONNX Runtime)."""
    from bench.compress_bench import WORK as COMPRESS_WORK

    cell = json.loads((RESULTS / f"compress_{name}.json").read_text(encoding="utf-8"))
    folder = COMPRESS_WORK / name
    compress = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["compress"]
    recovery = compress["layers"]["recovery"]
    test = files["test"]["path"]
    test_texts = load_table(test).texts[:200]
    source = Path(cell["source"])
    layers = f"{len(compress['layers']['kept'])} of {compress['layers']['of']} layers"
    return {
        "cell": name,
        "teacher": {"members": "minilm", **_teacher_record(source, test)},
        "student": {
            "preset": f"minilm, {layers}{', int8' if compress['int8'] else ''}",
            "overrides": [],
            "dev": _scores(json.loads((folder / "metrics.json").read_text("utf-8"))["dev"]),
            "test": _test_scores(folder, test),
            "batch1_p50_ms": _latency_ms(folder, test_texts, backend="auto"),
            "size_mb": _size_mb(folder),
            "epochs_run": recovery["epochs"],
        },
        "temperature": recovery["temperature"],
        "alpha": recovery["alpha"],
        "augment": recovery["augment"],
        "transfer": recovery["transfer"],
        "seconds": cell["seconds"],
        "command": cell["command"],
    }


def _baseline(dataset: str, student: str, files: dict[str, Any], threads: int) -> dict[str, Any]:
    """The student preset trained on the labels alone (the ensemble benchmark's member)."""
    run = _member(dataset, student, files, threads)
    return {"preset": student, **_teacher_record(run, files["test"]["path"])}


def main() -> None:
    """Run the cells of every dataset named; write ``bench/results/distil_<dataset>.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="chnsenticorp")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--from-compress",
        default="",
        help="compress_bench cells (--prune layers=K) to record as students, comma-separated",
    )
    args = parser.parse_args()
    if args.from_compress:
        configure_torch(threads=args.threads)
        for dataset in args.datasets.split(","):
            _add_compressed(dataset, args.from_compress.split(","))
        return
    for dataset in args.datasets.split(","):
        files = prepare_dataset(DATASETS[dataset])["files"]
        path = RESULTS / f"distil_{dataset}.json"
        record: dict[str, Any] = (
            json.loads(path.read_text(encoding="utf-8"))
            if path.is_file()
            else {"dataset": dataset, "dev": "valid (10 % of train)", "cells": {}}
        )
        record["test"] = DATASETS[dataset].test_name
        baselines = record.setdefault("baselines", {})
        if "baseline" in record:  # results written before students other than linear
            old = record.pop("baseline")  # (the right side of an assignment runs first)
            baselines[old["preset"]] = old
        for name in args.cells.split(","):
            if name in record["cells"]:
                continue
            student = CELLS[name][1]
            if student not in baselines:
                baselines[student] = _baseline(dataset, student, files, args.threads)
                path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", "utf-8")
            cell = run_cell(dataset, name, files, args.threads)
            cell["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            record["cells"][name] = cell
            print(json.dumps(cell), flush=True)
            path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", "utf-8")


def _add_compressed(dataset: str, names: list[str]) -> None:
    files = prepare_dataset(DATASETS[dataset])["files"]
    path = RESULTS / f"distil_{dataset}.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    for name in names:
        cell = compressed_cell(dataset, name, files)
        cell["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        record["cells"][name] = cell
        print(json.dumps(cell), flush=True)
        path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", "utf-8")


if __name__ == "__main__":
    main()
