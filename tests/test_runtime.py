"""The thread count training picks when train.threads is not set."""

from __future__ import annotations

from pathlib import Path

import pytest

import fenlei.runtime as runtime
from fenlei.runtime import training_threads


@pytest.mark.parametrize(
    ("load", "threads"),
    [(0.1, 2), (0.6, 1), (0.4, 2), (1.0, 1), (9.5, 1), (0.0, 2)],
)
def test_the_load_average_leaves_cores_free(
    monkeypatch: pytest.MonkeyPatch, load: float, threads: int
) -> None:
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    chosen = training_threads(None, load=load)
    assert chosen.count == threads
    assert "2 cores" in chosen.reason and "train.threads" in chosen.reason


def test_a_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    assert training_threads(3, load=20.0).count == 3
    assert training_threads(3).reason == "train.threads"


def test_the_real_load_average_gives_at_least_one_thread() -> None:
    assert training_threads(None).count >= 1


def test_large_blocks_are_mmapped_under_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt's mmap threshold is glibc's")
    assert runtime.mmap_large_blocks() is True


def test_only_transformer_training_fixes_the_mmap_threshold(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a fixed threshold (docs/benchmarks.md, "Training memory") bounds a transformer run's peak
    # memory for a few % of its time (train.low_memory: a quarter less for 1.35-1.75x);
    # other families and prediction never pay an mmap per large block
    from fenlei.cli import main
    from fenlei.config import load_config
    from fenlei.data import bundled_dataset_path
    from fenlei.models import training_mmap_threshold

    assert training_mmap_threshold(load_config("minilm")) == runtime.MMAP_THRESHOLD_TRAINING
    low = load_config("minilm", ["train.low_memory=true"])
    assert training_mmap_threshold(low) == runtime.MMAP_THRESHOLD_LOW_MEMORY
    assert training_mmap_threshold(load_config("lstm", ["train.low_memory=true"])) is None
    calls: list[int] = []
    monkeypatch.setattr(runtime, "mmap_large_blocks", lambda t: calls.append(t) or True)
    runtime.configure_torch(mmap_threshold=4096)
    assert calls == [4096]
    data = str(bundled_dataset_path("train"))
    tiny = ["--set", "model.buckets=2000", "--set", "encoder.vocab_size=600"]
    assert main(["train", data, "--set", "train.epochs=1", *tiny, "-o", str(tmp_path / "r")]) == 0
    assert main(["predict", str(tmp_path / "r"), "hello"]) == 0
    assert calls == [4096]  # linear training and prediction left it alone
