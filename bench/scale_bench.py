"""Scale-out benchmarks (issue 17): batch prediction on Ray against one process.

``predict``: 1,000,000 texts (IMDB test repeated) through the linear model, single-process
``fenlei predict --file`` pinned to one core (``taskset -c 0``, one thread) against
``fenlei predict --file --ray --workers 2``: wall time and rows/s (Ray's start-up included),
the driver's peak RSS (``VmHWM`` of the command's own process), output rows against input
rows, and the 1-minute load average before and after each row (the machine is shared).

``train``: lstm on ChnSentiCorp (``--job lstm-chnsenticorp``) or one epoch of minilm on the
harness's sms_spam split (``--job minilm-sms_spam``), one local process against ``fenlei
train --ray --workers 2``, one thread each: dev accuracy of each (goal: within 0.5 point).
``train --kill-after S``: the Ray run alone with one training worker killed (SIGKILL) S
seconds in; Ray Train restarts from the last checkpoint (goal: it finishes, within 0.5 point
of the unbroken Ray run, with a run folder that verifies).

Results go to ``bench/results/scale_*.json``; bench/report.py shows them.

``predict --kill-after S``: the Ray row alone, with one predictor actor killed (SIGKILL) S
seconds in: the job must still write every row, in order.

Usage:
    .venv/bin/python -m bench.scale_bench predict [--rows 1000000]
    .venv/bin/python -m bench.scale_bench predict --rows 100000 --kill-after 30
    .venv/bin/python -m bench.scale_bench train [--job minilm-sms_spam]
    .venv/bin/python -m bench.scale_bench train --kill-after 300
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main", "predict_bench", "train_bench"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = Path("/work/shared/data")
WORK = Path("/tmp/fenlei-bench/scale")
FENLEI = [sys.executable, "-m", "fenlei.cli"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def _stamp() -> dict[str, Any]:
    """When and where a result was measured (the head of every result file)."""
    return {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine()}


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ray_processes(title: bytes) -> list[int]:
    """Pids of Ray worker processes whose title holds ``title`` (Ray names them after the
    actor's class: ``PredictBatch`` for prediction, ``RayTrainWorker`` for training)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if entry.name.isdigit() and title in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def _timed(
    cmd: list[str],
    env: dict[str, str] | None = None,
    kill_after: float | None = None,
    victim: bytes = b"PredictBatch",
) -> dict[str, Any]:
    """Run ``cmd``; its wall time, its own process's peak RSS, the load around it. With
    ``kill_after``, SIGKILL the last-started Ray process titled ``victim`` that many seconds
    in (recorded)."""
    load_before = os.getloadavg()[0]
    cpu_before = _children_cpu_s()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=ROOT)
    peak = 0.0
    killed: list[int] = []
    while proc.poll() is None:
        peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)  # VmHWM only grows: read to the end
        if kill_after is not None and not killed and time.perf_counter() - started > kill_after:
            actors = _ray_processes(victim)
            if actors:
                os.kill(actors[-1], signal.SIGKILL)
                killed = [actors[-1]]
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {proc.returncode}")
    extra = {} if kill_after is None else {"killed_actor_pids": killed, "kill_after_s": kill_after}
    return {
        **extra,
        "command": " ".join(cmd).replace(sys.executable, "python"),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak, 1),
        # every process of the command's tree once reaped (Ray's workers included): a
        # figure the machine's other jobs do not inflate, unlike the wall time
        "cpu_s": round(_children_cpu_s() - cpu_before, 1),
        "load_1m_before": round(load_before, 2),
        "load_1m_after": round(os.getloadavg()[0], 2),
    }


def _linear_run() -> Path:
    run = WORK / "imdb-linear"
    if not (run / "manifest.json").is_file():
        train = DATA / "imdb" / "train.csv.gz"
        cmd = [*FENLEI, "train", str(train), "--preset", "linear", "--set", "train.threads=1"]
        _timed([*cmd, "--set", "eval.plots=false", "-o", str(run), "--overwrite"])
    return run


