"""Explain every text of a table into a JSONL file (``fenlei explain RUN --file F --out F``).

Texts are read row by row (:func:`fenlei.data.iter_texts`) and explained in chunks by any
:class:`Explainer` — a :class:`~fenlei.predict.Predictor` or an ensemble; a chunk that fails
is explained again text by text, so the error names its row. The file appears only when
complete (:func:`fenlei.files.atomic_write`).

Example:
    >>> explain_file(predictor, "reviews.csv", "why.jsonl")  # doctest: +SKIP
    1200
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from fenlei.errors import DataError
from fenlei.explain import Explanation
from fenlei.files import atomic_write

if TYPE_CHECKING:
    from fenlei.config import DataConfig

__all__ = ["Explainer", "explain_file"]


class Explainer(Protocol):
    """Anything that explains texts: a :class:`~fenlei.predict.Predictor`, an ensemble."""

    def explain(self, texts: Sequence[str], *, target: str | None = None) -> list[Explanation]:
        """One explanation per text (see :func:`explain`)."""
        ...


def explain_file(
    explainer: Explainer,
    in_path: str | Path,
    out_path: str | Path,
    cfg: DataConfig | None = None,
    *,
    target: str | None = None,
    chunk_size: int = 64,
) -> int:
    """Explain every text of a table into a JSONL file: one :meth:`Explanation.to_json` per
    line, with the table's ``row``. The file appears only when complete.

    Returns:
        The number of texts explained.

    Raises:
        DataError: the table is unreadable, a text is empty, or one cannot be explained
            (names the file and row), or ``target`` is not a label.

    Example:
        >>> explain_file(predictor, "reviews.csv", "why.jsonl")  # doctest: +SKIP
        1200
    """
    from fenlei.data import iter_texts

    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with tmp.open("w", encoding="utf-8") as fh:
            chunk: list[tuple[int, str]] = []
            for row, _, text in iter_texts(in_path, cfg):
                chunk.append((row, text))
                if len(chunk) == chunk_size:
                    count += _explain_rows(explainer, chunk, fh, str(in_path), target)
                    chunk = []
            count += _explain_rows(explainer, chunk, fh, str(in_path), target)

    atomic_write(Path(out_path), write)
    return count


def _explain_rows(
    explainer: Explainer, rows: list[tuple[int, str]], fh: IO[str], path: str, target: str | None
) -> int:
    if not rows:
        return 0
    try:
        explanations = explainer.explain([text for _, text in rows], target=target)
    except DataError:
        explanations = [_explain_row(explainer, row, text, path, target) for row, text in rows]
    for (row, _), e in zip(rows, explanations, strict=True):
        fh.write(json.dumps({"row": row, **e.to_json()}, ensure_ascii=False) + "\n")
    return len(rows)


def _explain_row(explainer: Explainer, row: int, text: str, path: str, target: str | None) -> Any:
    """One row alone, so that a failure names its row."""
    try:
        return explainer.explain([text], target=target)[0]
    except DataError as exc:
        if target is not None and "target label" in str(exc):
            raise
        raise DataError(f"cannot explain this text: {exc}", path=path, row=row) from exc
