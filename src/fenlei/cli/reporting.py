"""`fenlei report`: the HTML report of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fenlei.cli._app import app, out

__all__ = ["report"]


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run folder (an ensemble needs --data).")],
    out_file: Annotated[
        Path,
        typer.Option("--out", "-o", help="HTML file to write (in RUN: added to its manifest)."),
    ] = Path("report.html"),
    data: Annotated[
        Path | None,
        typer.Option(help="Labelled table to score and show (else the run's own test/dev split)."),
    ] = None,
    audit: Annotated[
        Path | None,
        typer.Option(help="Label issues from `fenlei audit` (.csv/.jsonl/.json) to show."),
    ] = None,
    mistakes: Annotated[int, typer.Option(min=0, help="Confident mistakes to show.")] = 10,
) -> None:
    """Write one self-contained HTML page: model card, data card, scores, calibration,
    precision-recall, training curves, confident mistakes with highlighted words, label
    issues, latency and size, configuration and file hashes.

    Example: fenlei report runs/r1 --data test.csv --audit issues.csv --out r1.html
    """
    from fenlei.report import ReportLimits, build_report
    from fenlei.runtime import configure_torch

    configure_torch()
    path = build_report(
        run, out_file, data=data, issues=audit, limits=ReportLimits(mistakes=mistakes)
    )
    out.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
