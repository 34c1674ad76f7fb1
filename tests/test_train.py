"""The training loop: batching, reproducibility, early stopping, class weights, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fenlei.config import load_config
from fenlei.data import Dataset, bundled_dataset_path
from fenlei.pipeline import prepare_splits, train_run
from fenlei.predict import Predictor
from fenlei.records import EpochRecord
from fenlei.train import (
    CheckpointWriter,
    LoopState,
    TrainData,
    fit,
    should_checkpoint,
    training_batches,
    use_mixed_precision,
)
from fenlei.train import checkpoint as checkpoint_module
from fenlei.train import loop as loop_module

LSTM_TINY = [
    "train.threads=1",
    "eval.plots=false",
    "encoder.vocab_size=600",
    "model.embedding_dim=16",
    "model.hidden_size=16",
    "train.epochs=4",
    "train.patience=none",
]


def test_batches_cover_every_index_once_and_group_lengths() -> None:
    lengths = list(np.random.default_rng(0).integers(1, 400, size=1000))
    batches = training_batches(lengths, 32, epoch_seed=1, bucket=True)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    plain = training_batches(lengths, 32, epoch_seed=1, bucket=False)
    plain_spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain])
    assert spread < plain_spread / 5
    assert training_batches(lengths, 32, epoch_seed=1, bucket=True) == batches
    assert training_batches(lengths, 32, epoch_seed=2, bucket=True) != batches


def _train(bundled: dict[str, Dataset], run_dir: Path, overrides: list[str]) -> np.ndarray:
    cfg = load_config("lstm", [*LSTM_TINY, *overrides])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    result = train_run(cfg, splits, run_dir)
    return result.predictor.predict_proba(bundled["test"].texts[:50])


def _tiny_lstm(
    bundled: dict[str, Dataset], cfg: Any
) -> tuple[torch.nn.Module, TrainData, TrainData]:
    from fenlei.data import LabelSet
    from fenlei.models import ModelSpec, build_model
    from fenlei.tokenize import train_encoder

    labels = LabelSet.fit(bundled["train"])
    encoder = train_encoder(bundled["train"].texts, cfg.encoder)
    spec = ModelSpec(vocab_size=encoder.vocab_size, pad_id=encoder.pad_id, n_outputs=len(labels))
    model = build_model(cfg.model, spec)
    data = TrainData.from_dataset(bundled["train"], labels, encoder, n_out=len(labels))
    dev = TrainData.from_dataset(bundled["dev"], labels, encoder, n_out=len(labels))
    return model, data, dev


def test_training_is_reproducible(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = _train(bundled, tmp_path / "a", ["train.epochs=2"])
    second = _train(bundled, tmp_path / "b", ["train.epochs=2"])
    np.testing.assert_array_equal(first, second)


def test_early_stopping_restores_the_best_epoch(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a learning rate this high makes dev loss climb after the first epochs
    _train(
        bundled,
        tmp_path / "r",
        ["train.epochs=12", "train.patience=2", "train.monitor=loss", "train.lr=0.05"],
    )
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    history = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert metrics["stopped_early"] is True
    assert len(history) < 12
    best = min(history, key=lambda r: r["dev"]["loss"])
    assert metrics["best_epoch"] == best["epoch"]
    assert len(history) == best["epoch"] + 2
    # the saved model is the best epoch's: its dev loss equals the best recorded dev loss
    predictor = Predictor.from_run(tmp_path / "r")
    assert abs(metrics["dev"]["accuracy"] - best["dev"]["accuracy"]) < 1e-9
    assert predictor.labels


def test_class_weights_balanced(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    probs = _train(bundled, tmp_path / "w", ["train.epochs=1", "train.class_weight=balanced"])
    assert probs.shape == (50, 12)


def _cli_train(run_dir: Path, *extra: str) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "fenlei.cli",
        "train",
        str(bundled_dataset_path("train")),
        "--dev",
        str(bundled_dataset_path("dev")),
        "--preset",
        "lstm",
        "--out",
        str(run_dir),
    ]
    for item in [*LSTM_TINY, "train.epochs=6"]:
        args += ["--set", item]
    return [*args, *extra]


def test_kill_during_training_then_resume(tmp_path: Path) -> None:
    """A run killed after its first checkpoint resumes and ends exactly like an unbroken run."""
    from fenlei.cli import main

    assert main(_cli_train(tmp_path / "whole")[3:]) == 0

    broken = tmp_path / "broken"
    proc = subprocess.Popen(
        _cli_train(broken), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress = broken / "checkpoint" / "progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (broken / "manifest.json").exists()
    killed_at = json.loads(progress.read_text())["epoch"]
    assert 2 <= killed_at < 6

    assert main(_cli_train(broken, "--resume")[3:]) == 0
    history = [json.loads(x) for x in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]

    texts = Dataset.from_lists(["where is my parcel", "我要退款", "hello"], ["a", "b", "c"]).texts
    np.testing.assert_array_equal(
        Predictor.from_run(broken).predict_proba(texts),
        Predictor.from_run(tmp_path / "whole").predict_proba(texts),
    )


def test_resume_with_other_settings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fenlei.cli import main

    run = tmp_path / "r"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "run.json").write_text(json.dumps({"config": {}, "labels": []}))
    assert main(_cli_train(run, "--resume")[3:]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd"])
def test_linear_sparse_optimizers_learn(bundled, tmp_path: Path, optimizer: str) -> None:  # type: ignore[no-untyped-def]
    lr = {"adagrad": 0.1, "adam": 0.01, "sgd": 20.0}[optimizer]
    cfg = load_config(
        "linear",
        [
            "train.threads=1",
            "eval.plots=false",
            "train.epochs=6",
            "train.patience=none",
            f"train.sparse_optimizer={optimizer}",
            f"train.sparse_lr={lr}",
        ],
    )
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    result = train_run(cfg, splits, tmp_path / optimizer)
    assert result.metrics.dev.accuracy > 0.4  # 12 intents: chance is about 0.08


def test_best_checkpoint_matches_the_best_epoch_every_checkpoint_records(  # type: ignore[no-untyped-def]
    bundled, tmp_path: Path
) -> None:
    from safetensors import safe_open

    from fenlei.artifact import PROGRESS_KEY
    from fenlei.models import family_of

    cfg = load_config("lstm", [*LSTM_TINY, "train.epochs=4", "train.patience=none"])
    model, data, dev = _tiny_lstm(bundled, cfg)
    run = fit(model, family_of("lstm.v1"), data, dev, cfg.train, run_dir=tmp_path)

    def progress(path: Path) -> dict[str, Any]:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()[PROGRESS_KEY])  # type: ignore[no-any-return]

    best = tmp_path / "checkpoint" / "best.safetensors"
    state = tmp_path / "checkpoint" / "state.safetensors"
    latest = progress(state)
    assert latest["epoch"] < 4  # the last epoch is never written: the run is saved instead
    assert progress(best)["epoch"] == latest["best_epoch"]  # a hard link made at that epoch
    assert (best.stat().st_ino == state.stat().st_ino) == (latest["epoch"] == latest["best_epoch"])
    assert run.best_epoch >= latest["best_epoch"]


def test_checkpoint_writer_reraises_errors_from_its_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fenlei.artifact import CheckpointSnapshot
    from fenlei.errors import ArtifactError

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fenlei.artifact.save_file", disk_full)
    writer = CheckpointWriter()
    writer.submit(tmp_path, CheckpointSnapshot({}, {}), best=False)
    with pytest.raises(ArtifactError, match=r"cannot write the checkpoint.*free disk space"):
        writer.close()


def test_checkpoint_writer_queues_the_newest_and_never_blocks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import threading

    from fenlei.artifact import CheckpointSnapshot

    started, release, written = threading.Event(), threading.Event(), []

    def slow_disk(run_dir: Path, snap: CheckpointSnapshot, *, best: bool) -> None:
        started.set()
        release.wait(timeout=10)
        written.append((snap.progress["epoch"], best))

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", slow_disk)
    writer = CheckpointWriter()
    writer.submit(tmp_path, CheckpointSnapshot({}, {"epoch": 1}), best=True)
    assert started.wait(timeout=10)
    for epoch in (2, 3):  # 1 is being written; 3 replaces 2 in the queue
        writer.submit(tmp_path, CheckpointSnapshot({}, {"epoch": epoch}), best=True)
    assert writer.busy()
    release.set()
    writer.close(flush=True)
    assert written == [(1, True), (3, True)]

    started.clear()
    release.clear()
    writer = CheckpointWriter()
    writer.submit(tmp_path, CheckpointSnapshot({}, {"epoch": 1}), best=False)
    assert started.wait(timeout=10)
    writer.submit(tmp_path, CheckpointSnapshot({}, {"epoch": 2}), best=False)
    release.set()
    writer.close(flush=False)  # training ended: the queued one is dropped
    assert written[2:] == [(1, False)]


@pytest.mark.parametrize(
    ("device", "family", "native_bf16", "amp", "expected"),
    [
        ("cpu", "transformer.v1", True, True, True),  # declares a measured bf16 gain
        (
            "cpu",
            "transformer.v1",
            False,
            True,
            False,
        ),  # bf16 without AMX or AVX-512 BF16: emulated, slower
        ("cpu", "lstm.v1", True, True, False),  # no measured gain declared (linear, lstm)
        ("cpu", "transformer.v1", True, False, False),  # train.amp=false
        ("cuda", "lstm.v1", False, True, True),
    ],
)
def test_mixed_precision_choice(  # type: ignore[no-untyped-def]
    monkeypatch, device: str, family: str, native_bf16: bool, amp: bool, expected: bool
) -> None:
    from fenlei.models import family_of

    monkeypatch.setattr(loop_module, "_cpu_has_native_bf16", lambda: native_bf16)
    cfg = load_config("minilm", [f"train.amp={str(amp).lower()}"]).train
    assert use_mixed_precision(cfg, torch.device(device), family_of(family)) is expected


@pytest.mark.parametrize(("amx", "avx512_bf16"), [(True, False), (False, True), (False, False)])
def test_native_bf16_is_amx_or_avx512_bf16(monkeypatch, amx: bool, avx512_bf16: bool) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert loop_module._cpu_has_native_bf16() is (amx or avx512_bf16)


def test_transformer_trains_under_bf16_on_cpu(  # type: ignore[no-untyped-def]
    monkeypatch, bundled, tiny_transformer_dir: Path, tmp_path: Path
) -> None:
    from tests.conftest import family_overrides

    # bf16 autocast runs on any CPU (emulated without AMX), so the path is tested everywhere
    monkeypatch.setattr(loop_module, "_cpu_has_native_bf16", lambda: True)
    preset, overrides = family_overrides("transformer.v1", tiny_transformer_dir)
    cfg = load_config(preset, [*overrides, "train.epochs=3", "train.patience=none"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    result = train_run(cfg, splits, tmp_path / "r")
    history = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in history] == ["bf16-mixed"] * 3
    assert history[-1]["dev"]["accuracy"] > 1.5 / len(result.predictor.labels)  # it learns
    # weights stay fp32 and the saved model predicts like a fresh load of it
    loaded = Predictor.from_run(tmp_path / "r")
    texts = bundled["test"].texts[:20]
    np.testing.assert_allclose(
        loaded.predict_proba(texts), result.predictor.predict_proba(texts), atol=1e-6
    )


def test_bf16_cpu_training_switches_attention_and_back(tiny_transformer_dir: Path) -> None:
    from fenlei.models.transformer import TransformerClassifier

    model = TransformerClassifier.from_pretrained(
        str(tiny_transformer_dir), n_outputs=3, dropout=0.0
    )
    before = model.encoder.config._attn_implementation
    with model.bf16_cpu_training():
        assert model.encoder.config._attn_implementation == "eager"
    assert model.encoder.config._attn_implementation == before


class _Writer:
    def __init__(self, busy: bool) -> None:
        self._busy = busy

    def busy(self) -> bool:
        return self._busy


@pytest.mark.parametrize(
    ("epoch", "bad_epochs", "best", "busy", "expected"),
    [
        (2, 0, True, True, True),  # a best epoch is always written, queued behind the disk
        (5, 0, True, False, False),  # ...unless training ends with it: the run is saved next
        (2, 1, False, False, True),
        (2, 1, False, True, False),  # the disk is still busy with the previous one
        (5, 1, False, False, False),  # the last epoch: nothing left to resume
        (3, 2, False, False, False),  # early stopping ends training here
    ],
)
def test_which_epochs_are_checkpointed(
    epoch: int, bad_epochs: int, best: bool, busy: bool, expected: bool
) -> None:
    cfg = load_config("lstm", ["train.epochs=5", "train.patience=2"]).train
    state = LoopState(epoch=epoch, bad_epochs=bad_epochs)
    writer = _Writer(busy)
    assert should_checkpoint(cfg, state, writer, best=best) is expected  # type: ignore[arg-type]


def test_frozen_embeddings_stay_pretrained(
    bundled, tiny_transformer_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from transformers import BertModel

    from tests.conftest import family_overrides

    preset, overrides = family_overrides("transformer.v1", tiny_transformer_dir)
    cfg = load_config(
        preset,
        [*overrides, "train.epochs=2", "train.patience=none", "model.freeze_embeddings=true"],
    )
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    trained = train_run(cfg, splits, tmp_path / "r").predictor.model
    pretrained = BertModel.from_pretrained(tiny_transformer_dir)
    words = "embeddings.word_embeddings.weight"
    torch.testing.assert_close(
        trained.encoder.state_dict()[words], pretrained.state_dict()[words], rtol=0, atol=0
    )
    # the rest of the encoder did train
    layer = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(trained.encoder.state_dict()[layer], pretrained.state_dict()[layer])


def test_freezing_the_linear_table_is_refused() -> None:
    from fenlei.errors import ConfigError
    from fenlei.models import check

    with pytest.raises(ConfigError, match="freeze_embeddings"):
        check(load_config("linear", ["model.freeze_embeddings=true"]))


class _InterruptAfter:
    """A progress reporter that raises KeyboardInterrupt at the end of one epoch (Ctrl-C)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.started: list[int] = []

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.started.append(epoch)

    def step(self, loss: float) -> None:
        pass

    def epoch_end(self, record: EpochRecord) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_linear_run_resumes_like_an_unbroken_one(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C flushes the newest checkpoint; the table of used buckets is rebuilt the same."""
    from tests.conftest import family_overrides

    preset, overrides = family_overrides("linear.v2")
    cfg = load_config(preset, [*overrides, "train.epochs=5", "train.patience=none"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    whole = train_run(cfg, splits, tmp_path / "whole")

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, splits, tmp_path / "broken", progress=_InterruptAfter(3))  # type: ignore[arg-type]
    progress = json.loads((tmp_path / "broken" / "checkpoint" / "progress.json").read_text())
    assert progress["epoch"] >= 1
    counter = _InterruptAfter(0)
    resumed = train_run(cfg, splits, tmp_path / "broken", resume=True, progress=counter)  # type: ignore[arg-type]
    assert len(counter.started) == 5 - progress["epoch"]  # it went on, not from scratch
    history = [
        json.loads(x) for x in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    texts = bundled["test"].texts[:30]
    np.testing.assert_array_equal(
        resumed.predictor.predict_proba(texts), whole.predictor.predict_proba(texts)
    )


def test_gradient_checkpointing_takes_the_same_steps(  # type: ignore[no-untyped-def]
    bundled, tiny_transformer_dir: Path, tmp_path: Path
) -> None:
    from tests.conftest import family_overrides

    preset, overrides = family_overrides("transformer.v1", tiny_transformer_dir)
    overrides = [*overrides, "train.epochs=1", "train.amp=false", "model.dropout=0.1"]
    texts = bundled["test"].texts[:20]
    probs = []
    for flag in ("false", "true"):
        cfg = load_config(preset, [*overrides, f"train.gradient_checkpointing={flag}"])
        splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
        result = train_run(cfg, splits, tmp_path / flag)
        encoder: Any = result.predictor.model.encoder  # type: ignore[attr-defined]
        assert encoder.is_gradient_checkpointing is (flag == "true")
        probs.append(result.predictor.predict_proba(texts))
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-5)  # dropout replayed, same steps


def test_gradient_checkpointing_outside_transformers_is_refused() -> None:
    from fenlei.errors import ConfigError
    from fenlei.models import check

    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        check(load_config("lstm", ["train.gradient_checkpointing=true"]))
