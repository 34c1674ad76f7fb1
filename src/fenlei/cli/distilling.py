"""`fenlei distil`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fenlei.cli._app import LabelColOpt, SetOpt, TextColOpt, _overrides, app, out

__all__ = ["distil"]


def _distil_table(result: Any) -> Table:
    table = Table(title="Distillation (dev)")
    for col in ("model", "family", "accuracy", "macro-F1"):
        table.add_column(col, justify="left" if col in ("model", "family") else "right")
    for t in result.teachers:
        table.add_row(
            f"teacher {escape(str(t.run))}",
            escape(t.architecture),
            f"{t.dev.accuracy:.4f}",
            f"{t.dev.macro_f1:.4f}",
        )
    if len(result.teachers) > 1:
        dev = result.teacher_dev
        table.add_row("teachers (mean)", "", f"{dev.accuracy:.4f}", f"{dev.macro_f1:.4f}")
    dev = result.student_dev
    family = result.train.predictor.info().architecture
    table.add_row(
        "student", escape(family), f"{dev.accuracy:.4f}", f"{dev.macro_f1:.4f}", style="bold"
    )
    return table


@app.command()
def distil(
    teachers: Annotated[
        list[Path], typer.Argument(help="Teacher run folder(s), any kind; several are averaged.")
    ],
    data: Annotated[Path, typer.Option("--data", help="Labelled training table.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Student run folder (new).")],
    student: Annotated[
        str, typer.Option("--student", help="Student preset or TOML config (any family).")
    ] = "linear",
    dev: Annotated[Path | None, typer.Option(help="Dev table (else split from --data).")] = None,
    test: Annotated[Path | None, typer.Option(help="Test table, scored for the report.")] = None,
    unlabelled: Annotated[
        Path | None,
        typer.Option(help="Table of unlabelled texts the teachers label too (text column only)."),
    ] = None,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature of the soft targets (> 0).")
    ] = 2.0,
    alpha: Annotated[
        float, typer.Option(help="Weight of the soft loss; 1 - alpha goes to the true labels.")
    ] = 0.5,
    augment: Annotated[
        int, typer.Option(help="Perturbed copies of each training text the teachers label.")
    ] = 2,
    set_: SetOpt = None,
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
) -> None:
    """Train a student model on the teachers' probabilities and the true labels.

    The teachers label the training texts, --augment perturbed copies of each (words
    dropped, masked, swapped, n-gram blocks shuffled; characters for Chinese) and the
    --unlabelled texts; the student learns their probabilities softened at --temperature,
    mixed with the true labels by --alpha. The student is an ordinary run folder; its
    metrics.json records the teachers and both sides' dev scores.

    Example: fenlei distil runs/ens --student linear --data train.csv --dev dev.csv -o runs/small

    Example: fenlei distil runs/nbsvm runs/lstm --student lstm --data train.csv
    --unlabelled more.csv --temperature 3 --alpha 0.3 -o runs/student
    """
    from fenlei.distil import distil as run_distil
    from fenlei.progress import RichProgress
    from fenlei.runtime import configure_torch

    configure_torch()
    result = run_distil(
        teachers,
        data=data,
        out=out_dir,
        student=student,
        dev=dev,
        test=test,
        unlabelled=unlabelled,
        temperature=temperature,
        alpha=alpha,
        augment=augment,
        overrides=_overrides(set_, text_col, label_col),
        progress=RichProgress(),
    )
    out.print(_distil_table(result))
    t = result.transfer
    out.print(
        f"transfer set: {t['labelled']} labelled, {t['augmented']} augmented, "
        f"{t['unlabelled']} unlabelled texts"
    )
    out.print(f"run folder: [bold]{escape(str(result.run_dir))}[/bold]")
