"""Calibration and the reject option, measured: ``python -m bench.calibration_bench``.

``ece DATASET PRESET [--limit N] [--keep DIR] [overrides]``: train PRESET on the benchmark split of
DATASET (``train`` to fit, at most N rows of it; ``valid`` as dev: the temperature is fitted
there; ``test`` is the benchmark's evaluation split, SST-2's official dev set) and write the
expected calibration error (15 bins) before and after temperature scaling to
``bench/results/calibration_<dataset>_<preset>.json``.

``reject [PRESET] [overrides]``: the bundled support intents with ``other`` held out of
training and dev; the reject point is chosen on dev (as ``eval.abstain_target_accuracy``
does, for several targets), and on the test split the ``other`` texts are out of scope: how
many the model abstains on (out-of-scope recall) and how accurate it is on the in-scope texts
it keeps. Writes ``bench/results/reject_intents_<preset>.json``.

Run niced in the background; bench/report.py puts the numbers into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import DATASETS, RESULTS, machine, prepare_dataset

HELD_OUT = "other"
TARGETS = (0.8, 0.85, 0.9, 0.95)


def _write(name: str, record: dict[str, Any]) -> Path:
    path = RESULTS / name
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def ece(
    dataset: str,
    preset: str,
    overrides: list[str],
    *,
    limit: int | None = None,
    keep: Path | None = None,
) -> Path:
    """Train ``preset`` on the benchmark split (its first ``limit`` training rows, as the
    harness's transformer cells do) and record the calibration it fits; ``keep``: write the
    run folder there instead of a temporary one (a distillation teacher, say)."""
    from fenlei.config import load_config
    from fenlei.data import Dataset, load_table
    from fenlei.pipeline import prepare_splits, train_run
    from fenlei.runtime import configure_torch

    split = prepare_dataset(DATASETS[dataset])
    cfg = load_config(preset, ["eval.plots=false", *overrides])
    configure_torch(threads=cfg.train.threads, seed=cfg.train.seed)
    files = {part: load_table(split["files"][part]["path"], cfg.data) for part in split["files"]}
    if limit is not None:
        train = files["train"]
        files["train"] = Dataset(train.examples[:limit], train.source, train.multi_label)
    splits = prepare_splits(cfg.data, files["train"], files["valid"], files["test"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_run(cfg, splits, keep or Path(tmp) / "run", overwrite=keep is not None)
        crossfit = _crossfit_ece(result.predictor, splits.test)
    metrics = result.metrics
    assert metrics.calibration is not None and metrics.test is not None
    record = {
        "dataset": dataset,
        "preset": preset,
        "overrides": overrides,
        "train_limit": limit,
        "run": str(keep) if keep else None,
        "dev": "valid (10 % of train): the temperature is fitted here",
        "test": DATASETS[dataset].test_name,
        "calibration": metrics.calibration.to_json(),
        "test_accuracy": metrics.test.accuracy,
        "test_crossfit": crossfit,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    return _write(f"calibration_{dataset}_{preset}.json", record)  # one file per pair


def _crossfit_ece(predictor: Any, test: Any) -> dict[str, Any]:
    """ECE on each half of the test split with the temperature fitted on the other half: what
    a dev set from the test's own distribution would give (two folds, seeded)."""
    import numpy as np

    from fenlei.calibrate import Calibration, expected_calibration_error, fit_temperature
    from fenlei.evaluate import label_targets

    logits = predictor.logits(test.texts)
    y = label_targets(test, predictor.labels, False)
    halves = np.array_split(np.random.default_rng(0).permutation(len(y)), 2)
    temperatures, eces = [], []
    for fit_on, score_on in ((0, 1), (1, 0)):
        a, b = halves[fit_on], halves[score_on]
        t = fit_temperature(logits[a], y[a], multi_label=False).temperature
        probs = predictor.calibrated(Calibration(temperature=t)).probabilities(logits[b])
        temperatures.append(t)
        eces.append(expected_calibration_error(probs, y[b], multi_label=False))
    return {"temperatures": temperatures, "ece": float(np.mean(eces)), "folds": 2}


def _without(data: Any, label: str) -> Any:
    from fenlei.data import Dataset

    return Dataset([ex for ex in data.examples if label not in ex.labels], data.source, False)


def reject(preset: str, overrides: list[str]) -> Path:
    """The reject option on the bundled intents with ``other`` as out-of-scope."""
    from fenlei.config import load_config
    from fenlei.data import bundled_dataset_path, load_table
    from fenlei.evaluate import label_targets
    from fenlei.pipeline import prepare_splits, train_run
    from fenlei.runtime import configure_torch

    cfg = load_config(preset, ["eval.plots=false", *overrides])
    configure_torch(threads=cfg.train.threads, seed=cfg.train.seed)
    data = {n: load_table(bundled_dataset_path(n), cfg.data) for n in ("train", "dev", "test")}
    test = data["test"]
    splits = prepare_splits(
        cfg.data, _without(data["train"], HELD_OUT), _without(data["dev"], HELD_OUT)
    )
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        run = train_run(cfg, splits, Path(tmp) / "run")
        base = run.predictor
        probs = base.predict_proba(test.texts)
        outside = [HELD_OUT in ex.labels for ex in test.examples]
        inside = _without(test, HELD_OUT)
        y_in = label_targets(inside, base.labels, False)
        in_probs = probs[[not o for o in outside]]
        out_probs = probs[outside]
        dev_probs = base.predict_proba(splits.dev.texts)
        y_dev = label_targets(splits.dev, base.labels, False)
        from fenlei.calibrate import choose_reject

        for target in TARGETS:
            point = choose_reject(dev_probs, y_dev, target)
            if point is None:
                points.append({"target_accuracy": target, "reachable": False})
                continue
            kept_in = in_probs.max(axis=1) >= point.threshold
            right = in_probs.argmax(axis=1) == y_in
            points.append(
                {
                    "target_accuracy": target,
                    "abstain_below": point.threshold,
                    "dev_coverage": point.coverage,
                    "dev_accuracy": point.accuracy,
                    "out_of_scope_recall": float((out_probs.max(axis=1) < point.threshold).mean()),
                    "in_scope_coverage": float(kept_in.mean()),
                    "in_scope_accuracy_kept": float(right[kept_in].mean()) if kept_in.any() else 0,
                }
            )
        no_reject_accuracy = float((in_probs.argmax(axis=1) == y_in).mean())
        calibration = run.metrics.calibration
    record = {
        "data": "bundled support intents; 'other' held out of train and dev, out of scope in test",
        "preset": preset,
        "overrides": overrides,
        "test_in_scope": len(y_in),
        "test_out_of_scope": int(sum(outside)),
        "in_scope_accuracy_no_reject": no_reject_accuracy,
        "temperature": None if calibration is None else calibration.temperature,
        "points": points,
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    return _write(f"reject_intents_{preset}.json", record)


def main(argv: list[str]) -> int:
    """``ece DATASET PRESET [--limit N] [--keep DIR] [overrides...]`` or
    ``reject [PRESET] [overrides...]``."""
    if argv[:1] == ["ece"] and len(argv) >= 3:
        rest = argv[3:]
        limit, keep = None, None
        while rest[:1] in (["--limit"], ["--keep"]):
            if rest[0] == "--limit":
                limit = int(rest[1])
            else:
                keep = Path(rest[1])
            rest = rest[2:]
        print(ece(argv[1], argv[2], rest, limit=limit, keep=keep))
        return 0
    if argv[:1] == ["reject"]:
        preset = argv[1] if len(argv) > 1 else "linear"
        print(reject(preset, argv[2:]))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
