"""Reading, validating and splitting labelled tables: everything before tokenization.

Enter through :func:`load_table` (CSV, TSV, JSONL, Parquet, optionally ``.gz``; the files are
read by :mod:`fenlei.tables`, whose :func:`iter_table_rows` is importable from here too), then
:func:`split` when only one file is given and :func:`check_splits` before training.
Every problem is a :class:`~fenlei.errors.DataError` naming the file, row and column;
row numbers are line numbers of the file (the header is line 1).
"""

from __future__ import annotations

import logging
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fenlei.config import DataConfig
from fenlei.errors import DataError
from fenlei.tables import iter_table_rows

__all__ = [
    "DataSummary",
    "Dataset",
    "Example",
    "LabelSet",
    "bundled_dataset_path",
    "check_splits",
    "check_text",
    "iter_table_rows",
    "iter_texts",
    "load_table",
    "split",
    "summarize",
]

logger = logging.getLogger(__name__)


# Python strings can hold lone UTF-16 surrogates (a JSON "\ud800" escape, an undecodable
# command-line byte kept by surrogateescape as U+DC80-U+DCFF); they are not characters, have
# no UTF-8 encoding, and the tokenizer refuses them with an error that names nothing.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str) -> str | None:
    """What makes ``text`` unusable as input text, or None when nothing does.

    The one check every boundary shares (tables, the Python API, the CLI, the service): a
    text must be encodable as UTF-8, so it may not hold a lone surrogate (U+D800-U+DFFF).
    Emptiness is not checked here; each boundary decides about that itself.

    Returns:
        None, or a phrase to put after the text's name, such as ``"contains U+D800 at
        character 0, ..."``.

    Example:
        >>> check_text("fine") is None
        True
        >>> check_text("bad \\ud800")[:30]
        'contains U+D800 at character 4'
    """
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return (
        f"contains U+{ord(found.group()):04X} at character {found.start()}, a lone surrogate "
        "(half of a UTF-16 pair) that is not a character and cannot be encoded as UTF-8"
    )


_SURROGATE_FIX = "; remove it, or write the whole pair (such as \\ud83d\\ude00 for one emoji)"


@dataclass(frozen=True)
class Example:
    """One validated row: its text, its label(s) and where it came from."""

    text: str
    labels: tuple[str, ...]
    source_row: int


@dataclass(frozen=True)
class Dataset:
    """An ordered collection of examples read from one source."""

    examples: tuple[Example, ...]
    source: str = "<memory>"
    multi_label: bool = False

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def texts(self) -> list[str]:
        """The texts, in order."""
        return [ex.text for ex in self.examples]

    @property
    def labels(self) -> list[tuple[str, ...]]:
        """The label tuples, in order."""
        return [ex.labels for ex in self.examples]

    @classmethod
    def from_lists(
        cls,
        texts: Sequence[str],
        labels: Sequence[str | Sequence[str]],
        *,
        source: str = "<memory>",
    ) -> Dataset:
        """Build a validated dataset from parallel lists (a label may be a list: multi-label).

        Raises:
            DataError: lengths differ, or a text or label is empty.
        """
        if len(texts) != len(labels):
            raise DataError(f"got {len(texts)} texts but {len(labels)} labels", path=source)
        # Lists of one label each (as Dataset.labels gives) are still a single-label task.
        multi = any(not isinstance(lab, str) and len(lab) != 1 for lab in labels)
        examples = []
        for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
            raw = [label] if isinstance(label, str) else list(label)
            for name, value in (("texts", text), *(("labels", lab) for lab in raw)):
                problem = check_text(value) if isinstance(value, str) else None
                if problem:
                    raise DataError(f"{name}[{i}] {problem}{_SURROGATE_FIX}", path=source)
            examples.append(_make_example(text, raw, i + 1, source, "text", "label", multi))
        return cls(tuple(examples), source, multi)

    def subset(self, indices: Iterable[int], *, source: str | None = None) -> Dataset:
        """The examples at ``indices``, in that order."""
        return Dataset(
            tuple(self.examples[i] for i in indices), source or self.source, self.multi_label
        )


@dataclass(frozen=True)
class LabelSet:
    """Label names in index order (sorted), fitted on the training split."""

    names: tuple[str, ...]
    multi_label: bool = False
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    @classmethod
    def fit(cls, dataset: Dataset) -> LabelSet:
        """The sorted set of labels seen in ``dataset``."""
        names = sorted({lab for ex in dataset.examples for lab in ex.labels})
        return cls(tuple(names), dataset.multi_label)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        """Index of a label name."""
        return self._index[name]

    def encode(self, labels: tuple[str, ...]) -> list[int]:
        """Indices of a label tuple."""
        return [self._index[name] for name in labels]


