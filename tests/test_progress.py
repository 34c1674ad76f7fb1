"""Progress off a terminal: a plain line every interval instead of a silent bar."""

from __future__ import annotations

import io

from rich.console import Console

from fenlei.progress import RichProgress, counter
from fenlei.records import EpochRecord


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_file_gets_a_line_every_interval() -> None:
    buffer, clock = io.StringIO(), _Clock()
    console = Console(file=buffer, width=200)
    assert not console.is_terminal
    progress = RichProgress(console=console, interval=30.0, clock=clock)
    progress.epoch_start(1, 2, 100)
    for step in range(100):
        clock.now = step * 1.0 + 1.0  # one second per step
        progress.step(0.5)
    progress.epoch_end(EpochRecord(1, 0.5, {"loss": 0.4, "accuracy": 0.8}, 100.0))
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "epoch 1/2: 100 steps"
    timed = [ln for ln in lines if "step " in ln]
    assert len(timed) == 3  # at 30, 60 and 90 s
    assert timed[0].strip().startswith("epoch 1/2: step 30/100 (30%) · loss 0.5000 · 30s elapsed")
    assert "eta 70s" in timed[0]
    assert "dev accuracy 0.8000" in lines[-1]


def test_a_terminal_gets_the_bar() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=True)
    progress = RichProgress(console=console, interval=0.0)
    progress.epoch_start(1, 1, 3)
    for _ in range(3):
        progress.step(1.0)
    progress.epoch_end(EpochRecord(1, 1.0, {"accuracy": 0.5}, 1.0))
    text = buffer.getvalue()
    assert "3/3" in text and "step 1/3" not in text


def test_work_outside_epochs_is_counted() -> None:
    buffer, clock = io.StringIO(), _Clock()
    progress = RichProgress(console=Console(file=buffer, width=200), interval=30.0, clock=clock)
    advance = counter(progress, "teachers label", 10_000)
    for block in range(5):
        clock.now = 20.0 * (block + 1)
        advance(2_000)
    lines = buffer.getvalue().splitlines()
    # a line at 40 s and 80 s (every 30 s), and one when all is done
    assert lines == [
        "  teachers label: 4000/10000 (40%) · 40s elapsed",
        "  teachers label: 8000/10000 (80%) · 80s elapsed",
        "  teachers label: 10000/10000 (100%) · 100s elapsed",
    ]
    bar = io.StringIO()
    terminal = RichProgress(console=Console(file=bar, width=120, force_terminal=True))
    tick = counter(terminal, "teachers label", 3)
    for _ in range(3):
        tick(1)
    assert "teachers label" in bar.getvalue() and "3/3" in bar.getvalue()
    counter(None, "nothing", 3)(3)  # any other reporter: nothing to draw
