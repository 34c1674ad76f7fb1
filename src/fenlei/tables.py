"""Reading table files into raw rows: CSV, TSV, JSONL and Parquet, optionally ``.gz``.

:func:`iter_table_rows` streams ``(row_number, {column: value})``; row numbers are line
numbers of the file (the header is line 1; Parquet rows count from 1). Every problem of the
file itself (unknown type, unreadable, undecodable bytes, a ragged or malformed row, a column
named twice) is a :class:`~fenlei.errors.DataError` naming the file and row.
:mod:`fenlei.data` validates the rows into examples.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from fenlei.errors import DataError

__all__ = ["iter_table_rows"]

_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


def _table_format(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(
            "unknown file type; use .csv, .tsv, .jsonl or .parquet (optionally .gz)",
            path=str(path),
        )
    return fmt, compressed


def _open_binary(path: Path, compressed: bool) -> IO[bytes]:
    try:
        if compressed:
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return path.open("rb")
    except FileNotFoundError as exc:
        raise DataError("file does not exist", path=str(path)) from exc
    except OSError as exc:
        raise DataError(f"cannot open file: {exc.strerror or exc}", path=str(path)) from exc


def _decoded_lines(raw: IO[bytes], path: Path) -> Iterator[str]:
    # Decode line by line so an undecodable byte is reported with its line number.
    lineno = 0
    try:
        for lineno, line in enumerate(raw, start=1):
            try:
                yield line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"byte {line[exc.start]:#04x} at position {exc.start} is not valid UTF-8; "
                    "save the file as UTF-8 (for example: iconv -f GBK -t UTF-8)",
                    path=str(path),
                    row=lineno,
                ) from exc
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        raise DataError(
            f"file is truncated or not valid gzip after line {lineno}: {exc}", path=str(path)
        ) from exc


def _check_unique_columns(names: Sequence[str], path: Path, *, row: int | None) -> None:
    # A dict keyed by column name would silently keep only the last of two same-named columns.
    # Unnamed columns (a spreadsheet's trailing commas) can never be chosen, so they may repeat.
    first: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if name in first and name:
            raise DataError(
                f"appears twice in the header (columns {first[name]} and {number}); "
                "rename or remove one",
                path=str(path),
                row=row,
                column=name,
            )
        first[name] = number


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return obj


@functools.cache
def _allow_long_fields() -> None:
    """Lift Python csv's 128 KiB field limit (process-wide) to the largest the platform allows.

    Long documents are a use case, and the limit only guards against runaway memory, which
    a file of that size costs anyway. ``sys.maxsize`` overflows a C long on some platforms
    (64-bit Windows), hence the halving.
    """
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _iter_delimited(
    path: Path, compressed: bool, delimiter: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    _allow_long_fields()
    with _open_binary(path, compressed) as raw:
        reader = csv.reader(_decoded_lines(raw, path), delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError("file is empty; expected a header row", path=str(path))
            header = [h.strip() for h in header]
            _check_unique_columns(header, path, row=1)
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"has {len(row)} fields but the header has {len(header)}; "
                        "quote fields that contain the delimiter",
                        path=str(path),
                        row=reader.line_num,
                    )
                yield reader.line_num, dict(zip(header, row, strict=True))
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", path=str(path), row=reader.line_num) from exc


def _iter_jsonl(path: Path, compressed: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_binary(path, compressed) as raw:
        for lineno, line in enumerate(_decoded_lines(raw, path), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line, object_pairs_hook=_unique_keys)
            except _DuplicateKeyError as exc:
                raise DataError(
                    "the key appears twice in this object; keep one",
                    path=str(path),
                    row=lineno,
                    column=exc.key,
                ) from exc
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON: {exc.msg}", path=str(path), row=lineno) from exc
            except ValueError as exc:  # the only other failure: Python's cap on integer digits
                raise DataError(
                    f"has a number of more than {sys.get_int_max_str_digits():,} digits; "
                    "write it as a JSON string (in quotes)",
                    path=str(path),
                    row=lineno,
                ) from exc
            if not isinstance(obj, dict):
                raise DataError("each line must be a JSON object", path=str(path), row=lineno)
            yield lineno, obj


def _iter_parquet(path: Path, compressed: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if compressed:
            with gzip.open(path, "rb") as fh:
                source: Path | io.BytesIO = io.BytesIO(fh.read())
        else:
            source = path
        with pq.ParquetFile(source) as parquet:
            _check_unique_columns(parquet.schema_arrow.names, path, row=None)
            table = parquet.read()
    except FileNotFoundError as exc:
        raise DataError("file does not exist", path=str(path)) from exc
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=str(path)) from exc
    rowno = 0
    for batch in table.to_batches():
        for row in batch.to_pylist():
            rowno += 1
            yield rowno, row


def iter_table_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(row_number, {column: value})`` from a CSV/TSV/JSONL/Parquet file (or .gz).

    Raises:
        DataError: unknown type, unreadable file, undecodable bytes, ragged or malformed row.
    """
    p = Path(path)
    fmt, compressed = _table_format(p)
    if fmt == "csv":
        return _iter_delimited(p, compressed, ",")
    if fmt == "tsv":
        return _iter_delimited(p, compressed, "\t")
    if fmt == "jsonl":
        return _iter_jsonl(p, compressed)
    return _iter_parquet(p, compressed)
