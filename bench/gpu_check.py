"""One prepared check of fenlei's CUDA paths, for a session lent a GPU (not a test, not in CI).

It trains a MiniLM-sized, randomly initialised BERT on the bundled dataset on the GPU
(``train.device=cuda``, bf16 autocast), checks that ``metrics.jsonl`` says ``bf16-mixed`` and
that it learned, predicts the test split on the GPU and on the CPU and compares the
probabilities, and times one text per call against batches of 32 on the GPU (what dynamic
batching in ``fenlei serve`` buys there); where ray is installed, Ray Train's ``use_gpu`` path
trains the same job with one worker per GPU (one, and two when there are two GPUs). Results go
to ``gpu_check.json`` under ``--out``.

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


def _ray_train_on_gpu(cfg: Any, folder: Path, gpus: int) -> dict[str, Any]:
    """Ray Train's ``use_gpu`` path: one worker holding one GPU trains the same job (NCCL
    process group, the model on ``cuda``); its dev accuracy and precision per epoch. With
    two or more GPUs, also two workers (DDP over NCCL). ``gpus=0``: the dry run's CPU worker."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return {"measured": False, "why": "ray is not installed on this machine"}
    from fenlei.data import bundled_dataset_path
    from fenlei.scale import RayOptions
    from fenlei.scale.training import Tables, train_on_ray

    tables = Tables(train=bundled_dataset_path("train"), dev=bundled_dataset_path("dev"))
    result: dict[str, Any] = {"measured": True}
    for workers in (1, 2) if gpus >= 2 else (1,):
        options = RayOptions(workers=workers, cpus_per_worker=1, gpus_per_worker=min(gpus, 1))
        started = time.perf_counter()
        train_on_ray(cfg, tables, folder / f"ray-{workers}", options=options)
        lines = (folder / f"ray-{workers}" / "metrics.jsonl").read_text().splitlines()
        history = [json.loads(line) for line in lines]
        result[f"workers_{workers}"] = {
            "seconds": time.perf_counter() - started,
            "precision": [h["precision"] for h in history],
            "dev_accuracy": [h["dev"]["accuracy"] for h in history],
        }
    return result


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
        gpus = torch.cuda.device_count() if dev == "cuda" else 0
        result["ray_train_gpu"] = _ray_train_on_gpu(cfg, Path(tmp), gpus)
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
