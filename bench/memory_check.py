"""Peak memory of MiniLM fine-tuning on a reduced job: fenlei's cell against HF Trainer's.

Each system runs as its harness cell would (same scripts, environment and thread count) on
the first rows of the harness's splits, while this process samples the child's resident
memory (``/proc/<pid>/status``: VmRSS, VmHWM) every quarter second. The result, with the
RSS curve, goes to ``bench/results/training_memory_<label>.json``; bench/report.py shows it.

    .venv/bin/python -m bench.memory_check --dataset imdb --rows 640,256,256 --label imdb640
    .venv/bin/python -m bench.memory_check --dataset imdb --rows 22500,500,1000 \
        --max-length 256 --threads 2 --label imdb_full_256

On a CPU with AMX, fenlei trains MiniLM under bf16 (oneDNN); elsewhere in fp32, like the
HF Trainer peer's default. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    DATASETS,
    HERE,
    RESULTS,
    ROOT,
    SYSTEMS,
    WORK,
    _atomic_json,
    _metrics,
    _write_csv_gz,
    ensure_venv,
    machine,
    prepare_dataset,
    venv_python,
)
from bench.peers._common import read_table

__all__ = ["main", "run_system"]

SAMPLE_S = 0.25


def _status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a live process in MiB, or None once it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024
    except (OSError, KeyError, ValueError):
        return None


def _reduced_split(dataset: str, rows: tuple[int, int, int]) -> dict[str, str]:
    """The first rows of the harness's train/valid/test files, written under WORK."""
    files = prepare_dataset(DATASETS[dataset])["files"]
    out = WORK / "memory_check" / f"{dataset}-{'-'.join(map(str, rows))}"
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, n in zip(("train", "valid", "test"), rows, strict=True):
        texts, labels = read_table(files[part]["path"])
        path = out / f"{part}.csv.gz"
        _write_csv_gz(path, list(zip(texts[:n], labels[:n], strict=True)))
        paths[part] = str(path)
    return paths


def run_system(
    system: str, split: dict[str, str], *, threads: int, extra: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    """Run one system's cell script on ``split``; its result with the sampled RSS curve."""
    spec = SYSTEMS[system]
    workdir.mkdir(parents=True, exist_ok=True)
    task = {
        "dataset": "reduced",
        "system": system,
        "lang": "en",
        **split,
        "workdir": str(workdir),
        "options": {**spec.options, **extra},
        "train_limit": None,
    }
    task_file = workdir / "task.json"
    task_file.write_text(json.dumps(task), encoding="utf-8")
    if spec.family == "fenlei":
        cmd = [str(venv_python(None)), "-m", spec.script, str(task_file)]
    else:
        assert spec.env is not None
        cmd = [str(ensure_venv(spec.env)), str(HERE / "peers" / spec.script), str(task_file)]
    env = {  # as bench.harness.run_cell sets it
        **os.environ,
        "BENCH_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "MALLOC_MMAP_THRESHOLD_": "4294967296",
        "MALLOC_TRIM_THRESHOLD_": "68719476736",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",  # this checkout's fenlei, too
    }
    started = time.perf_counter()
    curve: list[tuple[float, int]] = []
    peak = 0
    out_file = workdir / "stdout.txt"  # a file, not a pipe: the result line can be large
    with (workdir / "log.txt").open("w") as log, out_file.open("w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=log, env=env, cwd=ROOT)
        while proc.poll() is None:
            status = _status(proc.pid)
            if status is not None:
                curve.append((round(time.perf_counter() - started, 1), status[0]))
                peak = max(peak, status[1])
            time.sleep(SAMPLE_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} exited with {proc.returncode}; see {workdir / 'log.txt'}")
    lines = out_file.read_text(encoding="utf-8").splitlines()
    out = json.loads([ln for ln in lines if ln.strip()][-1])
    _, gold = read_table(split["test"])
    history = workdir / "run" / "metrics.jsonl"  # fenlei records each epoch's precision
    if history.is_file():
        precision = json.loads(history.read_text("utf-8").splitlines()[0])["precision"]
    else:
        precision = "bf16-mixed" if task["options"].get("bf16") else "fp32"
    return {
        "system": system,
        "options": task["options"],
        "precision": precision,
        "peak_rss_mib": out["peak_rss_mib"],
        "sampled_peak_mib": peak,
        "train_seconds": out["train_seconds"],
        "wall_seconds": time.perf_counter() - started,
        **_metrics(gold, out["predictions"]),
        "rss_curve_mib": curve[:: max(1, len(curve) // 200)],  # (seconds, VmRSS), ~200 points
    }


def _mmap_threshold(overrides: list[str]) -> str:
    """The glibc mmap threshold fenlei's MiniLM training sets with these overrides."""
    from fenlei.config import load_config
    from fenlei.models import training_mmap_threshold

    threshold = training_mmap_threshold(load_config("minilm", overrides))
    if threshold is None:  # the environment's, which run_system sets for both systems
        return "4 GiB (environment)"
    mib, kib = divmod(threshold, 1024 * 1024)
    return f"{mib} MiB" if not kib else f"{threshold // 1024} KiB"


def main() -> None:
    """Parse the command line, run each system, write the result file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="imdb", choices=sorted(DATASETS))
    ap.add_argument("--rows", default="640,256,256", help="train,valid,test rows to keep")
    ap.add_argument("--systems", default="fenlei-minilm,hf-trainer-minilm")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, help="tokens per text for both (default 128)")
    ap.add_argument("--set", action="append", default=[], help="fenlei override (repeatable)")
    ap.add_argument("--label", required=True, help="names bench/results/training_memory_<label>")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    rows = tuple(int(x) for x in args.rows.split(","))
    assert len(rows) == 3, "--rows takes train,valid,test"
    split = _reduced_split(args.dataset, rows)  # type: ignore[arg-type]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results = []
    for system in args.systems.split(","):
        extra: dict[str, Any] = {"epochs": args.epochs}
        overrides = [f"train.epochs={args.epochs}", *args.set]
        if args.max_length:
            extra["max_length"] = args.max_length
            overrides.append(f"encoder.max_length={args.max_length}")
        if SYSTEMS[system].family == "fenlei":
            extra = {"overrides": overrides}
        print(f"[run ] {system} ...", flush=True)
        workdir = WORK / "memory_check" / args.label / system
        result = run_system(system, split, threads=args.threads, extra=extra, workdir=workdir)
        results.append(result)
        print(f"[done] {system}: peak {result['peak_rss_mib']:.0f} MiB", flush=True)
    record = {
        "label": args.label,
        "dataset": args.dataset,
        "rows": dict(zip(("train", "valid", "test"), rows, strict=True)),
        "epochs": args.epochs,
        "max_length": args.max_length or 128,
        "threads": args.threads,
        "when": when,
        "machine": machine(),
        "note": args.note,
        "fenlei_mmap_threshold": _mmap_threshold(args.set),
        "systems": results,
    }
    _atomic_json(RESULTS / f"training_memory_{args.label}.json", record)


if __name__ == "__main__":
    main()
