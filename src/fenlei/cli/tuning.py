"""`fenlei tune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from fenlei.cli._app import (
    LabelColOpt,
    SetOpt,
    TextColOpt,
    _overrides,
    app,
    err,
    out,
)
from fenlei.cli.scaling import CpusOpt, RayAddressOpt, RayOpt, WorkersOpt, tune_launcher
from fenlei.config import PRESETS

__all__ = ["tune"]


def _trial_line(trial: Any, best: Any, metric: str, budget: float | None) -> str:
    if trial.state == "complete":
        score = f"dev {metric} {trial.value:.4f}"
        if trial.latency_ms is not None:
            score += f", p50 {trial.latency_ms:.2f} ms"
    elif trial.over_budget:
        score = f"skipped untrained: p50 {trial.probe_ms:.2f} ms, far over the budget"
    elif trial.state == "pruned":
        score = f"pruned after epoch {trial.pruned_at}" if trial.pruned_at else "pruned"
    else:
        score = trial.state
    seconds = f" {trial.seconds:.1f}s" if trial.seconds is not None else ""
    if best is None:
        so_far = "none within budget yet" if budget is not None else "none yet"
    else:
        so_far = f"{best.value:.4f} (trial {best.number})"
    settings = " ".join(trial.overrides)
    return f"trial {trial.number} [{trial.preset}] {score}{seconds} · best {so_far} · {settings}"


def _tune_table(result: Any) -> Table:
    front = result.budget_ms is not None
    shown = (
        result.pareto
        if front
        else sorted((t for t in result.trials if t.value is not None), key=lambda t: -t.value)[:5]
    )
    table = Table(title="Pareto front (accuracy vs latency)" if front else "Best trials")
    for col in ("trial", "family", f"dev {result.metric}", "p50 ms", "settings"):
        table.add_column(col, justify="left" if col in ("family", "settings") else "right")
    for t in shown:
        latency = f"{t.latency_ms:.2f}" if t.latency_ms is not None else "-"
        style = "bold" if t.number == result.best.number else None
        cells = [str(t.number), t.preset or "", f"{t.value:.4f}", latency, " ".join(t.overrides)]
        table.add_row(*(escape(c) for c in cells), style=style)
    return table


@app.command()
def tune(
    data: Annotated[Path, typer.Argument(help="Training table: .csv .tsv .jsonl .parquet (.gz).")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder for the winner (study beside it).")
    ],
    dev: Annotated[Path | None, typer.Option(help="Dev table (else split from DATA).")] = None,
    test: Annotated[Path | None, typer.Option(help="Test table (else split from DATA).")] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", "-p", help="Tune one family: " + " | ".join(PRESETS))
    ] = None,
    families: Annotated[
        str | None,
        typer.Option(help="Or choose among families too: e.g. linear,nbsvm,lstm,minilm."),
    ] = None,
    trials: Annotated[int, typer.Option(help="Trials in the study (a resumed one counts).")] = 20,
    time_limit: Annotated[
        float | None, typer.Option("--time", help="Seconds to spend (no trial that ends later).")
    ] = None,
    latency_budget: Annotated[
        float | None,
        typer.Option(help="ms: most accurate model whose batch-1 p50 here fits the budget."),
    ] = None,
    latency_threads: Annotated[
        int,
        typer.Option(min=0, help="Torch threads while timing (0 = one per core, as fenlei serve)."),
    ] = 0,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default sqlite:///OUT.optuna.db).")
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Study name (default: data + families).")
    ] = None,
    set_: SetOpt = None,
    search: Annotated[
        list[str] | None,
        typer.Option(help="Search other choices: --search 'train.lr=[0.001,0.01]' (repeatable)."),
    ] = None,
    metric: Annotated[
        Literal["accuracy", "macro_f1"], typer.Option(help="Dev metric to maximise.")
    ] = "accuracy",
    seed: Annotated[
        int, typer.Option(help="Sampler seed; give each process sharing a study its own.")
    ] = 13,
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    multi_label: Annotated[bool, typer.Option(help="Rows may carry several labels.")] = False,
    label_sep: Annotated[str | None, typer.Option(help="Label separator in CSV cells.")] = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    cpus_per_worker: CpusOpt = 1.0,
) -> None:
    """Search a family's settings (or several families) with Optuna; keep the best run.

    The winner's run folder goes to --out, its settings to OUT.toml (fenlei train --config
    OUT.toml retrains it); the study (SQLite by default) resumes when run again.

    Example: fenlei tune train.csv --dev dev.csv --preset linear --trials 30 --out runs/best

    Example: fenlei tune train.csv --families linear,nbsvm,lstm --latency-budget 2 -o runs/fast
    """
    from fenlei.runtime import configure_torch
    from fenlei.tuning import tune as run_tune
    from fenlei.tuning.study import quiet_optuna

    quiet_optuna()  # one line per trial is ours
    configure_torch()

    def show(trial: Any, best: Any) -> None:
        line = escape(_trial_line(trial, best, metric, latency_budget))
        out.print(line, highlight=False, soft_wrap=True)

    try:
        result = run_tune(
            data,
            out=out_dir,
            dev=dev,
            test=test,
            preset=preset,
            families=families,
            overrides=_overrides(set_, text_col, label_col, multi_label, label_sep),
            search=search or [],
            trials=trials,
            timeout=time_limit,
            latency_budget_ms=latency_budget,
            latency_threads=latency_threads or None,
            storage=storage,
            study=study,
            metric=metric,
            seed=seed,
            on_trial=show,
            launcher=tune_launcher(ray, ray_address, workers, cpus_per_worker),
        )
    except KeyboardInterrupt:
        err.print("interrupted; run the same fenlei tune command again to resume the study")
        raise typer.Exit(130) from None
    out.print(_tune_table(result))
    best = result.best
    out.print(
        f"winner: trial {best.number} ({escape(best.preset or '')}), dev {metric} "
        f"{best.value:.4f}" + (f", p50 {best.latency_ms:.2f} ms" if best.latency_ms else "")
    )
    if result.pareto_plot is not None:
        out.print(f"Pareto plot: [bold]{escape(str(result.pareto_plot))}[/bold]")
    out.print(f"settings: [bold]{escape(str(result.config_path))}[/bold]")
    out.print(f"run folder: [bold]{escape(str(result.run_dir))}[/bold]")
