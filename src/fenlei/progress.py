"""Progress reporting for long work: a callback protocol and a rich progress bar.

Library code reports through a :class:`ProgressReporter`; the CLI and the classifier pass
:class:`RichProgress` (a bar with loss, metric and ETA on stderr) or nothing. When stderr
is not a terminal (a log file, CI, ``nohup``), a bar would print nothing until the epoch
ends, so :class:`RichProgress` writes one plain line every ``interval`` seconds instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from fenlei.records import EpochRecord

__all__ = ["ProgressReporter", "RichProgress", "counter"]


class ProgressReporter(Protocol):
    """What the training loop tells the outside world."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        """A new epoch of ``steps`` steps begins (epochs count from 1)."""

    def step(self, loss: float) -> None:
        """One optimisation step finished with this loss."""

    def epoch_end(self, record: EpochRecord) -> None:
        """The epoch (or a solved family's solve) finished; ``record`` is its line of
        metrics.jsonl."""


LOG_INTERVAL_S = 30.0


def counter(progress: ProgressReporter | None, label: str, total: int) -> Callable[[int], None]:
    """A callback that advances a bar of ``total`` items named ``label`` (work outside the
    epochs, such as a teacher labelling texts) and closes it at ``total``: drawn when
    ``progress`` is a :class:`RichProgress`, a no-op for any other reporter or None.

    Example:
        >>> advance = counter(None, "teachers label", 10)
        >>> advance(10)
    """
    if isinstance(progress, RichProgress):
        return progress.count(label, total)
    return lambda done: None


class RichProgress:
    """A rich progress bar per epoch showing running loss, last dev metric and ETA; on a
    console that is not a terminal, a line every ``interval`` seconds instead.

    Example:
        >>> progress = RichProgress()  # doctest: +SKIP
        >>> fenlei.train_run(cfg, splits, "runs/x", progress=progress)  # doctest: +SKIP
    """

    def __init__(
        self,
        monitor: str = "accuracy",
        *,
        console: Any = None,
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        self.monitor = monitor
        self.interval = interval
        self._clock = clock
        self._progress: Any = None
        self._task: Any = None
        self._loss_sum = 0.0
        self._steps = 0
        self._total = 0
        self._label = ""
        self._started = self._logged = 0.0

    @property
    def _plain(self) -> bool:
        return not self.console.is_terminal

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        """Open a bar for this epoch (or, off a terminal, start its timed lines)."""
        self._loss_sum, self._steps, self._total = 0.0, 0, steps
        self._label = f"epoch {epoch}/{epochs}"
        self._started = self._logged = self._clock()
        if self._plain:
            self.console.print(f"{self._label}: {steps} steps", highlight=False)
            return
        self._progress = _bar(self.console, f"epoch {epoch}/{epochs}", with_loss=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, loss=float("nan"))

    def step(self, loss: float) -> None:
        """Advance the bar and show the running mean loss."""
        self._loss_sum += loss
        self._steps += 1
        if not self._plain:
            self._progress.update(self._task, advance=1, loss=self._loss_sum / self._steps)
            return
        now = self._clock()
        if now - self._logged >= self.interval:
            self._logged = now
            self.console.print(self._plain_line(now), highlight=False)

    def count(self, label: str, total: int) -> Callable[[int], None]:
        """Open a bar of ``total`` items (off a terminal: a line every ``interval`` seconds)
        and return a callback advancing it by ``done`` items; the bar closes at ``total``."""
        seen = [0]
        started = logged = self._clock()
        bar: Any = None
        if not self._plain:
            bar = _bar(self.console, label, with_loss=False)
            bar.start()
            task = bar.add_task(label, total=total)

        def advance(done: int) -> None:
            nonlocal logged
            seen[0] += done
            if bar is not None:
                bar.update(task, advance=done)
                if seen[0] >= total:
                    bar.stop()
                return
            now = self._clock()
            if now - logged >= self.interval or seen[0] >= total:
                logged = now
                elapsed = now - started
                self.console.print(
                    f"  {label}: {seen[0]}/{total} ({seen[0] / max(total, 1):.0%})"
                    f" · {elapsed:.0f}s elapsed",
                    highlight=False,
                )

        return advance

    def _plain_line(self, now: float) -> str:
        elapsed = now - self._started
        done = self._steps / max(self._total, 1)
        eta = elapsed * (1 - done) / done if done else float("nan")
        return (
            f"  {self._label}: step {self._steps}/{self._total} ({done:.0%})"
            f" · loss {self._loss_sum / self._steps:.4f}"
            f" · {elapsed:.0f}s elapsed · eta {eta:.0f}s"
        )

    def epoch_end(self, record: EpochRecord) -> None:
        """Close the bar and print the epoch's dev metrics (and its ``param``, if any)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
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


def _bar(console: Any, label: str, *, with_loss: bool) -> Any:
    """A rich bar: label, bar, done/total, (running loss,) elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    loss = [TextColumn("loss {task.fields[loss]:.4f}")] if with_loss else []
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        *loss,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
