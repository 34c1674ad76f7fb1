"""The thread count training picks when train.threads is not set."""

from __future__ import annotations

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
