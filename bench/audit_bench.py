"""Label-error finding: how many of the rows flagged first are the rows whose label was flipped.

SST-2 train (67,349 rows) with 5 % of its labels flipped at random (seeded; binary, so a
flip is the other label) goes through :func:`fenlei.audit.find_label_issues` with its
defaults (the ``linear`` preset, 5 stratified folds). With N the number of flipped rows,
precision at N is the share of flipped rows among the N rows ranked first (target ≥ 0.5;
chance is 0.05). SST-2's own labels are not clean (its phrases were labelled by crowd
workers), so a flagged row that was not flipped is not necessarily a false alarm.

    .venv/bin/python -m bench.audit_bench --dataset sst2 --noise 0.05 --threads 2

Writes ``bench/results/audit_<dataset>.json``. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
from datetime import UTC, datetime
from typing import Any

from bench.harness import DATA_ROOT, RESULTS
from bench.peers import _common as c

SEED = 13


def _noisy(dataset: str, noise: float, rows: int | None) -> tuple[Any, set[int]]:
    """The train split with ``noise`` of its labels flipped; the flipped indices."""
    from fenlei.data import Dataset

    path = DATA_ROOT / dataset / "train.csv.gz"
    texts, labels = c.read_table(path)
    rng = random.Random(SEED)
    if rows is not None and rows < len(texts):
        keep = sorted(rng.sample(range(len(texts)), rows))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    names = sorted(set(labels))
    flipped = set(rng.sample(range(len(texts)), round(noise * len(texts))))
    for i in flipped:
        labels[i] = rng.choice([n for n in names if n != labels[i]])
    return Dataset.from_lists(texts, labels, source=f"{path} (noisy)"), flipped


def run(dataset: str, noise: float, folds: int, threads: int, rows: int | None) -> dict[str, Any]:
    """Audit the noisy table and score the ranking against the flipped rows."""
    from fenlei.audit import find_label_issues
    from fenlei.config import load_config
    from fenlei.runtime import configure_torch

    cfg = load_config("linear", [f"train.threads={threads}"])
    configure_torch(threads=threads, seed=cfg.train.seed)
    data, flipped = _noisy(dataset, noise, rows)
    fold_seconds: list[float] = []
    issues = find_label_issues(
        data, cfg, folds=folds, seed=0, on_fold=lambda _k, _n, s: fold_seconds.append(s)
    )
    # from_lists numbers rows from 1 in list order
    hit = [issue.row - 1 in flipped for issue in issues.rows]
    n = len(flipped)
    top = hit[:n]
    return {
        "dataset": dataset,
        "rows": len(data),
        "noise": noise,
        "flipped": n,
        "folds": folds,
        "preset": issues.preset,
        "flagged": len(issues.rows),
        "precision_at_n": round(sum(top) / n, 4),
        "precision_all_flagged": round(sum(hit) / max(1, len(hit)), 4),
        "recall_all_flagged": round(sum(hit) / n, 4),
        "target_precision_at_n": 0.5,
        "seconds": round(issues.seconds, 1),
        "fold_seconds": [round(s, 1) for s in fold_seconds],
        "threads": threads,
        "top_examples": [issue.to_json() for issue in issues.rows[:5]],
    }


def main() -> None:
    """Parse arguments, run, write the result file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=None, help="a seeded sample (quick runs)")
    args = ap.parse_args()
    result = run(args.dataset, args.noise, args.folds, args.threads, args.rows)
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    result["when"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = f"audit_{args.dataset}" + ("" if args.rows is None else f"_{args.rows}")
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "top_examples"}, indent=1))


if __name__ == "__main__":
    main()
