"""One prepared check of fenlei's CUDA paths, for a session lent a GPU (not a test, not in CI).

It trains a MiniLM-sized, randomly initialised BERT on the bundled dataset on the GPU
(``train.device=cuda``, bf16 autocast), checks that ``metrics.jsonl`` says ``bf16-mixed`` and
that it learned, predicts the test split on the GPU and on the CPU and compares the
probabilities, and times one text per call against batches of 32 on the GPU (what dynamic
batching in ``fenlei serve`` buys there). Results go to ``gpu_check.json`` under ``--out``.

On the device machine (its python3 holds CUDA PyTorch, transformers, scikit-learn, rich, typer,
matplotlib; pydantic travels as wheels, see /work/.library/device/README.md)::

    PYTHONPATH=src:. python3 bench/gpu_check.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _tiny_minilm(folder: Path, texts: list[str]) -> None:
    """A MiniLM-shaped BERT (6 layers, hidden 384) with random weights and a trained vocab."""
    from transformers import BertConfig, BertModel

    from fenlei.config import EncoderConfig
    from fenlei.tokenize import train_encoder

    encoder = train_encoder(texts, EncoderConfig(vocab_size=4000))
    encoder.save(folder / "tokenizer.json")
    config = BertConfig(
        vocab_size=encoder.vocab_size,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        pad_token_id=encoder.pad_id,
    )
    BertModel(config).save_pretrained(folder)


def _texts_per_second(predictor: Any, texts: list[str], batch: int) -> float:
    predictor.batch_size = batch
    predictor.predict_proba(texts[:64])  # warm-up (CUDA kernels, allocator)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    if batch == 1:
        for text in texts:
            predictor.predict_proba([text])
    else:
        predictor.predict_proba(texts)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    """Run the check and write ``gpu_check.json``."""
    from fenlei.config import load_config
    from fenlei.data import bundled_dataset_path, load_table
    from fenlei.pipeline import prepare_splits, train_run
    from fenlei.predict import Predictor
    from fenlei.runtime import configure_torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    dev = args.device
    assert dev == "cpu" or torch.cuda.is_available(), "no CUDA GPU: run this on the device"
    data = {n: load_table(bundled_dataset_path(n)) for n in ("train", "dev", "test")}
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)"
    result: dict[str, Any] = {"device": name, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        enc_dir = Path(tmp) / "encoder"
        enc_dir.mkdir()
        _tiny_minilm(enc_dir, data["train"].texts)
        cfg = load_config(
            "minilm",
            [
                f"model.pretrained={enc_dir}",
                f"train.device={dev}",
                f"train.epochs={args.epochs}",
                "train.lr=3e-4",
                "eval.plots=false",
            ],
        )
        configure_torch(seed=cfg.train.seed)
        started = time.perf_counter()
        run = train_run(cfg, prepare_splits(cfg.data, data["train"], data["dev"]), Path(tmp) / "r")
        result["train_seconds"] = time.perf_counter() - started
        lines = (Path(tmp) / "r" / "metrics.jsonl").read_text().splitlines()
        history = [json.loads(line) for line in lines]
        result["precision"] = [h["precision"] for h in history]
        result["dev_accuracy"] = [h["dev"]["accuracy"] for h in history]
        texts = data["test"].texts
        gpu = Predictor.from_run(Path(tmp) / "r", backend="torch", device=dev)
        cpu = Predictor.from_run(Path(tmp) / "r", backend="torch", device="cpu")
        diff = np.abs(gpu.predict_proba(texts) - cpu.predict_proba(texts)).max()
        result["max_probability_difference_gpu_cpu"] = float(diff)
        result["gpu_texts_per_s_batch1"] = _texts_per_second(gpu, texts, 1)
        result["gpu_texts_per_s_batch32"] = _texts_per_second(gpu, texts, 32)
        result["batching_speed_up"] = (
            result["gpu_texts_per_s_batch32"] / result["gpu_texts_per_s_batch1"]
        )
        del run
    result["ok"] = (
        all(p == "bf16-mixed" for p in result["precision"])
        and result["dev_accuracy"][-1] > 2 / 12  # above chance over 12 intents
        and result["max_probability_difference_gpu_cpu"] < 1e-3
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
