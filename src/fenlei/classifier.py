"""The scikit-learn-style facade over the training pipeline, and table prediction.

:class:`TextClassifier` wraps :func:`fenlei.pipeline.train_run` as ``fit`` / ``predict`` /
``predict_proba`` / ``score`` / ``save`` / ``load``; :func:`predict_file` streams a table
through a run.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Tags

from fenlei.artifact import atomic_write
from fenlei.config import DataConfig, RunConfig, load_config
from fenlei.data import Dataset, iter_texts
from fenlei.ensemble import EnsemblePredictor
from fenlei.errors import ArtifactError, ConfigError, DataError, NotFittedError
from fenlei.evaluate import evaluate
from fenlei.files import staged_folder
from fenlei.loader import open_predictor
from fenlei.models import training_mmap_threshold
from fenlei.pipeline import prepare_splits, train_run
from fenlei.predict import Prediction, Predictor, ServablePredictor
from fenlei.progress import RichProgress
from fenlei.records import RunMetrics
from fenlei.run_folder import LOCK_FILE
from fenlei.runtime import configure_torch, training_threads

__all__ = ["TextClassifier", "config_overrides", "predict_file"]


def predict_file(
    predictor: ServablePredictor,
    in_path: str | Path,
    out_path: str | Path,
    cfg: DataConfig | None = None,
    *,
    chunk_size: int = 1024,
    skipped: list[DataError] | None = None,
) -> int:
    """Stream a table through the predictor into a CSV: input columns + label, score, p_<label>.

    ``predicted_label`` is empty where the model abstains (its reject option) or, for a
    multi-label model, chooses no label. The output appears only when complete (atomic
    rename). Returns the number of rows written. With a ``skipped`` list, rows with an empty
    or invalid text are left out and their errors collected there (``--on-error skip``)
    instead of failing the whole file.

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
            for _, row, text in iter_texts(in_path, cfg, skipped=skipped):
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
    predictor: ServablePredictor,
    prob_cols: list[str],
) -> csv.DictWriter[str]:
    predictions = predictor.predict([text for _, text in chunk])
    if writer is None:
        fields = [*chunk[0][0].keys(), "predicted_label", "score", *prob_cols]
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
    for (row, _), pred in zip(chunk, predictions, strict=True):
        # the chosen labels; empty where none is chosen (multi-label) or the model abstains
        label = (
            "|".join(pred.labels) if predictor.rule.multi_label or pred.abstained else pred.label
        )
        probs = {f"p_{k}": f"{v:.6f}" for k, v in pred.probs.items()}
        writer.writerow({**row, "predicted_label": label, "score": f"{pred.score:.6f}", **probs})
    return writer


# Constructor settings that are shortcuts for one config key each (None: the preset's value).
_SHORTCUTS = {
    "epochs": ("train.epochs",),
    "lr": ("train.lr",),
    "batch_size": ("train.batch_size",),
    "max_length": ("encoder.max_length",),
    "seed": ("train.seed", "data.split_seed"),
}


class TextClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A text classifier with the scikit-learn API, backed by a fenlei run folder.

    A scikit-learn estimator: the constructor only stores its settings, so ``clone``,
    ``cross_val_score``, ``GridSearchCV`` (``param_grid={"epochs": [2, 5]}``) and ``Pipeline``
    work; ``fit`` resolves them into a :class:`~fenlei.config.RunConfig` (preset, then
    ``overrides``, then the shortcuts that are not None).

    Args:
        preset: preset name or TOML config path (``linear``, ``nbsvm``, ``lstm``, ``seed-lstm``,
            ``minilm``).
        overrides: ``section.key=value`` settings applied on top (a tuple or list).
        epochs, lr, batch_size: ``train.epochs``, ``train.lr``, ``train.batch_size``.
        max_length: ``encoder.max_length`` (tokens per text).
        seed: ``train.seed`` and ``data.split_seed`` (the held-out dev share).
        run_dir: where to keep the run folder; None: a temporary folder, removed on the next
            ``fit`` and when the classifier is garbage-collected (``save`` keeps a copy).
        verbose: show a progress bar while fitting.

    Attributes:
        classes_: the labels, in the column order of ``predict_proba``.
        run_dir_: the run folder of the fitted or loaded model.
        metrics_: its ``metrics.json`` (:class:`~fenlei.records.RunMetrics`).
        history_: one :class:`~fenlei.records.EpochRecord` per epoch (after ``fit``).

    Example:
        >>> clf = TextClassifier("linear", epochs=3)
        >>> clf.fit(["good", "bad", "fine", "awful"] * 10, ["pos", "neg"] * 20)  # doctest: +SKIP
        >>> clf.predict(["good"])  # doctest: +SKIP
        ['pos']
    """

    def __init__(
        self,
        preset: str = "linear",
        *,
        overrides: Sequence[str] = (),
        epochs: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        seed: int | None = None,
        run_dir: str | Path | None = None,
        verbose: bool = False,
    ) -> None:
        self.preset = preset
        self.overrides = overrides
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed
        self.run_dir = run_dir
        self.verbose = verbose

    def __sklearn_tags__(self) -> Tags:
        """Input is a 1-D sequence of texts (strings), not a 2-D array of numbers."""
        tags = super().__sklearn_tags__()
        tags.input_tags.one_d_array = True
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        """Whether ``fit`` or ``load`` has run (scikit-learn's ``check_is_fitted`` asks)."""
        return "predictor_" in self.__dict__

    def config(self, *, multi_label: bool = False) -> RunConfig:
        """The configuration ``fit`` trains with (``multi_label`` for list-of-labels ``y``).

        Raises:
            ConfigError: unknown preset, unknown key or invalid value.
        """
        overrides = list(self.overrides)
        if multi_label:
            overrides.append("data.multi_label=true")
        for name, keys in _SHORTCUTS.items():
            value = getattr(self, name)
            if value is not None:
                overrides.extend(f"{key}={json.dumps(value)}" for key in keys)
        return load_config(self.preset, overrides)

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
            ConfigError: an invalid setting.
        """
        train = Dataset.from_lists(_plain(X), _plain(y), source="fit(X, y)")
        cfg = self.config(multi_label=train.multi_label)
        dev = None
        if X_dev is not None and y_dev is not None:
            dev = Dataset.from_lists(_plain(X_dev), _plain(y_dev), source="fit(X_dev, y_dev)")
            dev = Dataset(dev.examples, dev.source, train.multi_label)
        splits = prepare_splits(
            cfg.data.model_copy(update={"test_fraction": 0.0}), train, dev, None
        )
        configure_torch(
            threads=training_threads(cfg.train.threads).count,
            mmap_threshold=training_mmap_threshold(cfg),
        )
        self._forget_temporary_run()
        run_dir = Path(self.run_dir) if self.run_dir else self._temporary_run_dir()
        progress = RichProgress(cfg.train.monitor) if self.verbose else None
        result = train_run(cfg, splits, run_dir, overwrite=True, progress=progress)
        self._set_fitted(result.predictor, result.run_dir, result.metrics)
        self.history_ = result.history
        return self

    def _temporary_run_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="fenlei-"))
        # Removed when this object is collected (or at exit), or by the next fit.
        self._cleanup = weakref.finalize(self, shutil.rmtree, path, ignore_errors=True)
        return path

    def _forget_temporary_run(self) -> None:
        cleanup = self.__dict__.pop("_cleanup", None)
        if cleanup is not None:
            cleanup()  # removes the folder once; a no-op after the object's collection
        for name in ("predictor_", "run_dir_", "classes_", "metrics_", "history_"):
            self.__dict__.pop(name, None)

    def _set_fitted(self, predictor: ServablePredictor, run_dir: Path, metrics: RunMetrics) -> None:
        self.predictor_ = predictor
        self.run_dir_ = run_dir
        self.classes_ = np.array(predictor.labels)
        self.metrics_ = metrics

    def _predictor(self) -> ServablePredictor:
        predictor: ServablePredictor | None = getattr(self, "predictor_", None)
        if predictor is None:
            raise NotFittedError(
                "this TextClassifier is not fitted yet; call fit(X, y) or TextClassifier.load(path)"
            )
        return predictor

    def predict(self, X: Sequence[str]) -> list[Any]:
        """The best label per text (a tuple of labels per text for multi-label)."""
        predictor = self._predictor()
        preds = predictor.predict(_plain(X))
        if predictor.rule.multi_label:
            return [p.labels for p in preds]
        return [p.label for p in preds]

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """Probabilities (n_texts, n_classes), columns in ``classes_`` order."""
        return self._predictor().predict_proba(_plain(X))

    def predict_details(self, X: Sequence[str]) -> list[Prediction]:
        """Full predictions: label, score and every label's probability."""
        return self._predictor().predict(_plain(X))

    def score(
        self,
        X: Sequence[str],
        y: Sequence[str | Sequence[str]],
        sample_weight: Sequence[float] | None = None,
    ) -> float:
        """Accuracy on ``X`` (exact-set accuracy for multi-label).

        Raises:
            ConfigError: ``sample_weight`` is given (not supported).
        """
        if sample_weight is not None:
            raise ConfigError("TextClassifier.score does not take sample_weight")
        predictor = self._predictor()
        data = Dataset.from_lists(_plain(X), _plain(y), source="score(X, y)")
        metrics = evaluate(
            predictor, Dataset(data.examples, data.source, predictor.rule.multi_label)
        )
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
        if target.exists():
            target.rmdir()  # empty: checked above
        with staged_folder(target) as staging:
            shutil.copytree(
                self.run_dir_, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK_FILE)
            )
        return target

    @classmethod
    def load(cls, path: str | Path) -> TextClassifier:
        """Load a saved classifier (any fenlei run folder, an ensemble too); the manifest is
        verified.

        The classifier gets the preset and overrides it was trained with (the differences
        between the saved config and its preset), so ``clone(loaded).fit(...)`` trains the
        same way. A loaded ensemble predicts but has no preset to refit (its preset is
        ``"ensemble"``): ``fenlei ensemble`` builds another.

        Raises:
            ArtifactError: the folder is missing, incomplete or altered.
        """
        configure_torch()
        predictor = open_predictor(path)
        if isinstance(predictor, EnsemblePredictor):
            clf = cls(predictor.info().preset, run_dir=path)
            metrics = predictor.metrics
        else:
            assert isinstance(predictor, Predictor) and predictor.run is not None
            cfg = predictor.run.config
            clf = cls(cfg.preset, overrides=config_overrides(cfg), run_dir=path)
            metrics = predictor.run.metrics
        clf._set_fitted(predictor, Path(path), _metrics(metrics, path))
        return clf


def config_overrides(cfg: RunConfig) -> tuple[str, ...]:
    """The ``section.key=value`` overrides that turn ``cfg.preset`` into ``cfg``.

    Example:
        >>> config_overrides(load_config("linear", ["train.epochs=3"]))
        ('train.epochs=3',)
    """
    base = load_config(cfg.preset).model_dump(mode="json")
    have = cfg.model_dump(mode="json")
    return tuple(
        f"{section}.{key}={json.dumps(value, ensure_ascii=False)}"
        for section, values in have.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if value != base[section].get(key)
    )


def _metrics(data: dict[str, Any], path: str | Path) -> RunMetrics:
    try:
        return RunMetrics.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{Path(path) / 'metrics.json'} is not a run's metrics: {exc}") from exc


def _plain(values: Sequence[Any]) -> Sequence[Any]:
    """A NumPy array (as scikit-learn's splitters hand out) as a list of Python objects."""
    return values.tolist() if isinstance(values, np.ndarray) else values
