"""The scikit-learn-style facade over the training pipeline, and table prediction.

:class:`TextClassifier` wraps :func:`fenlei.pipeline.train_run` as ``fit`` / ``predict`` /
``predict_proba`` / ``score`` / ``save`` / ``load``; :func:`predict_file` streams a table
through a run.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from fenlei.artifact import atomic_write
from fenlei.config import DataConfig, load_config
from fenlei.data import Dataset, iter_texts
from fenlei.errors import ArtifactError, NotFittedError
from fenlei.evaluate import evaluate
from fenlei.pipeline import prepare_splits, train_run
from fenlei.predict import Prediction, Predictor
from fenlei.progress import RichProgress

__all__ = ["TextClassifier", "predict_file"]


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
