"""Rich tables and summaries shared by the training and evaluation commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from fenlei.cli._app import (
    err,
    out,
)
from fenlei.data import summarize

__all__: list[str] = []


LABEL_COUNTS_SHOWN = 8  # more labels: one summary line per split instead of every count


def _label_counts(counts: dict[str, int]) -> str:
    """Every label's count, or for many labels how many there are and the smallest and
    largest (77 labels printed a 77-line cell per split)."""
    if len(counts) <= LABEL_COUNTS_SHOWN:
        return ", ".join(f"{k} {v}" for k, v in counts.items())
    low, high = min(counts, key=counts.__getitem__), max(counts, key=counts.__getitem__)
    return f"{len(counts)} labels: {counts[low]} ({low}) to {counts[high]} ({high}) rows each"


def _file_name(source: str) -> str:
    """``/long/path/train.csv [dev split]`` -> ``train.csv [dev split]``: the part that
    differs between rows (a truncated full path read the same for every split)."""
    path, bracket, rest = source.partition(" [")
    return Path(path).name + (f" [{rest}" if bracket else "")


def _summary_table(splits: Any) -> Table:
    """Rows, label counts and text lengths of each split, named train/dev/test."""
    table = Table(title="Data", show_lines=False)
    table.add_column("split")
    table.add_column("from", overflow="fold")
    table.add_column("rows", justify="right")
    table.add_column("labels")
    table.add_column("chars min / median / p95 / max")
    for role in ("train", "dev", "test"):
        dataset = getattr(splits, role)
        if dataset is None:
            continue
        s = summarize(dataset)
        lengths = f"{s.chars_min} / {s.chars_median:.0f} / {s.chars_p95:.0f} / {s.chars_max}"
        table.add_row(
            role,
            escape(_file_name(s.source)),
            str(s.rows),
            escape(_label_counts(s.label_counts)),
            lengths,
        )
    return table


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
    from fenlei.predict import HEADLINE_METRICS

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in HEADLINE_METRICS:
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


PER_CLASS_ROWS = 25  # more labels: the weakest ones, and a line for the rest


def _per_class_table(metrics: dict[str, Any], split: str, limit: int = PER_CLASS_ROWS) -> Table:
    """Precision, recall, F1 and support per label on ``split``; with more than ``limit``
    labels only the ``limit`` with the lowest F1 (a 77-label set printed 350 lines)."""
    per_class = metrics["per_class"]
    names = list(per_class)
    caption = None
    if len(names) > limit:
        names = sorted(names, key=lambda n: per_class[n]["f1"])[:limit]
        caption = (
            f"the {limit} labels with the lowest F1 of {len(per_class)}; "
            "all of them are in metrics.json"
        )
    table = Table(title=f"Per class ({escape(split)})", caption=caption)
    for col in ("label", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for name in names:
        m = per_class[name]
        table.add_row(
            escape(name),
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"{m['f1']:.3f}",
            str(m["support"]),
        )
    return table


def _predictions_table(texts: list[str], predictions: list[Any], top_k: int) -> Table:
    table = Table(title="Predictions")
    table.add_column("text", overflow="fold", max_width=60)
    table.add_column("label")
    table.add_column(f"top {top_k}")
    for text, pred in zip(texts, predictions, strict=True):
        top = ", ".join(f"{lab} {p:.2f}" for lab, p in pred.top(top_k))
        label = " | ".join(pred.labels) if len(pred.labels) > 1 else pred.label
        if pred.abstained:
            label = f"abstain (best: {pred.label})"
        table.add_row(escape(text), escape(label), escape(top))
    return table


def _show_fitted(metrics: Any) -> None:
    """One line each for the temperature and the tuned decision; a warning for a target
    that dev could not meet."""
    cal = metrics.calibration
    if cal is not None:
        eces = ", ".join(
            f"{split} {cal.ece_before[split]:.3f} -> {cal.ece_after[split]:.3f}"
            for split in cal.ece_before
        )
        how = f"temperature {cal.temperature:.3f}" if cal.note is None else cal.note
        out.print(f"calibration: {escape(how)}; ECE ({cal.bins} bins) {eces}")
    decision = metrics.decision
    if decision is None:
        return
    if decision.thresholds is not None:
        goal = (
            "best F1" if decision.min_precision is None else f"precision {decision.min_precision}"
        )
        shown = ", ".join(f"{k} {v:.2f}" for k, v in list(decision.thresholds.items())[:8])
        more = " ..." if len(decision.thresholds) > 8 else ""
        out.print(f"thresholds per label ({goal} on dev): {escape(shown)}{more}")
    if decision.unmet:
        missed = ", ".join(f"{k} (at best {v:.3f})" for k, v in decision.unmet.items())
        err.print(
            f"[yellow]warning:[/yellow] no threshold reaches precision "
            f"{decision.min_precision} on dev for {escape(missed)}; they keep their best-F1 "
            "threshold (lower --min-precision, or add dev examples of these labels)"
        )
    if decision.abstain_below is not None:
        where = "; ".join(
            f"{split} coverage {v['coverage']:.3f}, accuracy {v['accuracy']:.3f}"
            for split, v in decision.coverage.items()
        )
        out.print(f"reject option: abstain below confidence {decision.abstain_below:.3f} ({where})")
    elif decision.note is not None:
        err.print(f"[yellow]warning:[/yellow] {escape(decision.note)}")


def _reject_table(reject: dict[str, Any]) -> Table:
    table = Table(title="Coverage and accuracy (the most confident texts kept)")
    for col in ("coverage", "accuracy", "min confidence", ""):
        table.add_column(col, justify="right")
    chosen = reject["chosen"]
    for point in reject["curve"]:
        table.add_row(
            f"{point['coverage']:.3f}", f"{point['accuracy']:.4f}", f"{point['threshold']:.3f}", ""
        )
    table.add_row(
        f"{chosen['coverage']:.3f}",
        f"{chosen['accuracy']:.4f}",
        f"{chosen['threshold']:.3f}",
        "chosen (the run's reject point)" if chosen["threshold"] > 0 else "chosen (no reject)",
        style="bold",
    )
    return table


def _test_title(metrics: Any) -> str:
    """The test table's title; it names the training table its rows were held back from."""
    suffix = " [test split]"
    for source, counts in metrics.data.items():
        if source.endswith(suffix):
            table = escape(source[: -len(suffix)])
            return f"Test ({counts.rows} rows held back from {table}: data.test_fraction)"
    return "Test"


def _show_training_result(result: Any) -> None:
    metrics = result.metrics
    history = result.history
    best = next((r for r in history if r.epoch == metrics.best_epoch), None)
    if best is not None and best.param:  # a solved family: one record per setting tried
        tried = "; ".join(r.param_text() for r in history)
        which = f"best {best.param_text()} (tried {tried})"
    else:
        which = f"best epoch {metrics.best_epoch} of {metrics.epochs_run}"
    out.print(f"{which}, {metrics.train_seconds:.1f}s")
    _show_fitted(metrics)
    out.print(_metrics_table(metrics.dev.to_json(), "Dev (chose the epoch and calibration)"))
    if metrics.test is not None:
        out.print(_metrics_table(metrics.test.to_json(), _test_title(metrics)))
        out.print(_per_class_table(metrics.test.to_json(), "test"))
    else:
        out.print(_per_class_table(metrics.dev.to_json(), "dev"))
        err.print(
            "[yellow]note:[/yellow] no test split: the dev scores picked this model, so they "
            "are optimistic; give --test FILE (or --set data.test_fraction=0.1 to hold back "
            "10 % of the data) for an unbiased score"
        )
    out.print(f"run folder: [bold]{escape(str(result.run_dir))}[/bold]")
