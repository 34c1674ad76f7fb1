"""The train/dev/test data of one training, checked against each other.

:func:`prepare_splits` checks (and if needed makes) the splits that
:func:`fenlei.pipeline.train_run` trains and scores on.

Example:
    >>> splits = prepare_splits(cfg.data, load_table("train.csv", cfg.data))  # doctest: +SKIP
    >>> len(splits.labels)  # doctest: +SKIP
    5
"""

from __future__ import annotations

from dataclasses import dataclass

from fenlei.config import DataConfig
from fenlei.data import Dataset, DataSummary, LabelSet, check_splits, split, summarize
from fenlei.errors import DataError

__all__ = ["Splits", "prepare_splits"]


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
