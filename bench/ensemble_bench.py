"""Ensemble run folders on the harness's splits: members against their ensembles.

For each dataset the harness's split is used (``bench.harness.prepare_dataset``: train, a
10 % ``valid`` for model selection, and the test set: ChnSentiCorp's ``dev.csv.gz``,
waimai_10k's 20 % split). Members are trained on ``train`` with ``valid`` as dev, as the
harness's fenlei cells are; ``fenlei.build_ensemble`` then scores them and the ensembles on
``valid`` (weights tuned there, never on test) and on test. Run folders live under
``/tmp/fenlei-bench/ensemble`` (resumable: a finished member is reused); results go to
``bench/results/ensemble_<dataset>.json``::

    nohup nice .venv/bin/python -m bench.ensemble_bench --datasets chnsenticorp,waimai_10k &
    # IMDB's served ensemble (issue 13): NBSVM and MiniLM reading 256 tokens, equal weights
    nohup .venv/bin/python -m bench.ensemble_bench --datasets imdb --combos nbsvm+minilm-256 \
        --weights equal --serve &
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import DATASETS, RESULTS, prepare_dataset
from fenlei.combine import build_ensemble
from fenlei.config import load_config
from fenlei.data import load_table
from fenlei.loader import open_predictor
from fenlei.pipeline import prepare_splits, train_run
from fenlei.runtime import configure_torch

WORK = Path(os.environ.get("FENLEI_BENCH_WORK", "/tmp/fenlei-bench")) / "ensemble"
COMBOS = "nbsvm+linear,nbsvm+linear+lstm,nbsvm+lstm"
# member name -> preset and overrides: the presets as the harness trains them, and variants
# that tokenize or featurize differently (for diversity)
MEMBERS: dict[str, tuple[str, list[str]]] = {
    "nbsvm": ("nbsvm", []),
    "linear": ("linear", []),
    "lstm": ("lstm", []),
    "nbsvm-unigram": ("nbsvm", ["encoder.kind=unigram", "encoder.vocab_size=30000"]),
    "nbsvm-wordpiece": ("nbsvm", ["encoder.kind=wordpiece", "encoder.vocab_size=30000"]),
    "linear-char": ("linear", ["model.char_ngram_min=2", "model.char_ngram_max=4"]),
    "minilm": ("minilm", []),
    # the harness's fenlei-minilm-256 (IMDB: whole reviews cut to 256 tokens, head+tail)
    "minilm-256": ("minilm", ["encoder.max_length=256", "train.epochs=1"]),
    # Chinese: MiniLM's English vocabulary reads 62 % of the characters as [UNK]; the
    # training texts' unknown characters become new tokens (their embeddings learnt anew)
    "minilm-zh": ("minilm", ["encoder.extend_vocab=5000", "train.lr=1e-4"]),
    # the added tokens' embeddings (the whole table) at a higher rate than the layers
    "minilm-zh-e": (
        "minilm",
        ["encoder.extend_vocab=5000", "train.lr=1e-4", "train.embedding_lr=5e-4"],
    ),
    # ChnSentiCorp's reviews: a median of 73 tokens, a tenth over 189
    "minilm-zh-e-256": (
        "minilm",
        [
            "encoder.extend_vocab=5000",
            "train.lr=1e-4",
            "train.embedding_lr=5e-4",
            "encoder.max_length=256",
        ],
    ),
}


def _member(dataset: str, name: str, files: dict[str, Any], threads: int) -> Path:
    run_dir = WORK / dataset / name
    if (run_dir / "manifest.json").is_file():
        return run_dir
    preset, extra = MEMBERS[name]
    cfg = load_config(preset, [f"train.threads={threads}", "eval.plots=false", *extra])
    configure_torch(threads=threads, seed=cfg.train.seed)
    # no test split: the build scores every member on test once (IMDB's 25,000 reviews take
    # MiniLM-256 ~20 min here), so the training does not score them a second time
    splits = prepare_splits(
        cfg.data,
        load_table(files["train"]["path"], cfg.data),
        load_table(files["valid"]["path"], cfg.data),
    )
    train_run(cfg, splits, run_dir, overwrite=True)
    return run_dir


def _latency_ms(run_dir: Path, texts: list[str], backend: str = "torch") -> float:
    """Median batch-1 latency of the folder's predictor (torch backend unless given) over
    ``texts``."""
    predictor = open_predictor(run_dir, backend=backend, device="cpu")
    predictor.predict_proba(texts[:5])  # warm-up
    times = []
    for text in texts:
        start = time.perf_counter()
        predictor.predict_proba([text])
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    return answer, (time.perf_counter() - start) * 1000


def serve_check(run_dir: Path, texts: list[str], threads: int) -> dict[str, Any]:
    """``fenlei serve`` the folder in a subprocess, send ``texts`` one request each: do the
    labels it answers match the folder's own predictor's, and how long does a request take?"""
    port = _free_port()
    cmd = [sys.executable, "-m", "fenlei.cli", "serve", f"model={run_dir}", "--port", str(port)]
    cmd += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    predictor = open_predictor(run_dir, backend="torch", device="cpu")
    expected = [p.label for p in predictor.predict(texts)]
    with subprocess.Popen(cmd, env=env) as proc:
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("fenlei serve did not become ready") from None
                    time.sleep(0.5)
            answers, times = [], []
            for text in texts:
                answer, ms = _post(port, "/v1/models/model/predict", {"texts": [text]})
                answers.append(answer["predictions"][0]["label"])
                times.append(ms)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {
        "command": " ".join(["fenlei", *cmd[3:]]),
        "requests": len(texts),
        "same_labels_as_the_folder": sum(a == e for a, e in zip(answers, expected, strict=True)),
        "request_p50_ms": round(statistics.median(times), 2),
    }


def _size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 2)


def _scores(s: Any) -> dict[str, float]:
    return {"accuracy": round(s.accuracy, 4), "macro_f1": round(s.macro_f1, 4)}


def bench_dataset(
    dataset: str,
    combos: list[tuple[str, ...]],
    threads: int,
    latency_texts: int,
    weightings: tuple[str, ...] = ("equal", "tuned"),
    serve: bool = False,
) -> dict[str, Any]:
    """Train the members (if needed), build every combination with equal and tuned weights."""
    files = prepare_dataset(DATASETS[dataset])["files"]
    names = sorted({p for combo in combos for p in combo})
    members = {p: _member(dataset, p, files, threads) for p in names}
    configure_torch(threads=threads)
    test_texts = load_table(files["test"]["path"]).texts[:latency_texts]
    record: dict[str, Any] = {
        "dataset": dataset,
        "split": {k: {"rows": v["rows"]} for k, v in files.items()},
        "dev": "valid (10 % of train, model selection and weights)",
        "test": DATASETS[dataset].test_name,
        "threads": threads,
        "members": {},
        "ensembles": [],
    }
    for preset, run_dir in members.items():
        record["members"][preset] = {
            "batch1_p50_ms": _latency_ms(run_dir, test_texts),
            "size_mb": _size_mb(run_dir),
            "settings": {"preset": MEMBERS[preset][0], "overrides": MEMBERS[preset][1]},
        }
    for combo in combos:
        for weights in weightings:
            out = WORK / dataset / f"ens-{'+'.join(combo)}-{weights}"
            shutil.rmtree(out, ignore_errors=True)
            result = build_ensemble(
                [members[p] for p in combo],
                out,
                weights=weights,
                data=files["valid"]["path"],
                test=files["test"]["path"],
            )
            for member, name in zip(result.members, combo, strict=True):
                assert member.test is not None  # test was given
                record["members"][name] |= {
                    "dev": _scores(member.dev),
                    "test": _scores(member.test),
                }
            record["ensembles"].append(
                {
                    "members": list(combo),
                    "weights": weights,
                    "weight_values": {m.name: round(m.weight, 4) for m in result.members},
                    "dev": _scores(result.dev),
                    "test": _scores(result.test),
                    "build_seconds": round(result.seconds, 1),
                    "batch1_p50_ms": _latency_ms(out, test_texts),
                    "size_mb": _size_mb(out),
                    "command": (
                        f"fenlei ensemble {' '.join(str(members[p]) for p in combo)} --out {out} "
                        f"--weights {weights} --data {files['valid']['path']} "
                        f"--test {files['test']['path']}"
                    ),
                }
            )
            if serve:
                record["ensembles"][-1]["serve"] = serve_check(out, test_texts, threads)
            print(json.dumps(record["ensembles"][-1]), flush=True)
    record["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return record


def main() -> None:
    """Run every dataset named and write ``bench/results/ensemble_<dataset>.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="chnsenticorp,waimai_10k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-texts", type=int, default=200)
    parser.add_argument("--combos", default=COMBOS, help="member+member,... (see MEMBERS)")
    parser.add_argument("--weights", default="equal,tuned", help="equal, tuned or both")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument(
        "--serve", action="store_true", help="serve each ensemble and check its answers"
    )
    args = parser.parse_args()
    combos = [tuple(c.split("+")) for c in args.combos.split(",")]
    for dataset in args.datasets.split(","):
        weightings = tuple(args.weights.split(","))
        record = bench_dataset(
            dataset, combos, args.threads, args.latency_texts, weightings, serve=args.serve
        )
        path = RESULTS / f"ensemble_{dataset}{args.tag}.json"
        path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
