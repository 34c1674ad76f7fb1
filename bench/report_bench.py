"""The HTML report's build time and size on a large labelled table (IMDB test, 25k rows).

Target (issue 14): at most 60 s beyond prediction time and at most 10 MB. The run folder is
any finished IMDB run (``fenlei train imdb/train.csv.gz --test imdb/test.csv.gz``); the
report is built as ``fenlei report RUN --data imdb/test.csv.gz`` builds it, with each phase
timed (wall time and this process's CPU time: on a shared, loaded machine the CPU time of the
single-threaded phases is what they take on an idle one): reading the run folder and its
kept splits, reading the table, predicting it (the part the target leaves out), and
rendering (data card over train + table, figures, explanations of the 10 most confident
mistakes, latency, hashes).

    .venv/bin/python -m bench.report_bench RUN [--data TABLE] [--name imdb]

Writes ``bench/results/report_<name>.json``. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.harness import DATA_ROOT, RESULTS
from fenlei.data import load_table
from fenlei.report import ReportLimits, inputs_from_run, write_html

T = TypeVar("T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "imdb" / "test.csv.gz")
    parser.add_argument("--name", default="imdb")
    args = parser.parse_args()
    from fenlei.runtime import configure_torch

    configure_torch()
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(name: str, step: Callable[[], T]) -> T:
        wall, used = time.perf_counter(), time.process_time()
        value = step()
        timings[name] = time.perf_counter() - wall
        cpu[name] = time.process_time() - used
        return value

    inputs = timed("read_run_s", lambda: inputs_from_run(args.run))
    table = timed("read_table_s", lambda: load_table(args.data, inputs.cfg.data))
    probs = timed("predict_s", lambda: inputs.predictor.predict_proba(table.texts))
    inputs.data[args.data.name] = table
    inputs.probs[args.data.name] = probs
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.html"
        path = timed("render_s", lambda: write_html(inputs, out, ReportLimits()))
        size = path.stat().st_size
    beyond = timings["read_run_s"] + timings["read_table_s"] + timings["render_s"]
    beyond_cpu = cpu["read_run_s"] + cpu["read_table_s"] + cpu["render_s"]
    result = {
        "run": str(args.run),
        "architecture": inputs.cfg.model.architecture,
        "table": str(args.data),
        "rows": len(table),
        "splits_shown": sorted(inputs.data),
        **{k: round(v, 2) for k, v in timings.items()},
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "beyond_prediction_s": round(beyond, 2),
        "beyond_prediction_cpu_s": round(beyond_cpu, 2),
        "bytes": size,
        "targets": {"beyond_prediction_s": 60, "bytes": 10_000_000},
        "met": beyond <= 60 and size <= 10_000_000,
        "met_by_cpu_time": beyond_cpu <= 60 and size <= 10_000_000,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
    }
    out = RESULTS / f"report_{args.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
