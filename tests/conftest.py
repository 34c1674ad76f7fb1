"""Tiny shared fixtures: the bundled dataset, tiny settings per model family, a tiny encoder.

Tests never download: the transformer family runs on a randomly initialised 2-layer BERT
written into a temporary folder together with a tokenizer trained on the bundled texts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fenlei.config import EncoderConfig
from fenlei.data import Dataset, bundled_dataset_path, load_table
from fenlei.models import REGISTRY, family_of
from fenlei.tokenize import train_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FAMILIES = sorted(REGISTRY)


@pytest.fixture(scope="session")
def bundled() -> dict[str, Dataset]:
    """The bundled support-intent dataset: train, dev and test."""
    return {name: load_table(bundled_dataset_path(name)) for name in ("train", "dev", "test")}


@pytest.fixture(scope="session")
def tiny_transformer_dir(
    tmp_path_factory: pytest.TempPathFactory, bundled: dict[str, Dataset]
) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) and its tokenizer, in an HF folder."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    encoder = train_encoder(bundled["train"].texts, EncoderConfig(vocab_size=800))
    encoder.save(folder / "tokenizer.json")
    config = BertConfig(
        vocab_size=encoder.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=encoder.pad_id,
    )
    BertModel(config).save_pretrained(folder)
    return folder


_COMMON = ["train.threads=1", "eval.plots=false"]
_LINEAR = [
    "encoder.vocab_size=600",
    "model.buckets=2000",
    "model.embedding_dim=16",
    "train.lr=0.02",
]

# family -> (preset, overrides) that make it tiny and fast; a pretrained family also gets
# model.pretrained=<the tiny BERT folder> (see family_overrides)
TINY: dict[str, tuple[str, list[str]]] = {
    "linear.v1": ("linear", ["model.architecture=linear.v1", *_LINEAR]),
    "linear.v2": ("linear", _LINEAR),
    "nbsvm.v1": (
        "nbsvm",
        ["encoder.vocab_size=600", "model.buckets=2000", "model.nb_c=[1.0,10.0]"],
    ),
    "lstm.v1": (
        "lstm",
        [
            "encoder.vocab_size=600",
            "model.embedding_dim=16",
            "model.hidden_size=16",
            "train.lr=0.01",
        ],
    ),
    "transformer.v1": (
        "minilm",
        [
            "encoder.max_length=64",
            "train.lr=0.003",
            "train.warmup_ratio=0.0",
            "train.schedule=constant",
        ],
    ),
    "transformer.v2": (
        "minilm",
        [
            "model.architecture=transformer.v2",
            "encoder.max_length=64",
            "train.lr=0.003",
            "train.warmup_ratio=0.0",
            "train.schedule=constant",
        ],
    ),
}


def family_overrides(
    family: str, tiny_transformer_dir: Path | None = None
) -> tuple[str, list[str]]:
    """Preset and overrides that make a family tiny and fast."""
    preset, overrides = TINY[family]
    if family_of(family).pretrained:
        assert tiny_transformer_dir is not None, f"{family} needs the tiny_transformer_dir fixture"
        overrides = [f"model.pretrained={tiny_transformer_dir}", *overrides]
    return preset, [*_COMMON, *overrides]


@pytest.fixture(scope="session")
def family_settings(tiny_transformer_dir: Path):  # type: ignore[no-untyped-def]
    """A function family -> (preset, overrides) for tiny models."""
    return lambda family: family_overrides(family, tiny_transformer_dir)


# ---------------------------------------------------------------- calibrated run folders

CALIBRATION_TINY = [
    "train.threads=1",
    "train.epochs=3",
    "eval.plots=false",
    "encoder.vocab_size=600",
    "model.buckets=2000",
]
# a small multi-label table: phrases -> their labels
ML_PHRASES = {
    ("billing",): "charged twice on my card",
    ("refund",): "send my money back",
    ("shipping",): "where is the parcel",
    ("billing", "refund"): "double charge refund it",
    ("refund", "shipping"): "parcel lost give my money back",
}


@pytest.fixture(scope="session")
def abstaining_run(tmp_path_factory: pytest.TempPathFactory, bundled: dict[str, Dataset]) -> Path:
    """A tiny linear run on the bundled data, calibrated, with a reject point chosen for
    dev accuracy 0.9 (eval.abstain_target_accuracy)."""
    from fenlei.config import load_config
    from fenlei.pipeline import prepare_splits, train_run

    cfg = load_config("linear", [*CALIBRATION_TINY, "eval.abstain_target_accuracy=0.9"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"], bundled["test"])
    run = tmp_path_factory.mktemp("abstain") / "run"
    train_run(cfg, splits, run)
    return run


def multi_label_table(folder: Path, n: int = 100) -> Path:
    """``folder/ml.jsonl``: ``n`` rows of :data:`ML_PHRASES`, every 7th relabelled billing."""
    import json

    phrases = list(ML_PHRASES.items())
    rows = []
    for i in range(n):
        labels, text = phrases[i % len(phrases)]
        if i % 7 == 0:  # some noise, so the dev F1 is not perfect at every threshold
            labels = ("billing",)
        rows.append({"text": f"{text} #{i}", "label": list(labels)})
    table = folder / "ml.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return table


@pytest.fixture(scope="session")
def thresholds_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny multi-label linear run (``fenlei train --multi-label``) with per-label
    thresholds tuned on dev; its table is ``ml.jsonl`` beside it."""
    from fenlei.cli import main

    folder = tmp_path_factory.mktemp("thresholds")
    table = multi_label_table(folder)
    run = folder / "run"
    args = ["train", str(table), "--multi-label", "--out", str(run)]
    for setting in [
        "train.epochs=15",
        "train.lr=0.05",
        "train.threads=1",
        "model.buckets=500",
        "encoder.min_frequency=1",
        "eval.plots=false",
        "data.dev_fraction=0.3",
    ]:
        args += ["--set", setting]
    assert main(args) == 0
    return run


# ------------------------------------------------------------ headless chromium (offline)
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (never `playwright install`); skipped without it."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


def run_without_fenlei(script: Path, argument: str, texts: list[str]) -> dict[str, Any]:
    """Run ``script ARGUMENT`` in an isolated interpreter (``-I``: no fenlei on the path) with
    ``texts`` as JSON on stdin; its JSON output, after checking it never imported fenlei."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-I", str(script), argument],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        cwd=script.parent,
        check=False,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["fenlei_imported"] is False
    return result
