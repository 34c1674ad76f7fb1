"""``fenlei tune --families ... --latency-budget MS``: the most accurate model within a budget.

On the harness's splits (:func:`bench.harness.prepare_dataset`: train, 10 % of it as valid
for model selection, the benchmark's test split), ``fenlei tune`` searches the families named
for ``--seconds``. The study's first trials are each family's preset (``fenlei tune`` queues
them first), so the presets are measured in the same run, on the same machine, with the same
latency timer as every other trial. Every trial's settings, dev and test scores, batch-1 p50,
untrained probe and wall time, and the winner, go to
``bench/results/tune_latency_<dataset>_<budget>ms_<seconds>s.json``. The target (issue 15): a winner
within the budget at least as accurate on test as every preset trial that fits the budget.
Never part of the test suite.

    nice .venv/bin/python -m bench.tune_latency_bench --dataset sst2 --budget 2 --seconds 2700
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.tune_bench import tune_command

RESULTS = harness.RESULTS
WORK = harness.WORK.parent / "tune-latency"
DOCS_PLOTS = harness.ROOT / "docs" / "benchmarks"


def _env() -> dict[str, str]:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": harness.PYTHONPATH}


def _command(files: dict[str, Any], args: argparse.Namespace, out_dir: Path) -> list[str]:
    return [
        *tune_command(files),
        "--families",
        args.families,
        "--latency-budget",
        str(args.budget),
        "--trials",
        "1000",
        "--time",
        str(args.seconds),
        "--set",
        "eval.plots=false",
        "-o",
        str(out_dir),
    ]


def _trials(out_dir: Path) -> list[dict[str, Any]]:
    """Every trial of the study, read from its SQLite file."""
    import optuna

    storage = f"sqlite:///{out_dir.with_name(out_dir.name + '.optuna.db')}"
    (name,) = optuna.get_all_study_names(storage)
    rows = []
    for t in optuna.load_study(study_name=name, storage=storage).trials:
        attrs = t.user_attrs
        values = t.values or []
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "preset": attrs.get("preset"),
                "overrides": attrs.get("overrides", []),
                "dev_accuracy": values[0] if values else None,
                "p50_ms": values[1] if len(values) > 1 else None,
                "probe_ms": attrs.get("probe_ms"),
                "over_budget": bool(attrs.get("over_budget", False)),
                "repeat_of": attrs.get("repeat_of"),
                "test_accuracy": attrs.get("test"),
                "train_seconds": attrs.get("train_seconds"),
                "wall_s": t.duration.total_seconds() if t.duration else None,
            }
        )
    return rows


def _verdict(trials: list[dict[str, Any]], budget: float, presets: int) -> dict[str, Any]:
    """The winner against each preset trial (the first ``presets`` trials) that fits."""
    within = [
        t
        for t in trials
        if t["state"] == "complete" and t["p50_ms"] is not None and t["p50_ms"] <= budget
    ]
    if not within:
        return {"winner": None, "met": False}
    best = min(within, key=lambda t: (-t["dev_accuracy"], t["p50_ms"], t["number"]))
    fitting = [t for t in within if t["number"] < presets]
    beaten = max((t["test_accuracy"] or 0.0 for t in fitting), default=0.0)
    return {
        "winner": best["number"],
        "winner_test_accuracy": best["test_accuracy"],
        "best_fitting_preset_test_accuracy": beaten,
        "fitting_presets": [t["preset"] for t in fitting],
        "met": (best["test_accuracy"] or 0.0) >= beaten,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--families", default="linear,nbsvm,lstm,minilm")
    parser.add_argument("--budget", type=float, default=2.0, help="batch-1 p50 budget, ms")
    parser.add_argument("--seconds", type=int, default=2700)
    args = parser.parse_args()
    files = harness.prepare_dataset(harness.DATASETS[args.dataset])["files"]
    out_dir = WORK / args.dataset / "best"
    if out_dir.parent.exists():
        shutil.rmtree(out_dir.parent)  # a fresh study each time
    out_dir.parent.mkdir(parents=True)
    cmd = _command(files, args, out_dir)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    wall = time.perf_counter() - started
    trials = _trials(out_dir)
    presets = len(args.families.split(","))
    result = {
        "dataset": args.dataset,
        "families": args.families,
        "budget_ms": args.budget,
        "budget_s": args.seconds,
        "command": " ".join(cmd[2:]),
        "machine": harness.machine(),
        "load": load,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - wall)),
        "wall_s": round(wall, 1),
        "status": "done" if proc.returncode == 0 else "failed",
        "stdout_tail": proc.stdout[-4000:],
        "stderr_tail": proc.stderr[-2000:] if proc.returncode else "",
        "trials": trials,
        **_verdict(trials, args.budget, presets),
    }
    budget = f"{args.budget:g}".replace(".", "p")
    name = f"tune_latency_{args.dataset}_{budget}ms_{args.seconds}s"
    plot = out_dir.with_name(out_dir.name + ".pareto.png")
    if plot.is_file():  # the Pareto plot fenlei tune drew, for docs/benchmarks.md
        shutil.copyfile(plot, DOCS_PLOTS / f"{name}.png")
        result["pareto_plot"] = f"benchmarks/{name}.png"
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", "utf-8")
    print(json.dumps({k: result.get(k) for k in ("status", "winner", "met", "wall_s")}))


if __name__ == "__main__":
    main()
