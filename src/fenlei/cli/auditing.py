"""`fenlei audit`: the training rows whose given label is probably wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fenlei.cli._app import (
    ConfigOpt,
    LabelColOpt,
    PresetOpt,
    SetOpt,
    TextColOpt,
    _overrides,
    app,
    err,
    out,
)

__all__ = ["audit"]


def _issues_table(issues: Any, top: int) -> Table:
    table = Table(title=f"Likely label errors (top {min(top, len(issues.rows))})")
    for col in ("rank", "row", "text", "given", "suggested", "quality"):
        right = col in ("rank", "row", "quality")
        table.add_column(col, justify="right" if right else "left", overflow="fold", max_width=60)
    for issue in issues.rows[:top]:
        table.add_row(
            str(issue.rank),
            str(issue.row),
            escape(issue.text),
            escape(issue.given),
            escape(issue.suggested),
            f"{issue.quality:.4f}",
        )
    return table


@app.command()
def audit(
    data: Annotated[Path, typer.Argument(help="Labelled table: .csv .tsv .jsonl .parquet (.gz).")],
    preset: PresetOpt = "linear",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    folds: Annotated[int, typer.Option(help="K of the stratified K-fold (2 or more).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds and of training.")] = 0,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the flagged rows: .csv, .jsonl or .json."),
    ] = None,
    top: Annotated[int, typer.Option(help="Rows to show in the terminal.")] = 20,
) -> None:
    """Rank the rows whose given label the data disagrees with (cleanlab, out-of-fold).

    A fast model (the linear preset by default) is trained K times, each time without one
    fold, and predicts that fold; cleanlab's confident learning flags the rows whose
    out-of-fold probabilities disagree with their label, most suspicious first.

    Example: fenlei audit train.csv --folds 5 --out issues.csv
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from fenlei.audit import check_table, find_label_issues
    from fenlei.config import load_config
    from fenlei.data import load_table
    from fenlei.models import check
    from fenlei.runtime import configure_torch

    cfg = load_config(config or preset, _overrides(set_, text_col, label_col))
    check(cfg)
    configure_torch(threads=cfg.train.threads, seed=cfg.train.seed)
    dataset = load_table(data, cfg.data)
    check_table(dataset, folds)  # before the bar, so a refusal is one line
    columns = (
        TextColumn("folds"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("audit", total=folds, note="")

        def on_fold(done: int, total: int, seconds: float) -> None:
            bar.update(task, completed=done, note=f"fold {done}/{total} in {seconds:.1f}s")

        issues = find_label_issues(dataset, cfg, folds=folds, seed=seed, on_fold=on_fold)
    out.print(_issues_table(issues, top))
    out.print(
        f"{len(issues.rows)} of {issues.examined} rows flagged ({issues.folds} folds, "
        f"{issues.preset}, {issues.seconds:.1f}s)"
    )
    if out_file is not None:
        written = issues.write(out_file)
        out.print(f"issues: [bold]{escape(str(written))}[/bold]")
