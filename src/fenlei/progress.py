"""Progress reporting for long work: a callback protocol and a rich progress bar.

Library code reports through a :class:`ProgressReporter`; the CLI and the classifier pass
:class:`RichProgress` (a bar with loss, metric and ETA on stderr) or nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

from fenlei.records import EpochRecord

__all__ = ["ProgressReporter", "RichProgress"]


class ProgressReporter(Protocol):
    """What the training loop tells the outside world."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        """A new epoch of ``steps`` steps begins (epochs count from 1)."""

    def step(self, loss: float) -> None:
        """One optimisation step finished with this loss."""

    def epoch_end(self, record: EpochRecord) -> None:
        """The epoch (or a solved family's solve) finished; ``record`` is its line of
        metrics.jsonl."""


class RichProgress:
    """A rich progress bar per epoch showing running loss, last dev metric and ETA."""

    def __init__(self, monitor: str = "accuracy") -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.monitor = monitor
        self._progress: Any = None
        self._task: Any = None
        self._loss_sum = 0.0
        self._steps = 0

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        """Open a bar for this epoch."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, loss=float("nan"))
        self._loss_sum, self._steps = 0.0, 0

    def step(self, loss: float) -> None:
        """Advance the bar and show the running mean loss."""
        self._loss_sum += loss
        self._steps += 1
        self._progress.update(self._task, advance=1, loss=self._loss_sum / self._steps)

    def epoch_end(self, record: EpochRecord) -> None:
        """Close the bar and print the epoch's dev metrics (and its ``param``, if any)."""
        self._progress.stop()
        dev = record.dev
        best = " (best)" if record.is_best else ""
        param = f"{record.param_text()} · " if record.param else ""
        self.console.print(
            f"  {param}train loss {record.train_loss:.4f}"
            f" · dev loss {dev.get('loss', float('nan')):.4f}"
            f" · dev accuracy {dev.get('accuracy', float('nan')):.4f}"
            f" · dev macro-F1 {dev.get('macro_f1', float('nan')):.4f}"
            f" · {record.seconds:.1f}s{best}"
        )
