"""Tiny shared fixtures: the bundled dataset, tiny settings per model family, a tiny encoder.

Tests never download: the transformer family runs on a randomly initialised 2-layer BERT
written into a temporary folder together with a tokenizer trained on the bundled texts.
"""

from __future__ import annotations

import os
from pathlib import Path

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
