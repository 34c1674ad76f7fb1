"""Data-parallel training on Ray Train: fenlei's own loop in every worker, under DDP.

:func:`train_on_ray` validates the job on the driver (settings, run folder, storage), then
Ray Train's ``TorchTrainer`` starts ``workers`` processes with a torch process group (gloo
on CPU, NCCL with GPUs). Each worker reads the tables itself and calls
:func:`fenlei.pipeline.train_run` with its :class:`~fenlei.runtime.Dist`: the loop wraps the
model in ``DistributedDataParallel``, gives each rank its shard of every epoch's batches and
averages the metrics, and only rank 0 writes the run folder, the same files as a local run.

After every epoch rank 0 hands fenlei's newest checkpoint folder (safetensors + JSON, never
a pickle) to ``ray.train.report``, which copies it into Ray's storage; when a worker dies,
``FailureConfig(max_failures)`` restarts the group and rank 0 puts that checkpoint back
into the run folder before resuming. Families trained by a solver (nbsvm) run on one worker.

Example:
    >>> options = RayOptions(workers=2)
    >>> train_on_ray(cfg, Tables(Path("train.csv")), "runs/x", options=options)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fenlei import run_folder
from fenlei.artifact import CHECKPOINT_DIR, STATE_FILE
from fenlei.config import RunConfig
from fenlei.data import load_table
from fenlei.errors import ArtifactError
from fenlei.models import check, family_of, training_mmap_threshold
from fenlei.pipeline import Splits, TrainResult, prepare_splits, train_run
from fenlei.predict import Predictor
from fenlei.records import EpochRecord, RunMetrics, read_history
from fenlei.runtime import Dist, configure_torch, limit_tokenizer_threads
from fenlei.scale.cluster import RayOptions, connect, storage_root, user_error
from fenlei.train import EpochHook

__all__ = ["Tables", "train_on_ray", "workers_for"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tables:
    """The tables a training job reads; every worker opens them itself, so on a cluster of
    several machines they must sit on storage each node sees at the same path."""

    train: Path
    dev: Path | None = None
    test: Path | None = None

    def read(self, cfg: RunConfig) -> Splits:
        """Load and split the tables as a local ``fenlei train`` does (seeded, so every
        rank gets the same splits)."""

        def load(path: Path | None) -> Any:
            return None if path is None else load_table(path, cfg.data)

        return prepare_splits(cfg.data, load(self.train), load(self.dev), load(self.test))


def workers_for(cfg: RunConfig, options: RayOptions) -> int:
    """How many workers a job gets: one for a family trained by a solver (nbsvm), whose
    sweep has no gradient steps to share, else ``options.workers``."""
    return 1 if family_of(cfg.model.architecture).trains_by == "solver" else options.workers


class _Reporter:
    """The ``on_epoch`` hook in each worker: the user's hook, then ``ray.train.report`` with
    the epoch's metrics (every rank) and rank 0's newest checkpoint when it changed."""

    def __init__(self, root: Path, dist: Dist, hook: EpochHook | None) -> None:
        self.root, self.dist, self.hook = root, dist, hook
        self.reported: tuple[int, int] | None = None

    def __call__(self, record: EpochRecord) -> None:
        import ray.train

        metrics = {"epoch": record.epoch, "train_loss": record.train_loss}
        metrics.update({f"dev_{k}": v for k, v in record.dev.items()})
        folder = self.root / CHECKPOINT_DIR
        state = folder / STATE_FILE
        stamp = self._stamp(state) if self.dist.is_main else None
        if stamp is None or stamp == self.reported:
            ray.train.report(metrics, checkpoint=None)
        else:
            with tempfile.TemporaryDirectory(prefix="fenlei-ckpt-") as tmp:
                _link_tree(folder, Path(tmp))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=checkpoint)
            self.reported = stamp
        if self.hook is not None:
            self.hook(record)  # may raise StopTraining; the loop handles it

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:  # the writer thread has not finished the first one
            return None
        return st.st_ino, st.st_mtime_ns


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (else copy) the checkpoint's files: the writer replaces files by rename, so
    each link holds one complete version however the writer races with us."""
    for item in src.iterdir():
        if not item.is_file() or item.name.startswith("."):
            continue
        try:
            os.link(item, dst / item.name)
        except OSError:
            shutil.copy2(item, dst / item.name)


