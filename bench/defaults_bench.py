"""Do the presets' defaults hold on small many-class data? fenlei against its baselines.

Issue 15's row: on a 77-intent banking set (10k short texts) the default ``linear`` preset
reached 0.865 where TF-IDF + LinearSVC reached 0.891 and fastText (25 epochs) 0.892: it
underfits small many-class data. The goal: every preset's defaults (no tuning) within 0.5
point of the better of the two on any dataset. No such set ships here, so this builds
many-class sets from the five benchmark sets and the bundled support data:

- ``intents12``: the bundled customer-support intents (12 labels, 957 train rows in English
  and Chinese; its own dev and test files; the peers read it as Chinese, which splits the
  CJK characters and keeps English words);
- ``en6-K`` / ``zh4-K``: one label per (set, label) pair of the English sets (imdb, sst2,
  sms_spam: 6 labels) or the Chinese ones (chnsenticorp, waimai_10k: 4 labels), K training
  texts per label (fewer where a label has fewer: sms_spam's spam has 523), K/9 (at least 20)
  dev and 150 test texts per label, all drawn without overlap from the harness's training
  files (seed 13). Telling the sets apart is easy; telling
  the sentiment within one is what the benchmark sets measure, now with few rows per label;
- the five benchmark sets themselves (the harness's splits), so no default is bought by
  losing there.

Each (set, system) cell runs in its own process through :func:`bench.harness.run_task` and is
saved at once to ``bench/results/defaults_<set>.json``; a re-run skips finished cells. Systems:
``linear`` etc. (a fenlei preset with its defaults, or ``name+key=value;...`` for overrides),
``sklearn-svm`` (TF-IDF + LinearSVC), ``fasttext`` (bigrams, the harness's 10 epochs) and
``fasttext-25`` (25 epochs, fastText's usual setting on small data).

    .venv/bin/python -m bench.defaults_bench --sets intents12,en6-100 --systems linear,sklearn-svm
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    DATASETS,
    RESULTS,
    ROOT,
    WORK,
    _atomic_json,
    _write_csv_gz,
    prepare_dataset,
    run_task,
)
from bench.peers._common import read_table

__all__ = ["build_set", "main", "run_system"]

BUNDLED = ROOT / "src" / "fenlei" / "bundled"
MIXES = {"en6": ("imdb", "sst2", "sms_spam"), "zh4": ("chnsenticorp", "waimai_10k")}
TEST_PER_LABEL = 150
SEED = 13
PEERS = {
    "sklearn-svm": ("sklearn-svm", {}),
    "fasttext": ("fasttext", {}),
    "fasttext-25": ("fasttext", {"epoch": 25}),
}


def _mixed(name: str, per_label: int) -> dict[str, list[tuple[str, str]]]:
    """Train/valid/test rows of an ``en6``/``zh4`` set with ``per_label`` training texts."""
    rng = random.Random(SEED)
    dev_per_label = max(20, per_label // 9)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for dataset in MIXES[name]:
        texts, labels = read_table(prepare_dataset(DATASETS[dataset])["files"]["train"]["path"])
        by_label: dict[str, list[str]] = {}
        for text, label in zip(texts, labels, strict=True):
            by_label.setdefault(label, []).append(text)
        for label, pool in sorted(by_label.items()):
            held = dev_per_label + TEST_PER_LABEL
            chosen = rng.sample(pool, min(len(pool), per_label + held))
            tag = f"{dataset}_{label}"
            parts["valid"] += [(t, tag) for t in chosen[:dev_per_label]]
            parts["test"] += [(t, tag) for t in chosen[dev_per_label:held]]
            parts["train"] += [(t, tag) for t in chosen[held:]]  # fewer where the pool is small
    for rows in parts.values():
        rng.shuffle(rows)
    return parts


def build_set(name: str) -> tuple[dict[str, str], str]:
    """The train/valid/test files of set ``name`` (written under the work folder), its language."""
    if name == "intents12":
        files = {
            part: str(BUNDLED / f"support_{f}.csv")
            for part, f in (("train", "train"), ("valid", "dev"), ("test", "test"))
        }
        return files, "zh"  # half its texts are Chinese: the peers' CJK-aware reading
    if name in DATASETS:
        record = prepare_dataset(DATASETS[name])["files"]
        return {part: record[part]["path"] for part in ("train", "valid", "test")}, DATASETS[
            name
        ].lang
    mix, _, k = name.partition("-")
    if mix not in MIXES or not k.isdigit():
        raise SystemExit(f"unknown set {name!r}: intents12, en6-K, zh4-K or {', '.join(DATASETS)}")
    out = WORK / "defaults" / name
    files = {part: str(out / f"{part}.csv.gz") for part in ("train", "valid", "test")}
    if not all(Path(f).is_file() for f in files.values()):
        for part, rows in _mixed(mix, int(k)).items():
            _write_csv_gz(out / f"{part}.csv.gz", rows)
    return files, "zh" if mix == "zh4" else "en"


def run_system(set_name: str, system: str, files: dict[str, str], lang: str) -> dict[str, Any]:
    """One cell: a peer by name, or a fenlei preset with ``+key=value;...`` overrides."""
    workdir = WORK / "defaults" / "cells" / f"{set_name}__{system.replace('/', '_')}"
    if system in PEERS:
        peer, extra = PEERS[system]
        return run_task(peer, files, lang, workdir, extra=extra, threads=1, name=set_name)
    preset, _, rest = system.partition("+")
    overrides = [o for o in rest.split(";") if o]
    extra = {"preset": preset, "overrides": overrides}
    return run_task(f"fenlei-{preset}", files, lang, workdir, extra=extra, threads=1, name=set_name)


def _summary(cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each fenlei system's accuracy against the better of TF-IDF + LinearSVC and fastText."""
    peers = [c["accuracy"] for s, c in cells.items() if s in PEERS and c.get("status") == "done"]
    if not peers:
        return {}
    best = max(peers)
    return {
        "best_peer_accuracy": best,
        "gap_points": {
            s: round(100 * (c["accuracy"] - best), 2)
            for s, c in cells.items()
            if s not in PEERS and c.get("status") == "done"
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run every (set, system) cell not yet done."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="intents12,en6-100,en6-1000,zh4-100,zh4-1000")
    ap.add_argument("--systems", default="linear,sklearn-svm,fasttext,fasttext-25")
    ap.add_argument("--force", action="store_true", help="re-run finished cells")
    args = ap.parse_args(argv)
    for set_name in args.sets.split(","):
        files, lang = build_set(set_name)
        out = RESULTS / f"defaults_{set_name}.json"
        record: dict[str, Any] = (
            json.loads(out.read_text("utf-8"))
            if out.is_file()
            else {"set": set_name, "lang": lang, "cells": {}}
        )
        record["rows"] = {part: len(read_table(f)[0]) for part, f in files.items()}
        record["labels"] = len(set(read_table(files["train"])[1]))
        _atomic_json(out, record)
        for system in args.systems.split(","):
            cell = record["cells"].get(system)
            if cell and cell.get("status") == "done" and not args.force:
                print(f"[skip] {set_name} / {system}", flush=True)
                continue
            print(f"[run ] {set_name} / {system} ...", flush=True)
            cell = run_system(set_name, system, files, lang)
            cell["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            record["cells"][system] = cell
            record.update(_summary(record["cells"]))
            _atomic_json(out, record)
            shown = (
                f"acc {cell['accuracy']:.4f} train {cell['train_seconds']:.1f}s"
                if cell["status"] == "done"
                else cell.get("reason", "")[-300:]
            )
            print(f"[{cell['status']}] {set_name} / {system}: {shown}", flush=True)


if __name__ == "__main__":
    main()
