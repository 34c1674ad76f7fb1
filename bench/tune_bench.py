"""``fenlei tune --preset linear`` against fastText autotune with the same wall-clock budget.

Both see the harness's splits (:func:`bench.harness.prepare_dataset`: train, 10 % of it as
valid for model selection, the benchmark's test split). fastText autotunes on ``valid`` for
``--seconds`` (its ``autotuneDuration``, then retrains with the best settings); fenlei tunes
for the same ``--time`` (no trial that would end later starts) with ``valid`` as dev. Each is
scored on test; wall times, the machine's load and the winning settings are recorded in
``bench/results/tune_vs_fasttext_<dataset>_<seconds>s.json``. Never part of the test suite.

    nice .venv/bin/python -m bench.tune_bench --datasets sst2,chnsenticorp --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any

from bench import harness
from bench.peers._common import read_table

RESULTS = harness.RESULTS
WORK = harness.WORK.parent / "tune"


def _env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": harness.PYTHONPATH,
    }


def run_fasttext(dataset: str, files: dict[str, Any], seconds: int) -> dict[str, Any]:
    """fastText autotune for ``seconds`` on valid, scored on test (the harness's peer script)."""
    workdir = WORK / dataset / "fasttext"
    workdir.mkdir(parents=True, exist_ok=True)
    task = {
        "dataset": dataset,
        "system": "fasttext-autotune",
        "lang": harness.DATASETS[dataset].lang,
        "train": files["train"]["path"],
        "valid": files["valid"]["path"],
        "test": files["test"]["path"],
        "workdir": str(workdir),
        "options": {"autotune": True, "autotune_seconds": seconds},
    }
    (workdir / "task.json").write_text(json.dumps(task), encoding="utf-8")
    py = harness.ensure_venv("fasttext")
    cmd = [str(py), str(harness.HERE / "peers" / "fasttext_peer.py"), str(workdir / "task.json")]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(2), check=False)
    wall = time.perf_counter() - started
    record: dict[str, Any] = {"system": "fastText autotune", "threads": 2, "load": load}
    if proc.returncode != 0:
        return {**record, "status": "failed", "reason": proc.stderr[-800:], "wall_s": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    _, gold = read_table(files["test"]["path"])
    scores = harness._metrics(gold, out["predictions"])
    return {
        **record,
        "status": "done",
        "wall_s": round(wall, 1),
        "test_accuracy": round(scores["accuracy"], 4),
        "test_macro_f1": round(scores["macro_f1"], 4),
        "settings": out.get("settings"),
        "latency_p50_ms": round(harness.percentile(out["latency_ms"], 50), 3),
    }


def tune_command(files: dict[str, Any]) -> list[str]:
    """``fenlei tune`` on the harness's splits: train, valid as dev, test."""
    return [
        str(harness.venv_python(None)),
        "-m",
        "fenlei.cli",
        "tune",
        files["train"]["path"],
        "--dev",
        files["valid"]["path"],
        "--test",
        files["test"]["path"],
    ]


def run_fenlei(
    dataset: str, files: dict[str, Any], seconds: int, threads: int, search: list[str]
) -> dict[str, Any]:
    """``fenlei tune --preset linear --time seconds`` with valid as dev, scored on test
    (``search``: ``--search`` entries beyond the family's own space)."""
    out_dir = WORK / dataset / "fenlei" / "best"
    for leftover in out_dir.parent.glob("best*"):  # a fresh study each time
        subprocess.run(["rm", "-rf", str(leftover)], check=True)
    cmd = [
        *tune_command(files),
        "--preset",
        "linear",
        "--trials",
        "1000",
        "--time",
        str(seconds),
        "--set",
        f"train.threads={threads}",
        "--set",
        "eval.plots=false",
        "-o",
        str(out_dir),
        *(arg for entry in search for arg in ("--search", entry)),
    ]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads), check=False)
    wall = time.perf_counter() - started
    record: dict[str, Any] = {"system": "fenlei tune --preset linear", "threads": threads}
    if search:
        record["search"] = search
    record["load"] = load
    if proc.returncode != 0:
        return {**record, "status": "failed", "reason": proc.stderr[-800:], "wall_s": wall}
    metrics = json.loads((out_dir / "metrics.json").read_text("utf-8"))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("trial ")]
    toml = out_dir.with_name("best.toml").read_text("utf-8")
    return {
        **record,
        "status": "done",
        "wall_s": round(wall, 1),
        "test_accuracy": round(metrics["test"]["accuracy"], 4),
        "test_macro_f1": round(metrics["test"]["macro_f1"], 4),
        "dev_accuracy": round(metrics["dev"]["accuracy"], 4),
        "trials": lines,
        "winner_toml": toml,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sst2,chnsenticorp")
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1, help="fenlei's torch threads")
    parser.add_argument("--search", action="append", default=[], help="fenlei tune --search")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()
    for dataset in args.datasets.split(","):
        files = harness.prepare_dataset(harness.DATASETS[dataset])["files"]
        result = {
            "dataset": dataset,
            "budget_s": args.seconds,
            "machine": harness.machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runs": [
                run_fasttext(dataset, files, args.seconds),
                run_fenlei(dataset, files, args.seconds, args.threads, args.search),
            ],
        }
        path = RESULTS / f"tune_vs_fasttext_{dataset}_{args.seconds}s{args.tag}.json"
        path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", "utf-8")
        print(json.dumps({r["system"]: r.get("test_accuracy") for r in result["runs"]}))


if __name__ == "__main__":
    main()
