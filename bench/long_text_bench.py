"""Long documents, measured: ``python -m bench.long_text_bench [--train N] [--test N]
[--kinds cut,chunks] [--tag T] [--keep DIR]``.

minilm on IMDB reading each review cut to 128 tokens (head+tail, the preset) against whole
reviews read as 128-token windows (``encoder.long_text=chunks``, stride 32, logits pooled by
mean or max). A full IMDB minilm run is beyond a 2-core CPU's time, so this measures what
fits: minilm fine-tuned for 1 epoch on ``--train`` reviews of the benchmark's training split
(seeded sample; 500 of its valid split as dev), scored on a fixed seeded sample of ``--test``
reviews of IMDB test. Two trained models, each read both ways:

- ``cut-trained``: the minilm preset as it is (128 head+tail);
- ``chunks-trained``: every window of a long training review is an example with its label.

Each cell (trained model x reading) records accuracy, texts/s of the test pass and the
windows read, and is written to ``bench/results/long_text_imdb<tag>.json`` as soon as it is
done (``--kinds cut`` trains only the first model; ``--test 25000`` scores all of IMDB test),
so a killed run keeps what it measured. Run niced in the background; bench/report.py puts the
numbers into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import DATA_ROOT, DATASETS, RESULTS, machine, prepare_dataset

DATA = DATA_ROOT / "imdb"
SEED = 7
WINDOWS = ["encoder.long_text=chunks", "encoder.stride=32"]
READINGS: dict[str, dict[str, Any]] = {
    "cut 128 head+tail": {"long_text": "cut", "truncation": "head+tail"},
    "chunks 128 stride 32": {"long_text": "chunks", "stride": 32},
}


def _sample(data: Any, n: int, seed: int) -> Any:
    from fenlei.data import Dataset

    pick = np.random.default_rng(seed).permutation(len(data))[:n]
    return Dataset([data.examples[i] for i in sorted(pick)], data.source, data.multi_label)


def _reading(predictor: Any, changes: dict[str, Any]) -> Any:
    """The same trained model reading texts another way (a fresh tokenizer copy: an
    ``Encoder`` sets its tokenizer's truncation)."""
    from tokenizers import Tokenizer

    from fenlei.predict import Predictor
    from fenlei.tokenize import Encoder

    cfg = predictor.encoder.cfg.model_copy(update=changes)
    encoder = Encoder(Tokenizer.from_str(predictor.encoder.tokenizer.to_str()), cfg)
    encoder.pad_id = predictor.encoder.pad_id
    return Predictor(
        encoder,
        predictor.model,
        predictor.labels,
        rule=predictor.rule,
        batch_size=64,
        device=predictor.device,
    )


def _gold(predictor: Any, test: Any) -> np.ndarray:
    return np.array([predictor.labels.index(ex.labels[0]) for ex in test.examples])


def _score(predictor: Any, test: Any, long: np.ndarray) -> dict[str, Any]:
    """Accuracy and speed of one reading; for windows, the window logits are computed once
    (tokenizing included in the time) and pooled both ways, as ``Predictor.logits`` pools
    them (tests/test_long_text.py checks that equality)."""
    from fenlei.models import batched_logits
    from fenlei.tokenize import Windows

    gold = _gold(predictor, test)
    started = time.perf_counter()
    windows = predictor.encoder.encode_windows(test.texts)
    per_window = batched_logits(
        predictor.model, windows.ids, pad_id=predictor.encoder.pad_id, batch_size=64
    ).numpy()
    seconds = time.perf_counter() - started
    pools = ("mean", "max") if not windows.single else ("mean",)
    right = {
        pool: Windows(windows.ids, windows.counts, pool).per_text(per_window).argmax(1) == gold
        for pool in pools
    }
    accuracy = {pool: round(float(ok.mean()), 4) for pool, ok in right.items()}
    accuracy_long = {pool: round(float(ok[long].mean()), 4) for pool, ok in right.items()}
    return {
        "accuracy": accuracy,
        "accuracy_on_long_texts": accuracy_long,
        "texts_per_s": round(len(test) / seconds, 2),
        "seconds": round(seconds, 1),
        "windows": len(windows.ids),
        "windows_per_text": round(len(windows.ids) / len(test), 2),
        "texts_in_several_windows": int(sum(c > 1 for c in windows.counts)),
    }


def _save(record: dict[str, Any]) -> None:
    trained = {name.split(" ")[0] for name in record["cells"]}
    if {"cut-trained", "chunks-trained"} <= trained:
        record["remains"] = None  # both models of the setting are measured
    out = RESULTS / record["file"]
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)


