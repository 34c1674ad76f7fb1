"""The Pareto plot of a latency-budgeted study: dev score against batch-1 latency.

Drawn with matplotlib's object-oriented API through :mod:`fenlei.plotting` (a
:class:`~matplotlib.figure.Figure` of its own, no pyplot state, fonts that draw Chinese), so
it is safe in a server or a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fenlei.artifact import atomic_write
from fenlei.plotting import save_png
from fenlei.tuning.study import TrialSummary, winner

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["write_pareto_plot"]


def _xy(trials: Sequence[TrialSummary]) -> tuple[list[float], list[float]]:
    """(latencies, scores) of the trials that have both."""
    pairs = [(t.latency_ms, t.value) for t in trials]
    kept = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def write_pareto_plot(
    path: Path,
    trials: Sequence[TrialSummary],
    front: Sequence[TrialSummary],
    budget_ms: float,
    metric: str,
) -> Path:
    """Draw every complete trial, the Pareto front, the budget and the winner; write a PNG.

    Example:
        >>> write_pareto_plot(Path("x.png"), trials, front, 2.0, "accuracy")  # doctest: +SKIP
    """
    atomic_write(
        path,
        lambda tmp: save_png(
            lambda fig: _draw(fig, trials, front, budget_ms, metric), tmp, size=(6.4, 4.2)
        ),
    )
    return path


def _draw(
    fig: Figure,
    trials: Sequence[TrialSummary],
    front: Sequence[TrialSummary],
    budget_ms: float,
    metric: str,
) -> None:
    timed = [t for t in trials if t.value is not None and t.latency_ms is not None]
    ax = fig.add_subplot()
    ax.scatter(*_xy(timed), c="0.65", s=18, label="trials")
    ordered = sorted(front, key=lambda t: t.latency_ms or 0.0)
    ax.plot(
        *_xy(ordered),
        "o-",
        drawstyle="steps-post",
        c="C0",
        label="Pareto front",
    )
    for t in ordered:
        ax.annotate(
            f"{t.number} {t.preset}",
            (t.latency_ms or 0.0, t.value or 0.0),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    ax.axvline(budget_ms, ls="--", c="C3", label=f"budget {budget_ms:g} ms")
    best = winner(trials, budget_ms)
    if best is not None:
        ax.scatter(
            *_xy([best]),
            marker="*",
            s=180,
            c="C3",
            zorder=3,
            label=f"winner: trial {best.number}",
        )
    values = [t.latency_ms or 0.0 for t in timed] + [budget_ms]
    if min(values) > 0 and max(values) / min(values) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("batch-1 p50 latency (ms, this machine)")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title("fenlei tune: accuracy against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