def _big_table(rows: int) -> Path:
    path = WORK / f"imdb-test-x{rows}.csv"
    if path.is_file():
        return path
    with gzip.open(DATA / "imdb" / "test.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text"])
        for i in range(rows):
            writer.writerow([texts[i % len(texts)]])
    tmp.rename(path)
    return path


def _csv_rows(path: Path) -> int:
    with path.open(encoding="utf-8", newline="") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


def predict_bench(rows: int, workers: int) -> dict[str, Any]:
    """Single process on one core against Ray with ``workers`` actors."""
    import pyarrow.parquet as pq

    WORK.mkdir(parents=True, exist_ok=True)
    run, table = _linear_run(), _big_table(rows)
    single_out, ray_out = WORK / "single.csv", WORK / "ray.parquet"
    command = [*FENLEI, "predict", str(run), "--file", str(table), "--out"]
    single = _timed(["taskset", "-c", "0", *command, str(single_out)], env=ONE_THREAD)
    single["output_rows"] = _csv_rows(single_out)
    on_ray = _timed([*command, str(ray_out), "--ray", "--workers", str(workers)])
    on_ray["output_rows"] = pq.ParquetFile(ray_out).metadata.num_rows
    for cell in (single, on_ray):
        cell["rows_per_s"] = round(rows / cell["seconds"], 1)
        cell["rows_per_cpu_s"] = round(rows / max(cell["cpu_s"], 1e-9), 1)
    return {
        **_stamp(),
        "input_rows": rows,
        "workers": workers,
        "single_one_core": single,
        "ray": on_ray,
        "speedup": round(single["seconds"] / on_ray["seconds"], 2),
        "note": "Ray's start-up (a local cluster started by the command) is in its time",
    }


def killed_worker_bench(rows: int, workers: int, kill_after: float) -> dict[str, Any]:
    """Ray prediction with one predictor actor killed (SIGKILL) ``kill_after`` s in: the
    job must finish with every row, in order."""
    import pyarrow.parquet as pq

    WORK.mkdir(parents=True, exist_ok=True)
    run, table = _linear_run(), _big_table(rows)
    out = WORK / "ray-killed.parquet"
    command = [*FENLEI, "predict", str(run), "--file", str(table), "--out", str(out)]
    cell = _timed([*command, "--ray", "--workers", str(workers)], kill_after=kill_after)
    ids = pq.read_table(out, columns=["id"])["id"].to_numpy()
    cell["output_rows"] = len(ids)
    cell["ids_in_order"] = bool((ids == range(len(ids))).all())
    cell["rows_per_s"] = round(rows / cell["seconds"], 1)
    unbroken = WORK / "ray.parquet"  # the same rows through `predict` without a kill
    if unbroken.is_file() and pq.ParquetFile(unbroken).metadata.num_rows == rows:
        columns = ["predicted_label", "score"]
        cell["same_predictions_as_unbroken_run"] = pq.read_table(out, columns=columns).equals(
            pq.read_table(unbroken, columns=columns)
        )
    return {
        **_stamp(),
        "input_rows": rows,
        "workers": workers,
        "ray_one_actor_killed": cell,
        "survived": bool(cell["killed_actor_pids"]) and cell["output_rows"] == rows,
    }


def _train_job(job: str) -> tuple[Path, Path, list[str]]:
    """(train table, dev table, preset and settings) of a correctness job."""
    if job == "lstm-chnsenticorp":
        folder = DATA / "chnsenticorp"
        return folder / "train.csv.gz", folder / "dev.csv.gz", ["--preset", "lstm"]
    from bench.harness import DATASETS, prepare_dataset

    files = prepare_dataset(DATASETS["sms_spam"])["files"]  # the harness's 70/10/20 split
    settings = ["--preset", "minilm", "--set", "train.epochs=1"]
    return Path(files["train"]["path"]), Path(files["valid"]["path"]), settings


TRAIN_JOBS = {  # job -> result file
    "lstm-chnsenticorp": "scale_train_chnsenticorp_lstm.json",
    "minilm-sms_spam": "scale_train_sms_spam_minilm.json",
}