def _restore(checkpoint: Any, root: Path) -> None:
    """Put Ray's newest checkpoint back as the run folder's checkpoint folder (rank 0)."""
    folder = root / CHECKPOINT_DIR
    with checkpoint.as_directory() as saved:
        staging = root / f".{CHECKPOINT_DIR}.restore"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(saved, staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    logger.info("restored the checkpoint Ray kept into %s", folder)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: read the tables, restore after a restart, run the pipeline."""
    import ray.train

    context = ray.train.get_context()
    dist = Dist(context.get_world_rank(), context.get_world_size())
    cfg = RunConfig.model_validate(config["cfg"])
    configure_torch(
        threads=cfg.train.threads or config["threads"],
        seed=cfg.train.seed,
        mmap_threshold=training_mmap_threshold(cfg),
    )
    limit_tokenizer_threads(cfg.train.threads or config["threads"])
    root = Path(config["run_dir"])
    resume, overwrite = bool(config["resume"]), bool(config["overwrite"])
    restored = ray.train.get_checkpoint()
    if restored is not None:  # a restart after a failure: continue from Ray's copy
        if dist.is_main:
            _restore(restored, root)
        resume, overwrite = True, False
        dist.barrier()
    splits = Tables(**{k: v and Path(v) for k, v in config["tables"].items()}).read(cfg)
    hook = _Reporter(root, dist, config.get("on_epoch"))
    train_run(cfg, splits, root, resume=resume, overwrite=overwrite, dist=dist, on_epoch=hook)


def _clear_storage(storage: str, name: str) -> None:
    """Remove Ray's copy of an earlier job of this name, so a new run never resumes it."""
    if "://" in storage:
        from pyarrow import fs

        filesystem, base = fs.FileSystem.from_uri(storage)
        path = f"{base.rstrip('/')}/{name}"
        if filesystem.get_file_info(path).type != fs.FileType.NotFound:
            filesystem.delete_dir(path)
        return
    shutil.rmtree(Path(storage) / name, ignore_errors=True)


def _read_result(root: Path) -> TrainResult:
    try:
        metrics = RunMetrics.from_json(json.loads((root / "metrics.json").read_text("utf-8")))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{root}: the Ray job ended without a complete run ({exc})") from exc
    jsonl = root / "metrics.jsonl"
    history = read_history(jsonl) if jsonl.is_file() else []
    return TrainResult(root, Predictor.from_run(root), metrics, history)


def _job(
    cfg: RunConfig, tables: Tables, root: Path, options: RayOptions, **flags: Any
) -> dict[str, Any]:
    paths = {k: None if v is None else str(Path(v).resolve()) for k, v in vars(tables).items()}
    return {
        "cfg": cfg.model_dump(mode="json", exclude_unset=True),  # keeps what was set
        "tables": paths,
        "run_dir": str(root),
        "threads": max(1, int(options.cpus_per_worker)),
        **flags,
    }


def train_on_ray(
    cfg: RunConfig,
    tables: Tables,
    run_dir: str | Path,
    *,
    options: RayOptions,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train one run folder with ``options.workers`` Ray Train workers under DDP.

    Args:
        cfg: the resolved configuration.
        tables: the training table and optional dev/test tables (read by every worker).
        run_dir: the run folder rank 0 writes (shared storage on a multi-node cluster).
        options: the cluster, the workers and their resources, Ray's checkpoint storage.
        resume: continue from the run folder's checkpoint (or Ray's copy of it).
        overwrite: replace a finished run in ``run_dir``.
        on_epoch: called in every worker after each epoch (shipped to the workers).

    Returns:
        The run folder, read back on the driver: the same result as a local training.

    Raises:
        ConfigError: settings that do not fit the family, an unreachable cluster, storage
            that cannot be written, ``workers`` below 1.
        ArtifactError, DataError: from any worker, as a local training raises them.
        MissingExtraError: ray is not installed.
    """
    check(cfg)
    root = Path(run_dir).resolve()
    run_folder.check_writable(root)
    for path in vars(tables).values():
        if path is not None and not Path(path).is_file():
            raise ArtifactError(f"{path} is not a file; give a table every Ray node can read")
    storage, name = storage_root(options.storage, root)
    workers = workers_for(cfg, options)
    if workers < options.workers:
        logger.warning("%s is trained by a solver: it runs on one worker", cfg.model.architecture)
    job = _job(cfg, tables, root, options, resume=resume, overwrite=overwrite, on_epoch=on_epoch)
    with connect(options):
        from ray.train import FailureConfig, ScalingConfig
        from ray.train import RunConfig as RayRunConfig
        from ray.train.torch import TorchTrainer

        if not resume:
            _clear_storage(storage, name)
        resources = {"CPU": options.cpus_per_worker}
        if options.gpus_per_worker > 0:
            resources["GPU"] = options.gpus_per_worker
        trainer = TorchTrainer(
            _worker,
            train_loop_config=job,
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=options.gpus_per_worker > 0,
                resources_per_worker=resources,
            ),
            run_config=RayRunConfig(
                name=name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=options.max_failures),
            ),
        )
        try:
            trainer.fit()
        except Exception as exc:
            if (mistake := user_error(exc)) is not None:
                raise mistake from None
            raise
    _clear_storage(storage, name)  # the run folder is complete; Ray's copies are spent
    return _read_result(root)
