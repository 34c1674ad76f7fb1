"""Explanations: how faithful they are, and how long one takes.

``faithfulness``: comprehensiveness (ERASER, DeYoung et al. 2020) of each family's token
attributions. For every text of the evaluation split the predicted label's probability is
measured, then again with the top 20 % of its words (by score towards that label) deleted
from the text, and again with a random 20 % deleted (seeded; as many words); the mean drop
of the first is compared with the mean drop of the second. Models are trained here with the
preset's settings (train split; dev held out of it by the pipeline), and the split explained
is the benchmark's evaluation split (SST-2 dev, ChnSentiCorp dev).

``latency``: seconds to explain one text of 64 tokens with a MiniLM-sized transformer (the
packaged MiniLM with a fresh 2-label head), fenlei's explain against Captum's
``LayerIntegratedGradients`` called plainly (50 steps, its defaults), both on 2 threads.

    .venv/bin/python -m bench.explain_bench faithfulness --datasets sst2,chnsenticorp
    .venv/bin/python -m bench.explain_bench latency

Writes ``bench/results/explain_faithfulness.json`` and ``bench/results/explain_latency.json``.
Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import DATA_ROOT, RESULTS
from bench.peers import _common as c

SHARE = 0.2  # ERASER's comprehensiveness at the top 20 % of tokens
SEED = 13
WORK = Path(os.environ.get("FENLEI_BENCH_WORK", "/tmp/fenlei-bench/explain"))


def _dataset(path: Path) -> Any:
    from fenlei.data import Dataset

    texts, labels = c.read_table(path)
    return Dataset.from_lists(texts, labels, source=str(path))


def _train(
    dataset: str,
    preset: str,
    threads: int,
    *,
    train_rows: int | None = None,
    overrides: list[str] | None = None,
) -> Any:
    from fenlei.config import load_config
    from fenlei.pipeline import prepare_splits, train_run
    from fenlei.runtime import configure_torch

    settings = [f"train.threads={threads}", "eval.plots=false", "eval.report=false"]
    cfg = load_config(preset, [*settings, *(overrides or [])])
    configure_torch(threads=threads, seed=cfg.train.seed)
    folder = DATA_ROOT / dataset
    train = _dataset(folder / "train.csv.gz")
    if train_rows is not None:  # the first rows (the sets' files are in no label order)
        train = train.subset(range(min(train_rows, len(train))))
    splits = prepare_splits(cfg.data, train, None, _dataset(folder / "dev.csv.gz"))
    start = time.perf_counter()
    result = train_run(cfg, splits, WORK / f"{dataset}-{preset}", overwrite=True)
    return result.predictor, splits.test, time.perf_counter() - start


def _without(text: str, spans: list[tuple[int, int]]) -> str:
    """The text with the given character spans deleted."""
    keep, at = [], 0
    for start, end in sorted(spans):
        keep.append(text[at:start])
        at = max(at, end)
    keep.append(text[at:])
    return "".join(keep)


def comprehensiveness(predictor: Any, texts: list[str], *, chunk: int = 256) -> dict[str, Any]:
    """Mean drop of the predicted label's probability: top 20 % words vs a random 20 %."""
    rng = random.Random(SEED)
    top_drops: list[float] = []
    random_drops: list[float] = []
    explain_seconds = 0.0
    for start in range(0, len(texts), chunk):
        batch = texts[start : start + chunk]
        t0 = time.perf_counter()
        explanations = predictor.explain(batch)
        explain_seconds += time.perf_counter() - t0
        top_texts, random_texts, kept = [], [], []
        for e in explanations:
            if not e.tokens:
                continue
            k = max(1, math.ceil(SHARE * len(e.tokens)))
            ranked = sorted(e.tokens, key=lambda t: -t.score)[:k]
            chosen = rng.sample(list(e.tokens), k)
            top = _without(e.text, [(t.start, t.end) for t in ranked])
            other = _without(e.text, [(t.start, t.end) for t in chosen])
            # a text left with no words is scored as the empty string would be: skip it
            if top.strip() and other.strip():
                top_texts.append(top)
                random_texts.append(other)
                kept.append(e)
        index = [predictor.labels.index(e.label) for e in kept]
        p_top = predictor.predict_proba(top_texts)
        p_random = predictor.predict_proba(random_texts)
        for row, e in enumerate(kept):
            top_drops.append(e.probability - float(p_top[row, index[row]]))
            random_drops.append(e.probability - float(p_random[row, index[row]]))
    top_mean, random_mean = statistics.fmean(top_drops), statistics.fmean(random_drops)
    return {
        "texts": len(top_drops),
        "comprehensiveness_top20": round(top_mean, 4),
        "comprehensiveness_random20": round(random_mean, 4),
        "ratio": round(top_mean / random_mean, 2) if random_mean > 0 else None,
        "explain_seconds": round(explain_seconds, 2),
        "explain_ms_per_text": round(1000 * explain_seconds / max(1, len(texts)), 3),
    }


def _accuracy(predictor: Any, data: Any) -> float:
    predicted = [p.label for p in predictor.predict(data.texts)]
    right = [label == gold[0] for label, gold in zip(predicted, data.labels, strict=True)]
    return round(float(np.mean(right)), 4)


