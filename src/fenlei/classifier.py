"""The scikit-learn-style facade and the file-to-run-folder training pipeline.

:func:`train_run` is the whole job (split, check, tokenizer, model, loop, evaluation, plots,
run folder); :class:`TextClassifier` wraps it as ``fit`` / ``predict`` / ``predict_proba`` /
``score`` / ``save`` / ``load``; :func:`predict_file` streams a table through a run.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from fenlei.artifact import CHECKPOINT_DIR, atomic_write, atomic_write_text, save_run
from fenlei.config import DataConfig, RunConfig, load_config
from fenlei.data import (
    Dataset,
    DataSummary,
    LabelSet,
    check_splits,
    iter_texts,
    split,
    summarize,
)
from fenlei.errors import ArtifactError, ConfigError, DataError, NotFittedError
from fenlei.evaluate import evaluate, write_plots
from fenlei.models import ModelSpec, build_model, n_outputs
from fenlei.predict import Prediction, Predictor
from fenlei.progress import ProgressReporter, RichProgress
from fenlei.reference import reference_stats
from fenlei.tokenize import Encoder, load_pretrained_encoder, train_encoder
from fenlei.train import fit

__all__ = ["Splits", "TextClassifier", "TrainResult", "predict_file", "prepare_splits", "train_run"]

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
    history: list[dict[str, Any]] = field(default_factory=list)


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

    Example:
        >>> result = train_run(load_config("linear"), splits, "runs/x")  # doctest: +SKIP
    """
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
    train_ids = encoder.encode_ids(splits.train.texts)
    model = build_model(cfg.model, spec, vocab=encoder.tokenizer.get_vocab(), train_ids=train_ids)
    run = fit(
        model,
        encoder,
        splits.train,
        splits.dev,
        splits.labels,
        cfg.train,
        run_dir=root,
        resume=resume,
        progress=progress,
        augment=cfg.augment,
        train_ids=train_ids,
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


def predict_file(
    predictor: Predictor,
    in_path: str | Path,
    out_path: str | Path,
    cfg: DataConfig | None = None,
    *,
    chunk_size: int = 1024,
) -> int:
    """Stream a table through the predictor into a CSV: input columns + label, score, p_<label>.

    The output appears only when complete (atomic rename). Returns the number of rows.

    Raises:
        DataError: the input is unreadable or a text is empty (names file and row).
    """
    out = Path(out_path)
    count = 0
    prob_cols = [f"p_{name}" for name in predictor.labels]

    def write(tmp: Path) -> None:
        nonlocal count
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer: csv.DictWriter[str] | None = None
            chunk: list[tuple[dict[str, Any], str]] = []
            for _, row, text in iter_texts(in_path, cfg):
                chunk.append((row, text))
                if len(chunk) >= chunk_size:
                    writer = _write_chunk(fh, writer, chunk, predictor, prob_cols)
                    count += len(chunk)
                    chunk = []
            if chunk:
                _write_chunk(fh, writer, chunk, predictor, prob_cols)
                count += len(chunk)

    atomic_write(out, write)
    return count


def _write_chunk(
    fh: Any,
    writer: csv.DictWriter[str] | None,
    chunk: list[tuple[dict[str, Any], str]],
    predictor: Predictor,
    prob_cols: list[str],
) -> csv.DictWriter[str]:
    predictions = predictor.predict([text for _, text in chunk])
    if writer is None:
        fields = [*chunk[0][0].keys(), "predicted_label", "score", *prob_cols]
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
    for (row, _), pred in zip(chunk, predictions, strict=True):
        label = "|".join(pred.labels) if predictor.multi_label else pred.label
        probs = {f"p_{k}": f"{v:.6f}" for k, v in pred.probs.items()}
        writer.writerow({**row, "predicted_label": label, "score": f"{pred.score:.6f}", **probs})
    return writer


class TextClassifier:
    """A text classifier with the scikit-learn API, backed by a fenlei run folder.

    Args:
        preset: preset name or TOML config path (``linear``, ``lstm``, ``seed-lstm``, ``minilm``).
        overrides: ``section.key=value`` settings applied on top.
        run_dir: where to keep the run folder (a temporary folder when None).
        verbose: show a progress bar while fitting.

    Example:
        >>> clf = TextClassifier("linear", overrides=["train.epochs=3"])
        >>> clf.fit(["good", "bad", "fine", "awful"] * 10, ["pos", "neg"] * 20)  # doctest: +SKIP
        >>> clf.predict(["good"])  # doctest: +SKIP
        ['pos']
    """

    def __init__(
        self,
        preset: str = "linear",
        *,
        overrides: Sequence[str] = (),
        run_dir: str | Path | None = None,
        verbose: bool = False,
    ) -> None:
        self.preset = preset
        self.overrides = overrides
        self.run_dir = run_dir
        self.verbose = verbose

    def fit(
        self,
        X: Sequence[str],
        y: Sequence[str | Sequence[str]],
        *,
        X_dev: Sequence[str] | None = None,
        y_dev: Sequence[str | Sequence[str]] | None = None,
    ) -> Self:
        """Train on texts ``X`` with labels ``y`` (a list per text for multi-label).

        Without a dev set, a stratified share of ``X`` is held out to pick the best epoch.

        Raises:
            DataError: empty texts, missing labels, one class, unknown dev labels.
        """
        train = Dataset.from_lists(X, y, source="fit(X, y)")
        overrides = list(self.overrides)
        if train.multi_label:
            overrides.append("data.multi_label=true")
        cfg = load_config(self.preset, overrides)
        dev = None
        if X_dev is not None and y_dev is not None:
            dev = Dataset.from_lists(X_dev, y_dev, source="fit(X_dev, y_dev)")
            dev = Dataset(dev.examples, dev.source, train.multi_label)
        splits = prepare_splits(
            cfg.data.model_copy(update={"test_fraction": 0.0}), train, dev, None
        )
        run_dir = Path(self.run_dir) if self.run_dir else Path(tempfile.mkdtemp(prefix="fenlei-"))
        progress = RichProgress(cfg.train.monitor) if self.verbose else None
        result = train_run(cfg, splits, run_dir, overwrite=True, progress=progress)
        self._set_fitted(result.predictor, result.run_dir, result.metrics)
        self.history_ = result.history
        return self

    def _set_fitted(self, predictor: Predictor, run_dir: Path, metrics: dict[str, Any]) -> None:
        self.predictor_ = predictor
        self.run_dir_ = run_dir
        self.classes_ = np.array(predictor.labels)
        self.metrics_ = metrics

    def _predictor(self) -> Predictor:
        predictor: Predictor | None = getattr(self, "predictor_", None)
        if predictor is None:
            raise NotFittedError(
                "this TextClassifier is not fitted yet; call fit(X, y) or TextClassifier.load(path)"
            )
        return predictor

    def predict(self, X: Sequence[str]) -> list[Any]:
        """The best label per text (a tuple of labels per text for multi-label)."""
        predictor = self._predictor()
        preds = predictor.predict(X)
        if predictor.multi_label:
            return [p.labels for p in preds]
        return [p.label for p in preds]

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """Probabilities (n_texts, n_classes), columns in ``classes_`` order."""
        return self._predictor().predict_proba(X)

    def predict_details(self, X: Sequence[str]) -> list[Prediction]:
        """Full predictions: label, score and every label's probability."""
        return self._predictor().predict(X)

    def score(self, X: Sequence[str], y: Sequence[str | Sequence[str]]) -> float:
        """Accuracy on ``X`` (exact-set accuracy for multi-label)."""
        predictor = self._predictor()
        data = Dataset.from_lists(X, y, source="score(X, y)")
        metrics = evaluate(predictor, Dataset(data.examples, data.source, predictor.multi_label))
        return float(metrics["accuracy"])

    def save(self, path: str | Path) -> Path:
        """Copy the run folder to ``path`` (atomically: a temporary folder, then a rename).

        Raises:
            ArtifactError: ``path`` exists and is not empty.
        """
        self._predictor()
        target = Path(path)
        if target.exists() and any(target.iterdir()):
            raise ArtifactError(f"{target} exists and is not empty; choose a new folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        shutil.copytree(self.run_dir_, staging, dirs_exist_ok=True)
        if target.exists():
            target.rmdir()
        staging.rename(target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> TextClassifier:
        """Load a saved classifier (any fenlei run folder); the manifest is verified.

        Raises:
            ArtifactError: the folder is missing, incomplete or altered.
        """
        predictor = Predictor.from_run(path)
        assert predictor.run is not None
        clf = cls(predictor.run.config.preset, run_dir=path)
        clf._set_fitted(predictor, Path(path), predictor.run.metrics)
        return clf
