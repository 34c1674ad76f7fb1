"""Experiment tracking of a training run, in MLflow or TensorBoard.

Enter through :func:`track_run`, a context manager around one training
(:func:`fenlei.pipeline.train_run` opens it when given ``track=``; ``fenlei train --track``).
It logs, under the names of :data:`METRIC_NAMES`:

- the resolved configuration, flattened to dotted keys (``train.lr``), as parameters;
- each epoch's (or solve's) record, through the training loop's ``on_epoch`` hook, at step
  = the epoch: ``train/loss``, ``train/lr``, ``train/epoch_seconds``, ``dev/<metric>``;
- the final headline metrics (``final/dev_accuracy``, ``final/test_macro_f1``, ...);
- the plots (``plots/*.png``) and the whole run folder: MLflow artifacts ``plots/`` and
  ``run/``; TensorBoard has no file store, so it gets the plots as images and the run
  folder's path and configuration as text.

Where: MLflow uses ``MLFLOW_TRACKING_URI`` when set, else its local file store ``./mlruns``
(experiment ``MLFLOW_EXPERIMENT_NAME``, else ``fenlei``); TensorBoard writes event files to
``./tensorboard/<run folder name>-<time>``. Both are in the ``track`` extra.

Example:
    >>> with track_run("mlflow", cfg, "runs/x") as tracking:  # doctest: +SKIP
    ...     result = train_run(cfg, splits, "runs/x", on_epoch=tracking.chain(None))
    ...     tracking.finish(result.run_dir, result.metrics.to_json())
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from fenlei._version import __version__
from fenlei.config import RunConfig
from fenlei.errors import ConfigError, MissingExtraError
from fenlei.predict import headline_metrics
from fenlei.records import EpochRecord
from fenlei.train import EpochHook

__all__ = [
    "METRIC_NAMES",
    "TRACKERS",
    "MlflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "Tracking",
    "epoch_metrics",
    "flatten_config",
    "open_tracker",
    "track_run",
]

logger = logging.getLogger(__name__)

TrackerKind = Literal["mlflow", "tensorboard"]
TRACKERS: tuple[TrackerKind, ...] = ("mlflow", "tensorboard")

METRIC_NAMES = {
    "train/loss": "mean training loss of the epoch",
    "train/lr": "learning rate at the end of the epoch (loop families)",
    "train/epoch_seconds": "wall time of the epoch, dev scoring included",
    "dev/<metric>": "the epoch's dev metrics: loss, accuracy, macro_f1",
    "final/<split>_<metric>": "headline scores of metrics.json (dev and test)",
    "final/best_epoch": "the epoch whose weights were kept",
    "final/train_seconds": "wall time to the trained model",
}
"""The metric names both trackers log (step = epoch for the per-epoch ones)."""

_MLFLOW_BATCH = 100  # MLflow's limit of parameters per log_batch call


def flatten_config(cfg: RunConfig) -> dict[str, str]:
    """The configuration as ``{"train.lr": "0.01", ...}``: dotted keys, JSON values.

    Example:
        >>> flatten_config(load_config("linear"))["train.epochs"]  # doctest: +SKIP
        '5'
    """
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node if isinstance(node, str) else json.dumps(node, ensure_ascii=False)

    walk("", cfg.model_dump(mode="json"))
    return flat


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    """One epoch's numbers under :data:`METRIC_NAMES`."""
    out = {"train/loss": record.train_loss, "train/epoch_seconds": record.seconds}
    if record.lr is not None:
        out["train/lr"] = record.lr
    out |= {f"dev/{k}": float(v) for k, v in record.dev.items() if isinstance(v, int | float)}
    return out


class Tracker(Protocol):
    """What a tracking backend does for one run."""

    def log_params(self, params: Mapping[str, str]) -> None:
        """Record the run's parameters (once, at the start)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record numbers at a step."""

    def log_final(self, metrics: Mapping[str, float], params: Mapping[str, str]) -> None:
        """Record the final numbers."""

    def log_run_folder(self, run_dir: Path) -> None:
        """Record the plots and the run folder."""

    def end(self, ok: bool) -> None:
        """Close the run, as finished (``ok``) or failed."""


def _files(run_dir: Path) -> Iterator[Path]:
    """The run folder's files, without fenlei's hidden bookkeeping (the lock file)."""
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