def faithfulness(
    datasets: list[str],
    presets: list[str],
    threads: int,
    *,
    train_rows: int | None = None,
    texts: int | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for dataset in datasets:
        for preset in presets:
            predictor, test, train_seconds = _train(
                dataset, preset, threads, train_rows=train_rows, overrides=overrides
            )
            cell = comprehensiveness(predictor, list(test.texts)[:texts])
            cell["train_seconds"] = round(train_seconds, 1)
            cell["accuracy"] = _accuracy(predictor, test)
            if train_rows is not None or overrides or texts is not None:
                cell["reduced"] = {"train_rows": train_rows, "texts": texts, "set": overrides}
            cells[f"{dataset}/{preset}"] = cell
            print(f"{dataset}/{preset}: {cell}", flush=True)
    return cells


_REVIEW = (
    "the film was surprisingly good , the actors were great and the story kept me "
    "watching until the very end although the music was too loud at times"
)


def _text_of(encoder: Any, tokens: int) -> str:
    """A review-like English text of exactly ``tokens`` tokens ([CLS] and [SEP] counted)."""
    words = _REVIEW.split()
    text = ""
    for i in range(1000):
        candidate = (text + " " + words[i % len(words)]).strip()
        if len(encoder.encode_ids([candidate])[0]) > tokens:
            return text
        text = candidate
    raise AssertionError("unreachable")


def _minilm(random_weights: str | None) -> tuple[Any, Any]:
    """The packaged MiniLM with a fresh 2-label head and its encoder; or, with a folder of
    its config.json and tokenizer.json, a randomly initialised model of the same size (the
    same work per text, for a machine without the weights)."""
    from fenlei.config import EncoderConfig
    from fenlei.models.transformer import TransformerClassifier
    from fenlei.tokenize import load_pretrained_encoder

    where = random_weights or "minilm"
    encoder = load_pretrained_encoder(where, EncoderConfig(kind="pretrained", max_length=128))
    if random_weights is None:
        model = TransformerClassifier.from_pretrained("minilm", n_outputs=2, dropout=0.1)
    else:
        config = json.loads((Path(random_weights) / "config.json").read_text())
        model = TransformerClassifier.from_config(config, n_outputs=2, dropout=0.1)
    return model.eval(), encoder


def latency(
    threads: int, repeats: int, random_weights: str | None = None, device: str = "cpu"
) -> dict[str, Any]:
    import torch
    from captum.attr import LayerIntegratedGradients

    from fenlei.explain import IG_STEPS, explain, shadow_copy, target_scores
    from fenlei.models import family_of

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    model, encoder = _minilm(random_weights)
    model = model.to(device)
    text = _text_of(encoder, 64)
    ids = torch.tensor([encoder.encode_ids([text])[0]], device=device)
    mask = torch.ones_like(ids)
    family = family_of("transformer.v1")
    shadow = shadow_copy(model)

    def ours() -> Any:
        return explain(shadow, encoder, family, ["neg", "pos"], [text])[0]

    def forward(batch: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return target_scores(model(batch, m), 1, multi_label=False)

    baseline = ids.clone()
    baseline[0, 1:-1] = encoder.pad_id

    def plain() -> Any:
        lig = LayerIntegratedGradients(forward, family.token_embedding(model))  # type: ignore[misc]
        return lig.attribute(
            ids, baselines=baseline, additional_forward_args=(mask,), return_convergence_delta=True
        )

    out: dict[str, Any] = {
        "tokens": int(ids.shape[1]),
        "threads": threads,
        "device": device,
        "weights": "random (MiniLM's size)" if random_weights else "MiniLM (packaged)",
    }
    for name, fn in (("fenlei_explain", ours), ("captum_plain_50_steps", plain)):
        fn()  # warm-up
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            result = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        delta = result.delta if name == "fenlei_explain" else float(result[1][0])
        out[name] = {
            "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3),
            # CPU seconds of all threads: on a busy machine, the wall time the 2 threads
            # would take alone is about this divided by 2
            "median_cpu_s": round(statistics.median(cpu), 3),
            "delta": round(float(delta), 5),
        }
        print(name, out[name], flush=True)
    out["fenlei_steps"] = IG_STEPS
    return out


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")


def _machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["faithfulness", "latency"])
    parser.add_argument("--datasets", default="sst2,chnsenticorp")
    parser.add_argument("--presets", default="linear,nbsvm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--random-weights", help="folder with MiniLM's config.json, tokenizer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", help="results file name (default explain_<what>.json)")
    parser.add_argument("--train-rows", type=int, help="faithfulness: train on the first N rows")
    parser.add_argument("--texts", type=int, help="faithfulness: explain the first N texts")
    parser.add_argument("--set", action="append", default=[], help="preset override")
    args = parser.parse_args()
    if args.what == "faithfulness":
        body = faithfulness(
            args.datasets.split(","),
            args.presets.split(","),
            args.threads,
            train_rows=args.train_rows,
            texts=args.texts,
            overrides=args.set,
        )
        name = "explain_faithfulness.json"
    else:
        body = latency(args.threads, args.repeats, args.random_weights, args.device)
        name = args.name or "explain_latency.json"
    record = {"machine": _machine(), "results": body}
    path = RESULTS / name
    if path.exists() and args.what == "faithfulness":  # keep cells of earlier runs
        old = json.loads(path.read_text())
        record["results"] = {**old.get("results", {}), **body}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
