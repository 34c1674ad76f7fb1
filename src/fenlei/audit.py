"""Likely label errors in a training table, found with cleanlab's confident learning.

Enter through :func:`find_label_issues`: it trains a fast model (the ``linear`` preset by
default) K times, each time on all folds but one (stratified, seeded K-fold), and predicts
the held-out fold, so every row gets probabilities from a model that never saw its label.
cleanlab's ``find_label_issues`` (confident learning; not reimplemented here) then picks the
rows whose given label those out-of-fold probabilities disagree with, ranked most suspicious
first by cleanlab's self-confidence label quality.

The result, :class:`LabelIssues`, is what ``fenlei audit`` writes (CSV, JSONL or JSON) and
what the HTML report shows; its file columns are :data:`COLUMNS`.

Example:
    >>> issues = find_label_issues(load_table("train.csv"), folds=5)  # doctest: +SKIP
    >>> issues.rows[0].row, issues.rows[0].given, issues.rows[0].suggested  # doctest: +SKIP
    (1742, 'positive', 'negative')
    >>> issues.write("issues.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fenlei.artifact import atomic_write_text
from fenlei.config import RunConfig, load_config
from fenlei.data import Dataset, LabelSet, check_splits, split
from fenlei.decision import DecisionRule
from fenlei.errors import ConfigError, DataError, MissingExtraError
from fenlei.models import ModelSpec, build_model, check, family_of, n_outputs
from fenlei.predict import Predictor
from fenlei.tokenize import Encoder, load_pretrained_encoder, train_encoder
from fenlei.train import TrainData, fit

__all__ = [
    "COLUMNS",
    "FoldHook",
    "LabelIssue",
    "LabelIssues",
    "check_table",
    "find_label_issues",
    "out_of_fold_probabilities",
]

logger = logging.getLogger(__name__)

# The columns of the CSV file (and the keys of each JSONL line), in order.
COLUMNS = ("rank", "row", "text", "given_label", "suggested_label", "label_quality")

FoldHook = Callable[[int, int, float], None]
"""Called after each fold with (folds done, folds, seconds the fold took)."""


@dataclass(frozen=True)
class LabelIssue:
    """One row whose given label the out-of-fold probabilities disagree with.

    Attributes:
        rank: 1 for the most suspicious row.
        row: the row's number in its file, 1-based, as :mod:`fenlei.data` reports rows.
        text: the row's text.
        given: the label the table gives.
        suggested: the label the out-of-fold model finds most probable.
        quality: cleanlab's label quality (self-confidence: the out-of-fold probability of
            the given label), 0 to 1; lower is more suspicious.
    """

    rank: int
    row: int
    text: str
    given: str
    suggested: str
    quality: float

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object with the keys of :data:`COLUMNS`."""
        values = (self.rank, self.row, self.text, self.given, self.suggested, self.quality)
        return dict(zip(COLUMNS, values, strict=True))