class MlflowTracker:
    """One MLflow run, written through ``MlflowClient`` (no global active run)."""

    def __init__(self, uri: str | None, run_name: str, tags: Mapping[str, str]) -> None:
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise MissingExtraError("mlflow-skinny", "track", "--track mlflow") from exc
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if urlparse(self.uri).scheme in ("", "file"):
            # MLflow 3 keeps its file store behind this opt-in; ./mlruns is fenlei's default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "fenlei"
        try:
            self.client = MlflowClient(self.uri)
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id: str = self.client.create_run(
                exp_id, run_name=run_name, tags=dict(tags)
            ).info.run_id
        except MlflowException as exc:
            raise ConfigError(f"MLflow at {self.uri}: {exc.message}") from exc
        logger.info("MLflow run %s in %s", self.run_id, self.uri)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log parameters in batches of 100 (MLflow's limit)."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _MLFLOW_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log numbers at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_final(self, metrics: Mapping[str, float], params: Mapping[str, str]) -> None:
        """Log the final numbers (step 0)."""
        self.log_metrics(metrics, step=0)

    def log_run_folder(self, run_dir: Path) -> None:
        """Artifacts: ``plots/`` and the run folder under ``run/``."""
        for path in sorted((run_dir / "plots").glob("*.png")):
            self.client.log_artifact(self.run_id, str(path), "plots")
        for path in _files(run_dir):
            parent = path.parent.relative_to(run_dir).as_posix()
            self.client.log_artifact(
                self.run_id, str(path), "run" if parent == "." else f"run/{parent}"
            )

    def end(self, ok: bool) -> None:
        """Mark the run FINISHED or FAILED."""
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class TensorBoardTracker:
    """One TensorBoard run: an event-file folder written by torch's ``SummaryWriter``."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise MissingExtraError("tensorboard", "track", "--track tensorboard") from exc
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        logger.info("TensorBoard events in %s", self.log_dir)

    def log_params(self, params: Mapping[str, str]) -> None:
        """The configuration as a text table (the hyper-parameters go in with the finals)."""
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", f"| key | value |\n| --- | --- |\n{rows}")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars at ``step``."""
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_final(self, metrics: Mapping[str, float], params: Mapping[str, str]) -> None:
        """The HParams view: the configuration against the final numbers."""
        self.writer.add_hparams(dict(params), dict(metrics), run_name=".")

    def log_run_folder(self, run_dir: Path) -> None:
        """The plots as images and the run folder's path as text."""
        from matplotlib import image

        for path in sorted((run_dir / "plots").glob("*.png")):
            pixels = image.imread(str(path))[..., :3]  # (H, W, RGB[A]) -> (H, W, 3)
            self.writer.add_image(f"plots/{path.stem}", pixels, dataformats="HWC")
        self.writer.add_text("run_folder", str(run_dir.resolve()))

    def end(self, ok: bool) -> None:
        """Flush and close the event files."""
        if not ok:
            self.writer.add_text("status", "FAILED")
        self.writer.close()


def open_tracker(kind: str, run_dir: str | Path, *, uri: str | None = None) -> Tracker:
    """A tracker of ``kind`` for the training that writes ``run_dir``.

    Args:
        kind: ``"mlflow"`` or ``"tensorboard"``.
        run_dir: the run folder (its name names the tracked run).
        uri: MLflow's tracking URI (default ``MLFLOW_TRACKING_URI``, else ``./mlruns``) or
            TensorBoard's log folder (default ``./tensorboard/<run folder name>-<time>``).

    Raises:
        ConfigError: an unknown kind, or an MLflow store that refuses the run.
        MissingExtraError: the backend's package is missing (``pip install 'fenlei[track]'``).
    """
    root = Path(run_dir)
    name = root.resolve().name
    if kind == "mlflow":
        tags = {"fenlei.version": __version__, "fenlei.run_dir": str(root.resolve())}
        return MlflowTracker(uri, name, tags)
    if kind == "tensorboard":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return TensorBoardTracker(uri or Path("tensorboard") / f"{name}-{stamp}")
    raise ConfigError(f"--track {kind!r}: choose one of {', '.join(TRACKERS)}")


@dataclass
class Tracking:
    """One tracked training (a no-op without a tracker)."""

    tracker: Tracker | None = None
    params: dict[str, str] = field(default_factory=dict)
    _warned: bool = False

    def _safely(self, what: str, call: Any, *args: Any) -> None:
        """A tracking failure is a warning: it never costs the training."""
        try:
            call(*args)
        except Exception as exc:  # a server that went away, a full disk
            if not self._warned:
                logger.warning("tracking failed to %s (%s); training goes on", what, exc)
                self._warned = True

    def epoch(self, record: EpochRecord) -> None:
        """Log one epoch's record at step = its epoch."""
        if self.tracker is not None:
            self._safely(
                "log an epoch", self.tracker.log_metrics, epoch_metrics(record), record.epoch
            )

    def chain(self, hook: EpochHook | None) -> EpochHook | None:
        """``hook`` preceded by :meth:`epoch` (``hook`` itself without a tracker)."""
        if self.tracker is None:
            return hook

        def on_epoch(record: EpochRecord) -> None:
            self.epoch(record)
            if hook is not None:
                hook(record)  # may raise StopTraining, after the epoch is logged

        return on_epoch

    def finish(self, run_dir: str | Path, metrics: Mapping[str, Any]) -> None:
        """Log the final metrics (``metrics.json``'s content), the plots and the run folder."""
        if self.tracker is None:
            return
        final = {f"final/{k}": float(v) for k, v in headline_metrics(metrics).items()}
        self._safely("log the final metrics", self.tracker.log_final, final, self.params)
        self._safely("log the run folder", self.tracker.log_run_folder, Path(run_dir))


@contextmanager
def track_run(
    kind: str | None,
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    uri: str | None = None,
    enabled: bool = True,
) -> Iterator[Tracking]:
    """Track the training inside the block; the run ends as finished, or failed on an error.

    Args:
        kind: ``"mlflow"``, ``"tensorboard"``, or None (nothing is tracked).
        cfg: the resolved configuration, logged as parameters.
        run_dir: the run folder being written.
        uri: where to (see :func:`open_tracker`).
        enabled: False on the ranks of a data-parallel run that do not write.

    Yields:
        The :class:`Tracking`: chain its hook into ``on_epoch`` and call
        :meth:`Tracking.finish` once the run folder is saved.

    Raises:
        ConfigError, MissingExtraError: as :func:`open_tracker`, before training starts.
    """
    if kind is None or not enabled:
        yield Tracking()
        return
    tracker = open_tracker(kind, run_dir, uri=uri)
    tracking = Tracking(tracker, flatten_config(cfg))
    tracking._safely("log the parameters", tracker.log_params, tracking.params)
    try:
        yield tracking
    except BaseException:
        tracking._safely("close the run", tracker.end, False)
        raise
    tracking._safely("close the run", tracker.end, True)
