"""The ``--ray`` options that `fenlei train`, `predict` and `tune` share, and the small
functions those commands delegate to (:mod:`fenlei.scale` does the work).

A command declares the options with the aliases below and, when ``--ray`` is given, calls
one function here; without ``--ray`` nothing here runs and Ray is never imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fenlei.cli._app import err

__all__ = [
    "CpusOpt",
    "DashboardOpt",
    "GpusOpt",
    "MaxFailuresOpt",
    "RayAddressOpt",
    "RayOpt",
    "StorageOpt",
    "WorkersOpt",
    "predict_on_ray",
    "ray_options",
    "train_on_ray",
    "tune_launcher",
]

_PANEL = "Ray (pip install 'fenlei[ray]')"

RayOpt = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run on Ray: the cluster at --ray-address (or RAY_ADDRESS), else a local Ray.",
        rich_help_panel=_PANEL,
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="A running cluster: host:port, ray://host:port or auto.",
        rich_help_panel=_PANEL,
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(help="Ray workers (training) or predictor actors.", rich_help_panel=_PANEL),
]
CpusOpt = Annotated[
    float, typer.Option(help="CPUs each Ray worker reserves.", rich_help_panel=_PANEL)
]
GpusOpt = Annotated[
    float,
    typer.Option(help="GPUs each Ray worker reserves (> 0: NCCL).", rich_help_panel=_PANEL),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        help="Ray's checkpoint storage: a folder every node sees, or s3:// gs:// "
        "(default: a hidden folder beside --out).",
        rich_help_panel=_PANEL,
    ),
]
MaxFailuresOpt = Annotated[
    int,
    typer.Option(
        help="Restarts from the last checkpoint after a lost worker.", rich_help_panel=_PANEL
    ),
]
DashboardOpt = Annotated[
    bool,
    typer.Option(
        "--ray-dashboard", help="Start Ray's dashboard (127.0.0.1).", rich_help_panel=_PANEL
    ),
]


def ray_options(address: str | None, workers: int, **more: Any) -> Any:
    """A :class:`fenlei.scale.RayOptions` (it checks the values; ray is not imported)."""
    from fenlei.scale import RayOptions

    return RayOptions(address=address, workers=workers, **more)


def train_on_ray(
    cfg: Any,
    tables: tuple[Path, Path | None, Path | None],
    out_dir: Path,
    options: Any,
    *,
    resume: bool,
    overwrite: bool,
) -> Any:
    """`fenlei train --ray`: train on Ray Train and return the run (as a local training)."""
    from fenlei.scale import Tables, require_ray
    from fenlei.scale import train_on_ray as train
    from fenlei.scale.training import workers_for

    require_ray()
    workers = workers_for(cfg, options)
    if workers < options.workers:
        err.print(f"{cfg.model.architecture} is trained by a solver: it runs on one Ray worker")
    err.print(f"training on {workers} Ray worker(s); rank 0 writes {out_dir}")
    return train(cfg, Tables(*tables), out_dir, options=options, resume=resume, overwrite=overwrite)


def predict_on_ray(run: Path, file: Path, out_file: Path, options: Any, data: Any) -> int:
    """`fenlei predict --file --ray`: predict on Ray Data; returns the rows written."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from fenlei.scale import predict_on_ray as predict
    from fenlei.scale import require_ray

    require_ray()
    columns = (SpinnerColumn(), TextColumn("{task.completed:,} rows"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("predict", total=None)
        rows, blank = predict(
            run,
            file,
            out_file,
            options=options,
            data=data,
            progress=lambda n: bar.update(task, completed=n),
        )
    if blank:
        err.print(f"{blank} rows had no text: their predicted_label is empty")
    return int(rows)


def tune_launcher(ray: bool, address: str | None, workers: int, cpus: float) -> Any:
    """`fenlei tune --ray`: the tuner's launcher running trials as Ray tasks (None without
    --ray: the tuner runs them in this process)."""
    if not ray:
        return None
    from fenlei.scale import require_ray, trial_launcher
    from fenlei.tuning.trials import run_trials

    require_ray()
    err.print(f"running {workers} trials at a time on Ray; per-trial lines are not shown")
    return trial_launcher(ray_options(address, workers, cpus_per_worker=cpus), run_trials)
