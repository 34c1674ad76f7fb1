"""`fenlei compress`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fenlei.cli._app import app, out

__all__ = ["compress"]


def _compress_table(result: Any) -> Table:
    table = Table(title=f"Source vs compressed on {escape(result.data)}")
    columns = ("model", "backend", "accuracy", "macro-F1", "p50 batch-1 ms", "texts/s @32")
    for col in (*columns, "size MB", "folder MB"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for m in (result.source, result.compressed):
        table.add_row(
            m.name,
            m.backend,
            f"{m.accuracy:.4f}",
            f"{m.macro_f1:.4f}",
            f"{m.p50_ms:.2f}",
            f"{m.texts_per_s:.0f}",
            f"{m.size_mb:.2f}",
            f"{m.folder_mb:.2f}",
        )
    return table


@app.command()
def compress(
    run: Annotated[Path, typer.Argument(help="Run folder to compress (one model).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write (new).")],
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="int8 table rows (linear, nbsvm) or an int8 ONNX model (lstm, minilm)."
        ),
    ] = False,
    prune: Annotated[
        str | None,
        typer.Option(
            "--prune",
            help="linear, nbsvm: table rows to keep, rows=N or rows=F (a fraction, 0.05); "
            "minilm (transformers): encoder layers to keep, layers=K, recovered by "
            "distillation from the source.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Labelled table to measure on (default: the run's dev split)."),
    ] = None,
    max_drop: Annotated[
        float,
        typer.Option("--max-drop", help="Largest accuracy loss accepted, in [0, 1]."),
    ] = 0.01,
    force: Annotated[
        bool, typer.Option("--force", help="Write the folder even when it loses more.")
    ] = False,
    train: Annotated[
        Path | None,
        typer.Option(
            "--train",
            help="--prune layers=K: labelled table the recovery trains on (default: the "
            "run's training split).",
        ),
    ] = None,
    recover_epochs: Annotated[
        int, typer.Option("--recover-epochs", help="--prune layers=K: epochs of recovery.")
    ] = 1,
) -> None:
    """Write a smaller or faster copy of a run folder, if it keeps its accuracy.

    Both models are scored and timed on the same data; the table (accuracy, macro-F1,
    batch-1 p50, texts/s, size) is printed and kept in the new folder's metrics.json.

    Example: fenlei compress runs/nbsvm --out runs/nbsvm-small --int8 --prune rows=100000

    Example: fenlei compress runs/minilm --out runs/minilm-int8 --int8 --data dev.csv

    Example: fenlei compress runs/minilm --out runs/minilm-3 --prune layers=3 --max-drop 0.015
    """
    from fenlei.compress import compress as run_compress
    from fenlei.progress import RichProgress
    from fenlei.runtime import configure_torch

    configure_torch()
    result = run_compress(
        run,
        out_dir,
        int8=int8,
        prune=prune,
        data=data,
        max_drop=max_drop,
        force=force,
        train=train,
        recover_epochs=recover_epochs,
        progress=RichProgress(),
    )
    out.print(_compress_table(result))
    drop = result.drop
    note = " (--force)" if force and drop > max_drop else ""
    out.print(f"accuracy change: {-drop:+.4f}{note}")
    out.print(f"run folder: [bold]{escape(str(result.run_dir))}[/bold]")