@dataclass(frozen=True)
class LabelIssues:
    """What :func:`find_label_issues` found in one table.

    Attributes:
        source: the table's file (as :class:`~fenlei.data.Dataset` names it).
        labels: label names, in the column order of ``probabilities``.
        rows: the flagged rows, most suspicious first.
        examined: how many rows were examined.
        folds: the K of K-fold.
        seed: the seed of the folds and of training.
        preset: the config's preset (the model that produced the probabilities).
        seconds: how long the audit took.
        probabilities: (N, C) out-of-fold probabilities of every examined row, in table
            order (not written to files).
        quality: (N,) label quality of every examined row, in table order.
    """

    source: str
    labels: tuple[str, ...]
    rows: tuple[LabelIssue, ...]
    examined: int
    folds: int
    seed: int
    preset: str
    seconds: float
    probabilities: np.ndarray = field(repr=False)
    quality: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """Everything but the rows and arrays, as JSON."""
        return {
            "source": self.source,
            "labels": list(self.labels),
            "examined": self.examined,
            "flagged": len(self.rows),
            "folds": self.folds,
            "seed": self.seed,
            "preset": self.preset,
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> dict[str, Any]:
        """The summary and the flagged rows (key ``rows``, objects keyed by :data:`COLUMNS`)."""
        return {**self.summary(), "rows": [issue.to_json() for issue in self.rows]}

    def to_csv(self, path: str | Path) -> Path:
        """Write the flagged rows as CSV with the header :data:`COLUMNS`; returns the path."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        for issue in self.rows:
            writer.writerow(issue.to_json().values())
        return _write(path, buffer.getvalue())

    def to_jsonl(self, path: str | Path) -> Path:
        """Write one JSON object per flagged row (keys :data:`COLUMNS`); returns the path."""
        lines = (json.dumps(issue.to_json(), ensure_ascii=False) for issue in self.rows)
        return _write(path, "".join(f"{line}\n" for line in lines))

    def write(self, path: str | Path) -> Path:
        """Write by the file's suffix: ``.csv``, ``.jsonl``, or ``.json`` (summary + rows).

        Raises:
            ConfigError: another suffix.
        """
        suffix = Path(path).suffix.lower()
        if suffix == ".csv":
            return self.to_csv(path)
        if suffix == ".jsonl":
            return self.to_jsonl(path)
        if suffix == ".json":
            return _write(path, json.dumps(self.to_json(), ensure_ascii=False, indent=1))
        raise ConfigError(f"{path}: write label issues to a .csv, .jsonl or .json file")


def _write(path: str | Path, text: str) -> Path:
    target = Path(path)
    atomic_write_text(target, text)
    return target


def check_table(dataset: Dataset, folds: int) -> LabelSet:
    """Refuse what cannot be audited, with the reason and the file; return the labels.

    Raises:
        DataError: multi-label rows, one class only, or a label with fewer rows than folds.
        ConfigError: fewer than 2 folds.
    """
    if folds < 2:
        raise ConfigError(f"--folds {folds}: K-fold needs at least 2 folds")
    if dataset.multi_label:
        raise DataError(
            "audit handles single-label tables; multi-label rows are not supported",
            path=dataset.source,
        )
    labels = check_splits(dataset)  # one class only -> DataError naming the file
    counts = Counter(ex.labels[0] for ex in dataset.examples)
    rare = sorted((n, label) for label, n in counts.items() if n < folds)
    if rare:
        n, label = rare[0]
        raise DataError(
            f"label {label!r} has {n} row(s), fewer than the {folds} folds: every fold must "
            "hold each label once; add rows, merge rare labels, or use fewer --folds",
            path=dataset.source,
        )
    return labels


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for one fold only, leaving the caller's random state as it was."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _fit_encoder(cfg: RunConfig, texts: list[str]) -> Encoder:
    if cfg.encoder.kind == "pretrained":
        name = cfg.encoder.pretrained or cfg.model.pretrained
        assert name is not None  # checked by RunConfig
        return load_pretrained_encoder(name, cfg.encoder)
    return train_encoder(texts, cfg.encoder)


def _fold_predictor(cfg: RunConfig, train: Dataset, labels: LabelSet, seed: int) -> Predictor:
    """Train one fold's model on ``train`` (its dev split carved from it) and wrap it."""
    try:
        inner, dev, _ = split(train, dev_fraction=cfg.data.dev_fraction, test_fraction=0, seed=seed)
    except DataError as exc:
        raise DataError(
            f"too few rows to hold out a dev split inside each fold ({exc}); add rows or use "
            "fewer --folds",
            path=train.source,
        ) from exc
    encoder = _fit_encoder(cfg, inner.texts)
    spec = ModelSpec(
        vocab_size=encoder.vocab_size,
        pad_id=encoder.pad_id,
        n_outputs=n_outputs(len(labels), multi_label=False, single_logit=cfg.model.single_logit),
    )
    data = TrainData.from_dataset(inner, labels, encoder, n_out=spec.n_outputs)
    dev_data = TrainData.from_dataset(dev, labels, encoder, n_out=spec.n_outputs)
    model = build_model(cfg.model, spec, vocab=encoder.tokenizer.get_vocab(), train_ids=data.ids)
    run = fit(model, family_of(cfg.model.architecture), data, dev_data, cfg.train)
    return Predictor(
        encoder,
        run.model,
        labels.names,
        rule=DecisionRule(multi_label=False),
        batch_size=cfg.eval.batch_size,
        architecture=cfg.model.architecture,
    )


def out_of_fold_probabilities(
    dataset: Dataset,
    cfg: RunConfig | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    on_fold: FoldHook | None = None,
) -> tuple[np.ndarray, LabelSet]:
    """(N, C) probabilities of every row from a model trained on the other folds.

    Args:
        dataset: a single-label table.
        cfg: the model to train in each fold (default: the ``linear`` preset).
        folds: K of the stratified K-fold.
        seed: seeds the folds, each fold's dev split and its training.
        on_fold: called after each fold (a progress bar).

    Returns:
        The probabilities (rows in table order, columns in label order) and the labels.

    Raises:
        DataError: multi-label rows, one class only, or a label with fewer rows than folds.
        ConfigError: fewer than 2 folds, or settings that do not fit the model family.
    """
    from sklearn.model_selection import StratifiedKFold

    cfg = load_config("linear") if cfg is None else cfg
    check(cfg)
    labels = check_table(dataset, folds)
    targets = np.array([labels.index(ex.labels[0]) for ex in dataset.examples])
    probs = np.zeros((len(dataset), len(labels)), dtype=np.float64)
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (train_idx, held_idx) in enumerate(kfold.split(np.zeros(len(targets)), targets)):
        started = time.perf_counter()
        train = dataset.subset(train_idx, source=f"{dataset.source} [fold {k + 1} training]")
        with _seeded(seed + k):
            predictor = _fold_predictor(cfg, train, labels, seed + k)
        probs[held_idx] = predictor.predict_proba(dataset.subset(held_idx).texts)
        seconds = time.perf_counter() - started
        logger.info("fold %d/%d: %d rows held out, %.1fs", k + 1, folds, len(held_idx), seconds)
        if on_fold is not None:
            on_fold(k + 1, folds, seconds)
    return probs, labels


def find_label_issues(
    dataset: Dataset,
    cfg: RunConfig | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    on_fold: FoldHook | None = None,
) -> LabelIssues:
    """Rank the rows of ``dataset`` whose given label is probably wrong.

    Out-of-fold probabilities (:func:`out_of_fold_probabilities`) go to cleanlab's
    ``find_label_issues`` (confident learning, pruned by noise rate), which decides which
    rows are flagged; they are ranked by self-confidence, the lowest first.

    Args:
        dataset: a single-label table (:func:`fenlei.data.load_table`).
        cfg: the model trained in each fold (default: the ``linear`` preset).
        folds: K of the stratified K-fold (every label needs at least K rows).
        seed: seeds the folds and training; the same seed gives the same issues.
        on_fold: called after each fold with (folds done, folds, seconds).

    Returns:
        The flagged rows, most suspicious first, and every row's probabilities and quality.

    Raises:
        DataError: multi-label rows, one class only, or a label with fewer rows than folds
            (the message names the file).
        ConfigError: fewer than 2 folds, or settings that do not fit the model family.
        MissingExtraError: cleanlab is not installed (``pip install 'fenlei[audit]'``).

    Example:
        >>> issues = find_label_issues(load_table("train.csv"), folds=5, seed=0)  # doctest: +SKIP
        >>> issues.to_csv("issues.csv")  # doctest: +SKIP
    """
    try:
        from cleanlab.filter import find_label_issues as cleanlab_find
        from cleanlab.rank import get_label_quality_scores
    except ImportError as exc:
        raise MissingExtraError("cleanlab", "audit", "fenlei audit") from exc
    cfg = load_config("linear") if cfg is None else cfg
    started = time.perf_counter()
    probs, labels = out_of_fold_probabilities(dataset, cfg, folds=folds, seed=seed, on_fold=on_fold)
    given = np.array([labels.index(ex.labels[0]) for ex in dataset.examples])
    ranked = cleanlab_find(given, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    suggested = probs.argmax(axis=1)
    rows = tuple(
        LabelIssue(
            rank=rank,
            row=dataset.examples[i].source_row,
            text=dataset.examples[i].text,
            given=labels.names[given[i]],
            suggested=labels.names[suggested[i]],
            quality=float(quality[i]),
        )
        for rank, i in enumerate(np.asarray(ranked, dtype=int).tolist(), start=1)
    )
    return LabelIssues(
        source=dataset.source,
        labels=labels.names,
        rows=rows,
        examined=len(dataset),
        folds=folds,
        seed=seed,
        preset=cfg.preset,
        seconds=time.perf_counter() - started,
        probabilities=probs,
        quality=np.asarray(quality, dtype=np.float64),
    )