def bundled_dataset_path(split_name: str = "train") -> Path:
    """Path of the bundled customer-support intent dataset (``train``, ``dev`` or ``test``).

    Example:
        >>> bundled_dataset_path("dev").name
        'support_dev.csv'
    """
    if split_name not in {"train", "dev", "test"}:
        raise DataError(f"bundled split must be train, dev or test, not {split_name!r}")
    return Path(__file__).parent / "bundled" / f"support_{split_name}.csv"


def _cell_text(row: dict[str, Any], col: str, source: str, rowno: int) -> str:
    if col not in row:
        raise DataError(
            f"has no column {col!r}; columns are {sorted(row)}; choose one with --text-col",
            path=source,
            row=rowno,
            column=col,
        )
    value = row[col]
    text = "" if value is None else str(value)
    _refuse_surrogates(text, source, rowno, col)
    return text


def _refuse_surrogates(value: str, source: str, rowno: int, col: str) -> None:
    problem = check_text(value)
    if problem:
        raise DataError(f"{problem}{_SURROGATE_FIX}", path=source, row=rowno, column=col)


def _raw_labels(value: Any, multi_label: bool, sep: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    if isinstance(value, bool):
        return [str(value).lower()]
    text = str(value).strip()
    if multi_label:
        return [part.strip() for part in text.split(sep) if part.strip()]
    return [text] if text else []


def _make_example(
    text: str,
    labels: list[str],
    rowno: int,
    source: str,
    text_col: str,
    label_col: str | None,
    multi_label: bool,
) -> Example:
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            "text is empty or whitespace only; remove the row or fill in the text",
            path=source,
            row=rowno,
            column=text_col,
        )
    if label_col is not None and not labels:
        raise DataError(
            "label is missing; every training row needs a label",
            path=source,
            row=rowno,
            column=label_col,
        )
    if label_col is not None and len(labels) > 1 and not multi_label:
        raise DataError(
            f"has {len(labels)} labels but the task is single-label; use multi_label",
            path=source,
            row=rowno,
            column=label_col,
        )
    return Example(text=text, labels=tuple(dict.fromkeys(labels)), source_row=rowno)


def iter_texts(
    path: str | Path, cfg: DataConfig | None = None, *, skipped: list[DataError] | None = None
) -> Iterator[tuple[int, dict[str, Any], str]]:
    """Stream ``(row_number, row, text)`` from a table; labels are not needed (prediction).

    With a ``skipped`` list, a row whose text is empty or not valid text is appended there
    (its :class:`DataError`, naming file and row) and left out instead of stopping the
    stream; a missing column or an unreadable file still raises.

    Raises:
        DataError: as :func:`iter_table_rows`, or a missing text column or an empty text.
    """
    cfg = cfg or DataConfig()
    source = str(path)
    text_col = "+".join(cfg.text_cols)
    for rowno, row in iter_table_rows(path):
        for col in cfg.text_cols:
            if col not in row:
                _cell_text(row, col, source, rowno)  # raises: a file problem, never skipped
        try:
            parts = [_cell_text(row, col, source, rowno) for col in cfg.text_cols]
            text = cfg.text_joiner.join(p for p in parts if p.strip())
            text = _make_example(text, [], rowno, source, text_col, None, False).text
        except DataError as exc:
            if skipped is None:
                raise
            skipped.append(exc)
            continue
        yield rowno, row, text


