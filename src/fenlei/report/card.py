"""The report's data card and model card: what the data is, and what the model is for.

:func:`data_card` counts rows per split and label, the text lengths, the share of Chinese and
English texts, duplicate texts and dev/test texts that also occur in train; :func:`model_card`
writes the short intended-use, limits and licence section from the run's settings and data.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fenlei.config import RunConfig
from fenlei.data import Dataset
from fenlei.datasets import REGISTRY

__all__ = [
    "DataCard",
    "LanguageMix",
    "SplitCard",
    "data_card",
    "language_of",
    "model_card",
    "normalise",
    "source_table",
]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_SPLIT_SUFFIX = re.compile(r" \[(?:train|dev|test) split\]$")
MAX_LABEL_ROWS = 60  # labels listed in the per-label table; the rest are summed


def language_of(text: str) -> str:
    """``"zh"`` when a text has more Chinese characters than Latin words, ``"en"`` when it
    has more Latin words, else ``"other"`` (a Chinese character carries about a word)."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    if cjk > latin:
        return "zh"
    return "en" if latin > cjk else "other"


def normalise(text: str) -> str:
    """The form duplicates are found in: NFKC, case-folded, runs of space as one."""
    # str.split() splits on what re's \s matches, 4x faster than re.sub(r"\s+", " ", ...)
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


@dataclass(frozen=True)
class LanguageMix:
    """Shares of texts that are mostly Chinese, mostly English, or neither."""

    zh: float
    en: float
    other: float

    @property
    def lang(self) -> str:
        """The BCP 47 tag of the page: the language of most texts (``zh`` or ``en``)."""
        return "zh" if self.zh > self.en else "en"


@dataclass(frozen=True)
class SplitCard:
    """One split: rows, rows per label, text lengths, duplicates and overlap with train."""

    name: str
    source: str
    rows: int
    labels: dict[str, int]
    chars_median: float
    chars_p95: float
    chars_max: int
    languages: LanguageMix
    duplicates: int  # rows whose normalised text occurs earlier in the same split
    in_train: int | None  # rows whose normalised text occurs in train (None for train)


@dataclass(frozen=True)
class DataCard:
    """The data card: one :class:`SplitCard` per split and what they share."""

    splits: list[SplitCard]
    languages: LanguageMix
    lengths: dict[str, np.ndarray] = field(repr=False)  # split -> text lengths (characters)

    def label_table(self) -> tuple[list[str], list[list[int]], int]:
        """(labels, rows of counts per split, labels left out) for the per-label table:
        the most frequent :data:`MAX_LABEL_ROWS` labels over all splits."""
        total: Counter[str] = Counter()
        for s in self.splits:
            total.update(s.labels)
        names = [name for name, _ in total.most_common(MAX_LABEL_ROWS)]
        rows = [[s.labels.get(name, 0) for s in self.splits] for name in names]
        return names, rows, len(total) - len(names)


def _mix(languages: Sequence[str]) -> LanguageMix:
    counts = Counter(languages)
    n = max(len(languages), 1)
    return LanguageMix(counts["zh"] / n, counts["en"] / n, counts["other"] / n)


def data_card(splits: Mapping[str, Dataset]) -> DataCard:
    """Describe the splits (``"train"``, ``"dev"``, ``"test"`` or a table's name).

    Example:
        >>> data_card({"train": train, "dev": dev}).languages.lang  # doctest: +SKIP
        'en'
    """
    train = splits.get("train")
    train_keys = [normalise(t) for t in train.texts] if train is not None else None
    seen = set(train_keys) if train_keys is not None else None
    cards, every, lengths = [], [], {}
    for name, data in splits.items():
        texts = data.texts
        keys = train_keys if name == "train" and train_keys else [normalise(t) for t in texts]
        langs = [language_of(t) for t in texts]
        every.extend(langs)
        n_chars = np.array([len(t) for t in texts], dtype=np.int64)
        lengths[name] = n_chars
        labels = Counter(lab for ex in data.examples for lab in ex.labels)
        cards.append(
            SplitCard(
                name=name,
                source=data.source,
                rows=len(data),
                labels=dict(labels.most_common()),
                chars_median=float(np.median(n_chars)) if len(n_chars) else 0.0,
                chars_p95=float(np.percentile(n_chars, 95)) if len(n_chars) else 0.0,
                chars_max=int(n_chars.max()) if len(n_chars) else 0,
                languages=_mix(langs),
                duplicates=len(keys) - len(set(keys)),
                in_train=None
                if name == "train" or seen is None
                else sum(key in seen for key in keys),
            )
        )
    return DataCard(cards, _mix(every), lengths)


def source_table(source: str) -> str:
    """The table a split was read from (a split made by fenlei names its parent table)."""
    return _SPLIT_SUFFIX.sub("", source)


def data_licence(sources: Sequence[str]) -> str | None:
    """The licence of the data, when a table came from ``fenlei datasets get`` (its
    ``source.json``) or sits in a folder named after a registered dataset."""
    for source in sources:
        folder = Path(source_table(source)).parent
        meta = folder / "source.json"
        try:
            licence = json.loads(meta.read_text("utf-8")).get("licence")
        except (OSError, ValueError, AttributeError):
            licence = None
        if isinstance(licence, str) and licence:
            return licence
        known = REGISTRY.get(folder.name)
        if known is not None:
            return f"{known.title}: {known.licence}"
    return None


def model_card(cfg: RunConfig, labels: Sequence[str], card: DataCard | None) -> dict[str, Any]:
    """The model card's text: intended use, limits and the data's licence.

    Example:
        >>> model_card(cfg, ["neg", "pos"], card)["intended_use"]  # doctest: +SKIP
    """
    kind = "several labels per text" if cfg.data.multi_label else "one label per text"
    shown = ", ".join(labels[:12]) + (f" and {len(labels) - 12} more" if len(labels) > 12 else "")
    languages = "texts"
    limits = [
        f"Texts longer than {cfg.encoder.max_length} tokens are cut "
        f"({cfg.encoder.truncation}); what is cut off is not read.",
        "It only knows the labels it was trained on: a text about something else still gets "
        "one of them (see the calibration section for how far its confidence can be trusted).",
        "Scores were measured on the splits below; texts from another source, period or "
        "channel may score lower (fenlei serve watches for drift).",
    ]
    licence = None
    if card is not None:
        mix = card.languages
        shares = (("Chinese", mix.zh), ("English", mix.en))
        parts = [f"{share:.0%} {name}" for name, share in shares]
        languages = f"texts ({', '.join(parts)} in the data)"
        if mix.zh < 0.05 or mix.en < 0.05:
            lacking = "Chinese" if mix.zh < 0.05 else "English"
            limits.insert(
                0,
                f"Few or no {lacking} texts were seen in training; do not use it "
                f"on {lacking} text without checking.",
            )
        licence = data_licence([s.source for s in card.splits])
    return {
        "intended_use": f"Assigns {kind} to {languages}, out of {len(labels)} labels: {shown}. "
        f"Model family {cfg.model.architecture} (preset {cfg.preset}).",
        "limits": limits,
        "licence": licence,
    }
