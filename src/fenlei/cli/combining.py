"""`fenlei ensemble`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from fenlei.cli._app import (
    app,
    out,
)

__all__ = ["ensemble"]


def _ensemble_table(result: Any) -> Table:
    table = Table(title=f"Ensemble ({result.weighting} weights)")
    for col in ("model", "weight", "dev acc", "dev macro-F1"):
        table.add_column(col, justify="left" if col == "model" else "right")
    if result.test is not None:
        table.add_column("test acc", justify="right")
        table.add_column("test macro-F1", justify="right")
    rows = [(escape(m.name), f"{m.weight:.3f}", m.dev, m.test) for m in result.members]
    for i, (name, weight, dev, test) in enumerate(
        [*rows, ("ensemble", "", result.dev, result.test)]
    ):
        cells = [name, weight, f"{dev.accuracy:.4f}", f"{dev.macro_f1:.4f}"]
        if test is not None:
            cells += [f"{test.accuracy:.4f}", f"{test.macro_f1:.4f}"]
        table.add_row(*cells, style="bold" if i == len(rows) else None)
    return table


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders (same labels).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Ensemble folder to write (new).")],
    weights: Annotated[
        Literal["equal", "tuned"],
        typer.Option(help="equal, or tuned: least log-loss of the mean on --data (dev only)."),
    ] = "equal",
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dev table (needed): scores, weights and the drift reference."),
    ] = None,
    test: Annotated[
        Path | None, typer.Option("--test", help="Test table, scored for the report only.")
    ] = None,
) -> None:
    """Combine run folders into one ensemble run folder that averages their probabilities.

    The ensemble predicts, evaluates, serves and exports like one model; its members are
    copied in, each with its own manifest, tokenizer and backend.

    Example: fenlei ensemble runs/nbsvm runs/linear --out runs/ens --data dev.csv

    Example: fenlei ensemble runs/a runs/b runs/c -o runs/abc --weights tuned --data dev.csv
    """
    from fenlei.combine import build_ensemble
    from fenlei.runtime import configure_torch

    configure_torch()
    result = build_ensemble(runs, out_dir, weights=weights, data=data, test=test)
    out.print(_ensemble_table(result))
    out.print(f"run folder: [bold]{escape(str(result.run_dir))}[/bold]")