def train_bench(workers: int, job: str = "lstm-chnsenticorp") -> dict[str, Any]:
    """One local process against ``workers`` Ray workers on ``job`` (each one thread)."""
    WORK.mkdir(parents=True, exist_ok=True)
    train, dev, settings = _train_job(job)
    base = [*FENLEI, "train", str(train), "--dev", str(dev), *settings]
    base += ["--set", "eval.plots=false", "--set", "train.threads=1", "--overwrite"]
    cells: dict[str, Any] = {}
    for name, extra in (("local", []), ("ray", ["--ray", "--workers", str(workers)])):
        out = WORK / f"{job}-{name}"
        cells[name] = _timed([*base, "-o", str(out), *extra])
        metrics = json.loads((out / "metrics.json").read_text("utf-8"))
        cells[name]["dev_accuracy"] = metrics["dev"]["accuracy"]
    gap = abs(cells["local"]["dev_accuracy"] - cells["ray"]["dev_accuracy"]) * 100
    return {
        **_stamp(),
        "job": job,
        "workers": workers,
        **cells,
        "gap_points": round(gap, 2),
    }


def killed_train_bench(workers: int, job: str, kill_after: float) -> dict[str, Any]:
    """``job`` on Ray with one training worker killed (SIGKILL) ``kill_after`` s in, against
    the unbroken Ray run of the job's result file: Ray Train restarts the workers from the
    last checkpoint; the job must finish with a run folder that verifies."""
    from fenlei.artifact import verify_manifest

    unbroken = json.loads((RESULTS / TRAIN_JOBS[job]).read_text("utf-8"))
    train, dev, settings = _train_job(job)
    out = WORK / f"{job}-ray-killed"
    cmd = [*FENLEI, "train", str(train), "--dev", str(dev), *settings, "-o", str(out)]
    cmd += ["--set", "eval.plots=false", "--set", "train.threads=1", "--overwrite"]
    cmd += ["--ray", "--workers", str(workers), "--max-failures", "1"]
    cell = _timed(cmd, kill_after=kill_after, victim=b"RayTrainWorker")
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    verify_manifest(out)  # raises on a corrupt folder
    cell["dev_accuracy"] = metrics["dev"]["accuracy"]
    cell["epochs_run"], cell["best_epoch"] = metrics["epochs_run"], metrics["best_epoch"]
    cell["train_seconds"] = metrics["train_seconds"]
    gap = abs(cell["dev_accuracy"] - unbroken["ray"]["dev_accuracy"]) * 100
    return {
        **_stamp(),
        "job": job,
        "workers": workers,
        "ray_one_worker_killed": cell,
        "unbroken_ray_dev_accuracy": unbroken["ray"]["dev_accuracy"],
        "gap_points": round(gap, 2),
        "run_folder_verifies": True,
        "survived": bool(cell["killed_actor_pids"]),
    }


def main(argv: list[str] | None = None) -> None:
    """Run one benchmark and save its JSON under bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("predict", "train"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--job", choices=tuple(TRAIN_JOBS), default="lstm-chnsenticorp")
    parser.add_argument(
        "--kill-after",
        type=float,
        default=None,
        help="run only the Ray row, killing one predictor actor (predict) or training "
        "worker (train) this many s in",
    )
    args = parser.parse_args(argv)
    if shutil.which("taskset") is None and args.what == "predict":
        raise SystemExit("taskset (util-linux) is needed to pin the single process to one core")
    if args.what == "predict" and args.kill_after is not None:
        result = killed_worker_bench(args.rows, args.workers, args.kill_after)
        name = f"scale_predict_{args.rows}_killed_worker.json"
    elif args.what == "predict":
        result, name = predict_bench(args.rows, args.workers), f"scale_predict_{args.rows}.json"
    elif args.kill_after is not None:
        result = killed_train_bench(args.workers, args.job, args.kill_after)
        name = TRAIN_JOBS[args.job].replace(".json", "_killed_worker.json")
    else:
        result, name = train_bench(args.workers, args.job), TRAIN_JOBS[args.job]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
