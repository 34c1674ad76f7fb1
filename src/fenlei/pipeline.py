"""The file-to-run-folder training pipeline.

:func:`prepare_splits` checks (and if needed makes) the train/dev/test splits; :func:`train_run`
is the whole job (run folder, tokenizer, model, loop, evaluation, plots, save).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fenlei.artifact import CHECKPOINT_DIR, atomic_write, atomic_write_text, save_run
from fenlei.config import DataConfig, RunConfig
from fenlei.data import Dataset, DataSummary, LabelSet, check_splits, split, summarize
from fenlei.decision import DecisionRule
from fenlei.errors import ArtifactError, ConfigError, DataError
from fenlei.evaluate import evaluate, write_plots
from fenlei.models import ModelSpec, build_model, check, family_of, n_outputs
from fenlei.predict import Predictor
from fenlei.progress import ProgressReporter
from fenlei.records import EpochRecord
from fenlei.reference import reference_stats
from fenlei.tokenize import Encoder, load_pretrained_encoder, train_encoder
from fenlei.train import TrainData, fit

__all__ = ["Splits", "TrainResult", "prepare_splits", "train_run"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """Train, dev and (optional) test data, checked against each other."""

    train: Dataset
    dev: Dataset
    test: Dataset | None
    labels: LabelSet

    def summaries(self) -> list[DataSummary]:
        """One summary per split."""
        return [summarize(d) for d in (self.train, self.dev, self.test) if d is not None]


def prepare_splits(
    cfg: DataConfig, train: Dataset, dev: Dataset | None = None, test: Dataset | None = None
) -> Splits:
    """Split ``train`` when no dev set is given (stratified, seeded), then check the labels.

    Raises:
        DataError: one class only, or a dev/test label that never occurs in train.
    """
    if dev is None:
        check_splits(train)  # one class is reported before trying to split
        _check_enough_rows_to_split(train, 3 if test is None and cfg.test_fraction > 0 else 2)
        test_fraction = cfg.test_fraction if test is None else 0.0
        train, dev, made_test = split(
            train,
            dev_fraction=cfg.dev_fraction,
            test_fraction=test_fraction,
            seed=cfg.split_seed,
        )
        test = test if test is not None else made_test
    labels = check_splits(train, dev, test)
    return Splits(train, dev, test, labels)


def _check_enough_rows_to_split(dataset: Dataset, needed: int) -> None:
    if dataset.multi_label:
        return
    rows: dict[str, list[int]] = {}
    for ex in dataset.examples:
        rows.setdefault(ex.labels[0], []).append(ex.source_row)
    for label, where in sorted(rows.items()):
        if len(where) < needed:
            raise DataError(
                f"label {label!r} occurs in only {len(where)} row(s) (row {where[0]}); "
                f"splitting into train/dev{'/test' if needed == 3 else ''} needs at least "
                f"{needed} per label: add rows, merge the label, or give --dev",
                path=dataset.source,
            )


@dataclass
class TrainResult:
    """What :func:`train_run` produced."""

    run_dir: Path
    predictor: Predictor
    metrics: dict[str, Any]
    history: list[EpochRecord] = field(default_factory=list)


def _fit_encoder(cfg: RunConfig, texts: list[str]) -> Encoder:
    if cfg.encoder.kind == "pretrained":
        name = cfg.encoder.pretrained or cfg.model.pretrained
        assert name is not None  # checked by RunConfig
        return load_pretrained_encoder(name, cfg.encoder)
    return train_encoder(texts, cfg.encoder)


def _same_run(saved: dict[str, Any], cfg: RunConfig, labels: LabelSet) -> bool:
    # Re-validate through today's schema so settings added since (with defaults) still match.
    try:
        then = RunConfig.model_validate(saved.get("config", {}))
    except ValueError:
        return False
    return then == cfg and saved.get("labels") == list(labels.names)


def _prepare_run_dir(
    run_dir: Path, cfg: RunConfig, labels: LabelSet, *, resume: bool
) -> Encoder | None:
    """Check or start the run folder; return the checkpointed encoder when resuming."""
    ckpt = run_dir / CHECKPOINT_DIR
    state = {"config": cfg.model_dump(mode="json"), "labels": list(labels.names)}
    if resume and (ckpt / "run.json").is_file():
        saved = json.loads((ckpt / "run.json").read_text(encoding="utf-8"))
        if not _same_run(saved, cfg, labels):
            raise ConfigError(
                f"the checkpoint in {ckpt} was made with other settings or labels; "
                "train again without --resume, or with the same config and data"
            )
        return Encoder.load(ckpt / "tokenizer.json", cfg.encoder)
    if resume:
        logger.warning("nothing to resume in %s: starting from scratch", run_dir)
    if (run_dir / "manifest.json").is_file() and not resume:
        raise ArtifactError(
            f"{run_dir} already holds a finished run; choose another output folder "
            "or pass --overwrite"
        )
    shutil.rmtree(ckpt, ignore_errors=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ckpt / "run.json", json.dumps(state, ensure_ascii=False))
    return None


def train_run(
    cfg: RunConfig,
    splits: Splits,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
) -> TrainResult:
    """Train, evaluate and save one run folder.

    Args:
        cfg: the resolved configuration.
        splits: checked train/dev/test data (see :func:`prepare_splits`).
        run_dir: the run folder to write.
        resume: continue from the checkpoint in ``run_dir`` if there is one.
        overwrite: replace a finished run already in ``run_dir``.
        progress: receives training progress (a progress bar).

    Returns:
        The run folder, a ready predictor and the metrics written to ``metrics.json``.

    Raises:
        ArtifactError: ``run_dir`` already holds a finished run and ``overwrite`` is False.
        ConfigError: the settings do not fit the model family (:func:`fenlei.models.check`).

    Example:
        >>> result = train_run(load_config("linear"), splits, "runs/x")  # doctest: +SKIP
    """
    check(cfg)  # the settings fit the model family, before anything is written
    root = Path(run_dir)
    if overwrite and not resume and (root / "manifest.json").is_file():
        shutil.rmtree(root)
    started = time.perf_counter()
    encoder = _prepare_run_dir(root, cfg, splits.labels, resume=resume)
    if encoder is None:
        encoder = _fit_encoder(cfg, splits.train.texts)
        atomic_write(root / CHECKPOINT_DIR / "tokenizer.json", encoder.save)
    torch.manual_seed(cfg.train.seed)
    spec = ModelSpec(
        vocab_size=encoder.vocab_size,
        pad_id=encoder.pad_id,
        n_outputs=n_outputs(
            len(splits.labels),
            multi_label=splits.labels.multi_label,
            single_logit=cfg.model.single_logit,
        ),
    )
    data = TrainData.from_dataset(
        splits.train, splits.labels, encoder, n_out=spec.n_outputs, augment=cfg.augment
    )
    dev = TrainData.from_dataset(splits.dev, splits.labels, encoder, n_out=spec.n_outputs)
    model = build_model(cfg.model, spec, vocab=encoder.tokenizer.get_vocab(), train_ids=data.ids)
    run = fit(
        model,
        family_of(cfg.model.architecture),
        data,
        dev,
        cfg.train,
        rule=DecisionRule(multi_label=splits.labels.multi_label, threshold=cfg.eval.threshold),
        run_dir=root,
        resume=resume,
        progress=progress,
    )
    train_seconds = time.perf_counter() - started
    predictor = Predictor(
        encoder,
        run.model,
        splits.labels.names,
        multi_label=splits.labels.multi_label,
        threshold=cfg.eval.threshold,
        batch_size=cfg.eval.batch_size,
    )
    metrics: dict[str, Any] = {
        "best_epoch": run.best_epoch,
        "epochs_run": len(run.history),
        "stopped_early": run.stopped_early,
        "train_seconds": train_seconds,
        "data": {s.source: {"rows": s.rows, "labels": s.label_counts} for s in splits.summaries()},
        "dev": evaluate(predictor, splits.dev),
    }
    if splits.test is not None:
        metrics["test"] = evaluate(predictor, splits.test)
    atomic_write_text(
        root / "reference.json",
        json.dumps(reference_stats(predictor, splits.dev.texts), ensure_ascii=False, indent=1),
    )
    if cfg.eval.plots:
        write_plots(root, splits.labels.names, run.history, metrics.get("test") or metrics["dev"])
    save_run(root, cfg, splits.labels.names, encoder, run.model, spec, metrics)
    return TrainResult(root, predictor, metrics, run.history)