def load_table(path: str | Path, cfg: DataConfig | None = None) -> Dataset:
    """Read and validate a labelled table.

    Args:
        path: a ``.csv``, ``.tsv``, ``.jsonl`` or ``.parquet`` file, optionally ``.gz``.
        cfg: which columns hold text and label(s); defaults to ``text`` and ``label``.

    Returns:
        The examples in file order.

    Raises:
        DataError: the file is unreadable, a column is missing, a text is empty or a label
            is missing; the message names the file, row and column.

    Example:
        >>> ds = load_table(bundled_dataset_path("dev"))
        >>> ds.examples[0].labels  # doctest: +SKIP
        ('refund',)
    """
    cfg = cfg or DataConfig()
    source = str(path)
    text_col = "+".join(cfg.text_cols)
    examples = []
    for rowno, row in iter_table_rows(path):
        parts = [_cell_text(row, col, source, rowno) for col in cfg.text_cols]
        if cfg.label_col not in row:
            raise DataError(
                f"has no column {cfg.label_col!r}; columns are {sorted(row)}; "
                "choose one with --label-col",
                path=source,
                row=rowno,
                column=cfg.label_col,
            )
        labels = _raw_labels(row[cfg.label_col], cfg.multi_label, cfg.label_sep)
        for label in labels:
            _refuse_surrogates(label, source, rowno, cfg.label_col)
        text = cfg.text_joiner.join(p for p in parts if p.strip())
        examples.append(
            _make_example(text, labels, rowno, source, text_col, cfg.label_col, cfg.multi_label)
        )
    if not examples:
        raise DataError("has no data rows", path=source)
    return Dataset(tuple(examples), source, cfg.multi_label)


def check_splits(
    train: Dataset, dev: Dataset | None = None, test: Dataset | None = None
) -> LabelSet:
    """Check that training can learn every label it will be judged on; return the label set.

    Raises:
        DataError: fewer than two classes in train, or a dev/test label absent from train.
    """
    labels = LabelSet.fit(train)
    if len(labels) < 2 and not train.multi_label:
        only = labels.names[0] if labels.names else "none"
        raise DataError(
            f"only one class ({only!r}) in the training data; a classifier needs at least two",
            path=train.source,
        )
    for other in (dev, test):
        if other is None:
            continue
        for ex in other.examples:
            unknown = [lab for lab in ex.labels if lab not in labels]
            if unknown:
                raise DataError(
                    f"label {unknown[0]!r} never occurs in the training data "
                    f"({train.source}); add training rows for it or drop this row",
                    path=other.source,
                    row=ex.source_row,
                )
    return labels


def _strata(dataset: Dataset) -> list[str] | None:
    keys = ["|".join(sorted(ex.labels)) for ex in dataset.examples]
    counts = Counter(keys)
    if min(counts.values()) < 2:
        logger.warning("some label combinations occur once; splitting without stratification")
        return None
    return keys


def split(
    dataset: Dataset, *, dev_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 13
) -> tuple[Dataset, Dataset, Dataset | None]:
    """Stratified, seeded train/dev/test split of one dataset (test is None at fraction 0).

    Example:
        >>> train, dev, test = split(load_table(bundled_dataset_path("dev")), seed=1)
    """
    from sklearn.model_selection import train_test_split

    indices = list(range(len(dataset)))
    held = dev_fraction + test_fraction
    try:
        train_idx, rest_idx = train_test_split(
            indices, test_size=held, random_state=seed, stratify=_strata(dataset)
        )
        if test_fraction == 0:
            dev_idx, test_idx = rest_idx, []
        else:
            rest = dataset.subset(rest_idx)
            dev_pos, test_pos = train_test_split(
                list(range(len(rest_idx))),
                test_size=test_fraction / held,
                random_state=seed,
                stratify=_strata(rest),
            )
            dev_idx = [rest_idx[i] for i in dev_pos]
            test_idx = [rest_idx[i] for i in test_pos]
    except ValueError as exc:
        raise DataError(f"cannot split {len(dataset)} rows: {exc}", path=dataset.source) from exc
    name = dataset.source
    test = dataset.subset(test_idx, source=f"{name} [test split]") if test_idx else None
    return (
        dataset.subset(train_idx, source=f"{name} [train split]"),
        dataset.subset(dev_idx, source=f"{name} [dev split]"),
        test,
    )


@dataclass(frozen=True)
class DataSummary:
    """What a user should see before training: sizes, label counts, text lengths."""

    source: str
    rows: int
    label_counts: dict[str, int]
    chars_min: int
    chars_median: float
    chars_p95: float
    chars_max: int


def summarize(dataset: Dataset) -> DataSummary:
    """Rows, label counts and text-length statistics (characters) of a dataset."""
    lengths = sorted(len(t) for t in dataset.texts)
    counts = Counter(lab for ex in dataset.examples for lab in ex.labels)
    p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
    return DataSummary(
        source=dataset.source,
        rows=len(dataset),
        label_counts=dict(sorted(counts.items())),
        chars_min=lengths[0],
        chars_median=float(statistics.median(lengths)),
        chars_p95=float(p95),
        chars_max=lengths[-1],
    )
