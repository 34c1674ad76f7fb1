"""`fenlei train` and `fenlei demo`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from fenlei.cli._app import (
    ConfigOpt,
    LabelColOpt,
    PresetOpt,
    SetOpt,
    TextColOpt,
    _overrides,
    app,
    out,
)
from fenlei.cli._views import (
    _predictions_table,
    _show_training_result,
    _summary_table,
)
from fenlei.cli.scaling import (
    CpusOpt,
    DashboardOpt,
    GpusOpt,
    MaxFailuresOpt,
    RayAddressOpt,
    RayOpt,
    StorageOpt,
    WorkersOpt,
    ray_options,
    train_on_ray,
)
from fenlei.errors import ConfigError

__all__ = ["DEMO_LINEAR_SETTINGS", "DEMO_TEXTS", "demo", "train"]


def _run_training(
    cfg: Any, splits: Any, out_dir: Path, *, resume: bool, overwrite: bool, track: str | None = None
) -> Any:
    from fenlei.models import training_mmap_threshold
    from fenlei.pipeline import train_run
    from fenlei.progress import RichProgress
    from fenlei.runtime import configure_torch, training_threads

    threads = training_threads(cfg.train.threads)
    configure_torch(
        threads=threads.count, seed=cfg.train.seed, mmap_threshold=training_mmap_threshold(cfg)
    )
    out.print(_summary_table(splits))
    out.print(f"torch threads: {threads.count} ({threads.reason})", highlight=False)
    return train_run(
        cfg,
        splits,
        out_dir,
        resume=resume,
        overwrite=overwrite,
        progress=RichProgress(cfg.train.monitor),
        track=track,
    )


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Training table: .csv .tsv .jsonl .parquet (.gz).")],
    dev: Annotated[Path | None, typer.Option(help="Dev table (else split from DATA).")] = None,
    test: Annotated[Path | None, typer.Option(help="Test table (else split from DATA).")] = None,
    preset: PresetOpt = "linear",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    multi_label: Annotated[bool, typer.Option(help="Rows may carry several labels.")] = False,
    label_sep: Annotated[str | None, typer.Option(help="Label separator in CSV cells.")] = None,
    min_precision: Annotated[
        float | None,
        typer.Option(
            help="Multi-label: tune each label's threshold on dev for the highest recall at "
            "this precision (eval.min_precision; default: the best F1)."
        ),
    ] = None,
    report: Annotated[
        bool, typer.Option(help="Write report.html into the run folder (eval.report).")
    ] = True,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder to write (default: new runs/<preset>-<time>, linked as runs/latest).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue from the run folder's checkpoint (a complete run stays)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a finished run in --out (only fenlei's own files).")
    ] = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    cpus_per_worker: CpusOpt = 1.0,
    gpus_per_worker: GpusOpt = 0.0,
    storage: StorageOpt = None,
    max_failures: MaxFailuresOpt = 1,
    ray_dashboard: DashboardOpt = False,
    track: Annotated[
        Literal["mlflow", "tensorboard"] | None,
        typer.Option(
            help="Log the run to MLflow (MLFLOW_TRACKING_URI, else ./mlruns) or "
            "TensorBoard (./tensorboard/); docs/tracking.md."
        ),
    ] = None,
) -> None:
    """Train a classifier on a labelled table and write a run folder.

    Example: fenlei train reviews.csv --dev dev.csv --preset lstm --set train.epochs=5 -o runs/r1
    """
    from fenlei.config import load_config
    from fenlei.data import load_table
    from fenlei.models import check
    from fenlei.pipeline import prepare_splits

    overrides = _overrides(set_, text_col, label_col, multi_label, label_sep)
    if min_precision is not None:
        overrides.append(f"eval.min_precision={min_precision}")
    if not report:
        overrides.append("eval.report=false")
    cfg = load_config(config or preset, overrides)
    check(cfg)
    chosen = out_dir if out_dir is not None else _new_run_dir(cfg.preset, resume=resume)
    if ray:  # every Ray worker reads the tables itself (docs/scale-out.md)
        opts = ray_options(
            ray_address,
            workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            storage=storage,
            max_failures=max_failures,
            dashboard=ray_dashboard,
        )
        result = train_on_ray(
            cfg, (data, dev, test), chosen, opts, resume=resume, overwrite=overwrite
        )
        _show_training_result(result)
        if out_dir is None:
            _link_latest(chosen)
        return
    train_set = load_table(data, cfg.data)
    dev_set = load_table(dev, cfg.data) if dev else None
    test_set = load_table(test, cfg.data) if test else None
    splits = prepare_splits(cfg.data, train_set, dev_set, test_set)
    result = _run_training(cfg, splits, chosen, resume=resume, overwrite=overwrite, track=track)
    _show_training_result(result)
    if out_dir is None:
        _link_latest(chosen)


LATEST = Path("runs") / "latest"


def _new_run_dir(preset: str, *, resume: bool) -> Path:
    """Where a training without --out goes: a new folder per run (a second training never
    collides with the first); --resume continues the run that runs/latest names."""
    if resume:
        if not LATEST.is_symlink() and not LATEST.is_dir():
            raise ConfigError("--resume needs --out RUN (there is no runs/latest to continue)")
        return LATEST.resolve()
    name = f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = LATEST.parent / name
    suffix = 1
    while run.exists():  # two trainings started within one second
        suffix += 1
        run = LATEST.parent / f"{name}-{suffix}"
    return run


def _link_latest(run: Path) -> None:
    """Point runs/latest at ``run`` (a relative symlink, replaced atomically); a real
    folder of that name (from an older fenlei) is left alone."""
    if LATEST.exists() and not LATEST.is_symlink():
        out.print(f"{LATEST} is a folder, not a link; the run is in {run}", highlight=False)
        return
    tmp = LATEST.with_name(f".latest.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run.resolve().relative_to(LATEST.parent.resolve()))
        os.replace(tmp, LATEST)
    except (OSError, ValueError):  # no symlinks here (some Windows setups): not needed
        tmp.unlink(missing_ok=True)
        return
    out.print(f"{LATEST} -> {run.name}", highlight=False)


DEMO_TEXTS = [
    "hi, my parcel still hasn't arrived, can you check where it is?",
    "I want my money back for the broken blender",
    "我忘记密码了，登录不了怎么办",
    "你们周末几点开门？",
    "can I talk to a real person please",
    "这个耳机支持蓝牙5.3吗",
]


# What a small, noisy dataset like the bundled intents needs from the linear preset.
DEMO_LINEAR_SETTINGS = ("model.char_ngram_min=3", "train.batch_size=32")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(
        "runs/demo"
    ),
    preset: PresetOpt = "linear",
    set_: SetOpt = None,
) -> None:
    """Train on the bundled English + Chinese support-intent dataset and show results.

    With the linear preset the demo turns on character n-grams and batches of 32, which
    suit a small set of short, typo-laden messages (test accuracy 0.76 instead of 0.72);
    --set overrides them.

    Example: fenlei demo --preset lstm --out runs/demo-lstm
    """
    from fenlei.config import load_config
    from fenlei.data import bundled_dataset_path, load_table
    from fenlei.models import check
    from fenlei.pipeline import prepare_splits

    small_data = list(DEMO_LINEAR_SETTINGS) if preset == "linear" else []
    cfg = load_config(preset, [*small_data, *(set_ or [])])
    if small_data:  # say what the demo changed, so the same command line reproduces it
        out.print(
            f"demo: preset {preset} with {' '.join(f'--set {s}' for s in small_data)} "
            "(small, short, typo-laden texts)",
            highlight=False,
        )
    check(cfg)
    splits = prepare_splits(
        cfg.data,
        load_table(bundled_dataset_path("train"), cfg.data),
        load_table(bundled_dataset_path("dev"), cfg.data),
        load_table(bundled_dataset_path("test"), cfg.data),
    )
    result = _run_training(cfg, splits, out_dir, resume=False, overwrite=True)
    _show_training_result(result)
    out.print(_predictions_table(DEMO_TEXTS, result.predictor.predict(DEMO_TEXTS), 3))