def _record(test: Any, out: Path) -> dict[str, Any]:
    """The results so far (cells of earlier invocations on the same test sample are kept)."""
    old = json.loads(out.read_text("utf-8")) if out.is_file() else {}
    test_what = f"a fixed seeded sample (seed {SEED}) of {len(test)} IMDB test reviews"
    record: dict[str, Any] = {
        "what": "minilm at max_length 128 reading IMDB reviews cut (head+tail) or whole as "
        f"windows; scored on {test_what}; texts/s of the test pass (tokenizing included, "
        "batch 64) on this machine (its 1-minute load when the run started: the load column)",
        "test": test_what,
        "remains": "a model trained on windows (--train N: 1 epoch on 2,000 reviews read as "
        "windows is about 45 min on this CPU), and the full setting: minilm trained on all "
        "22,500 training reviews, both ways, scored on all 25,000 test reviews, e.g. on a GPU",
        "machine": machine(),
        "file": out.name,
        "cells": {},
    }
    if old.get("test") == test_what:
        record["cells"] = old.get("cells", {})
    return record


def _score_cell(record: dict[str, Any], name: str, predictor: Any, test: Any) -> None:
    cell = record["cells"].setdefault(name, {})
    cell["command"] = record["command"]
    cell["machine"] = record["machine"]  # this invocation's (its load as it started)
    cell["readings"] = {}
    windows = _reading(predictor, READINGS["chunks 128 stride 32"]).encoder.encode_windows(
        test.texts
    )
    long = np.array(windows.counts) > 1  # longer than 128 tokens: the texts cutting changes
    cell["long_texts"] = int(long.sum())
    for reading, changes in READINGS.items():
        cell["readings"][reading] = _score(_reading(predictor, changes), test, long)
        cell["when"] = time.strftime("%Y-%m-%d %H:%M")
        _save(record)


def _train_cell(
    record: dict[str, Any],
    name: str,
    overrides: list[str],
    n_train: int,
    test: Any,
    keep: Path | None = None,
) -> None:
    """Train minilm for 1 epoch on ``n_train`` reviews (dev: 500 of valid) and score it;
    ``keep``: write the run folder under it (``--run`` reads it again) instead of a
    temporary one."""
    from fenlei.config import load_config
    from fenlei.data import load_table
    from fenlei.pipeline import prepare_splits, train_run
    from fenlei.runtime import configure_torch

    cfg = load_config("minilm", ["eval.plots=false", "train.epochs=1", *overrides])
    configure_torch(threads=cfg.train.threads, seed=cfg.train.seed)
    split = prepare_dataset(DATASETS["imdb"])
    train = _sample(load_table(split["files"]["train"]["path"], cfg.data), n_train, SEED)
    dev = _sample(load_table(split["files"]["valid"]["path"], cfg.data), 500, SEED)
    splits = prepare_splits(cfg.data, train, dev, None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = keep / name.replace(" ", "-") if keep else Path(tmp) / "run"
        result = train_run(cfg, splits, run_dir, overwrite=keep is not None)
    record["cells"][name] = {
        "trained": f"1 epoch on {n_train} reviews of the benchmark's IMDB train split "
        f"(seed {SEED}), dev 500 of its valid split; overrides {overrides}",
        "train_seconds": round(time.perf_counter() - started, 1),
        "train_windows": len(result.predictor.encoder.encode_windows(train.texts).ids),
        "dev_accuracy": result.metrics.dev.accuracy,
    }
    _save(record)
    _score_cell(record, name, result.predictor, test)


def main(argv: list[str] | None = None) -> None:
    """Score an existing minilm run folder (``--run``) and/or train minilm both ways
    (``--train N``), each read cut and as windows; results written cell by cell."""
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--run", type=Path, help="a trained minilm run folder to read both ways")
    args.add_argument("--train", type=int, default=0, help="train on N reviews (0: do not)")
    args.add_argument("--test", type=int, default=1000)
    args.add_argument("--threads", type=int, default=2)
    args.add_argument("--kinds", default="cut,chunks", help="models to train: cut, chunks")
    args.add_argument("--tag", default="", help="suffix of the results file")
    args.add_argument("--keep", type=Path, help="keep the trained run folders under this folder")
    opts = args.parse_args(argv)

    from fenlei.config import load_config
    from fenlei.data import load_table
    from fenlei.predict import Predictor
    from fenlei.runtime import configure_torch

    configure_torch(threads=opts.threads, seed=SEED)
    imdb_test = load_table(DATA / "test.csv.gz", load_config("minilm").data)
    test = _sample(imdb_test, opts.test, SEED)
    record = _record(test, RESULTS / f"long_text_imdb{opts.tag}.json")
    record["command"] = " ".join(["python -m bench.long_text_bench", *(argv or sys.argv[1:])])
    if opts.run is not None:
        predictor = Predictor.from_run(opts.run, backend="torch", device="cpu")
        _score_cell(record, f"run {opts.run.name}", predictor, test)
    if opts.train:
        threads = [f"train.threads={opts.threads}"]
        kinds = opts.kinds.split(",")
        if "chunks" not in kinds:
            record["remains"] = (
                f"minilm trained on the windows of the same {opts.train:,} reviews "
                "(`--kinds chunks`), read both ways"
            )
        if "cut" in kinds:
            _train_cell(record, f"cut-trained {opts.train}", threads, opts.train, test, opts.keep)
        if "chunks" in kinds:
            chunks = [*threads, *WINDOWS]
            _train_cell(record, f"chunks-trained {opts.train}", chunks, opts.train, test, opts.keep)


if __name__ == "__main__":
    main()
