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
    monkeypatch.setattr(runtime, "_usable_cores", lambda: 2)
    chosen = training_threads(None, load=load)
    assert chosen.count == threads
    assert "2 cores" in chosen.reason and "train.threads" in chosen.reason


def test_a_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_usable_cores", lambda: 2)
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
    # the training memory fix (docs/benchmarks.md) costs a transformer run 1.35-1.75x the
    # time for a quarter less peak memory: opt-in; other families and prediction never pay it
    from fenlei.cli import main
    from fenlei.config import load_config
    from fenlei.data import bundled_dataset_path
    from fenlei.models import wants_low_memory

    assert not wants_low_memory(load_config("minilm"))  # off by default: 1.35-1.75x slower
    assert wants_low_memory(load_config("minilm", ["train.low_memory=true"]))
    assert not wants_low_memory(load_config("lstm", ["train.low_memory=true"]))
    calls: list[int] = []
    monkeypatch.setattr(runtime, "mmap_large_blocks", lambda *a: calls.append(1) or True)
    runtime.configure_torch(training=True)
    assert calls == [1]
    data = str(bundled_dataset_path("train"))
    tiny = ["--set", "model.buckets=2000", "--set", "encoder.vocab_size=600"]
    assert main(["train", data, "--set", "train.epochs=1", *tiny, "-o", str(tmp_path / "r")]) == 0
    assert main(["predict", str(tmp_path / "r"), "hello"]) == 0
    assert calls == [1]  # linear training and prediction left it alone
