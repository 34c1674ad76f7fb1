"""Batch prediction on Ray Data: a big table through a pool of predictor actors.

:func:`predict_on_ray` reads the table with Ray Data (CSV, TSV, JSONL or Parquet, gzip
too), runs ``map_batches`` with one :class:`~fenlei.predict.ServablePredictor` loaded per
actor (``workers`` actors), and streams the results back in input order (Ray Data's
``preserve_order``) into one Parquet or CSV file: ``id`` (the input row's position, from 0),
``predicted_label``, ``score`` and ``p_<label>`` per label. The texts never reach the
driver and its memory stays flat whatever the file size; the file appears only when
complete.

Example:
    >>> options = RayOptions(workers=2)
    >>> predict_on_ray("runs/x", "big.csv", "out.parquet", options=options)  # doctest: +SKIP
    1000000
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fenlei.artifact import MANIFEST, atomic_write
from fenlei.config import DataConfig
from fenlei.decision import decide
from fenlei.errors import ArtifactError, ConfigError, DataError
from fenlei.loader import open_predictor
from fenlei.runtime import configure_torch, limit_tokenizer_threads
from fenlei.scale.cluster import RayOptions, connect, user_error

__all__ = ["OUTPUT_FORMATS", "PredictBatch", "predict_on_ray"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".parquet", ".csv")
BATCH_ROWS = 1024


class PredictBatch:
    """What each actor holds: one predictor, loaded once; called with a batch of rows.

    Rows whose text is missing or blank get an empty ``predicted_label`` and NaN scores
    instead of failing a job of millions of rows; :func:`predict_on_ray` counts them.
    """

    def __init__(self, run_dir: str, text_cols: Sequence[str], joiner: str, threads: int):
        configure_torch(threads=threads)
        limit_tokenizer_threads(threads)
        self.predictor = open_predictor(run_dir, threads=threads)
        self.text_cols, self.joiner = tuple(text_cols), joiner

    def texts(self, batch: dict[str, np.ndarray]) -> list[str]:
        """The batch's texts, its text columns joined as ``fenlei predict`` joins them."""
        columns = [batch[col] for col in self.text_cols]
        parts = [["" if v is None else str(v) for v in col] for col in columns]
        return [self.joiner.join(p for p in row if p.strip()) for row in zip(*parts, strict=True)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``predicted_label``, ``score`` and ``p_<label>`` for every row of ``batch``."""
        texts = self.texts(batch)
        ok = np.array([bool(t.strip()) for t in texts], dtype=bool)
        labels = self.predictor.labels
        probs = np.full((len(texts), len(labels)), np.nan, dtype=np.float32)
        chosen = np.full(len(texts), "", dtype=object)
        score = np.full(len(texts), np.nan, dtype=np.float32)
        if ok.any():
            good = self.predictor.predict_proba(
                [t for t, keep in zip(texts, ok, strict=True) if keep]
            )
            probs[ok] = good
            rule = self.predictor.rule
            decided = decide(good, labels, rule)
            chosen[ok] = [
                "|".join(d.labels) if rule.multi_label or d.abstained else d.label for d in decided
            ]
            score[ok] = [d.score for d in decided]
        out: dict[str, np.ndarray] = {"predicted_label": chosen.astype(str), "score": score}
        out.update({f"p_{name}": probs[:, i] for i, name in enumerate(labels)})
        return out


def _format(path: Path) -> tuple[str, str | None]:
    """(table format, compression) of an input path, from its suffixes."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = "gzip" if suffixes and suffixes[-1] == ".gz" else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1].lstrip(".") if suffixes else ""
    if fmt not in ("csv", "tsv", "jsonl", "json", "parquet"):
        raise DataError(
            "is not .csv, .tsv, .jsonl or .parquet (optionally .gz); rename or convert it",
            path=str(path),
        )
    return fmt, compression


def _read(path: Path, text_cols: Sequence[str]) -> Any:
    """A Ray Dataset over ``path``; its read tasks reserve no CPU (the actors hold them)."""
    import pyarrow as pa
    import ray.data
    from pyarrow import csv as pa_csv

    fmt, compression = _format(path)
    stream = {"compression": compression} if compression else {}
    common: dict[str, Any] = {"num_cpus": 0, "file_extensions": None}
    if fmt == "parquet":
        return ray.data.read_parquet(str(path), num_cpus=0, columns=list(text_cols))
    if fmt in ("jsonl", "json"):
        return ray.data.read_json(
            str(path), lines=True, arrow_open_stream_args=stream, **common
        ).select_columns(list(text_cols))
    return ray.data.read_csv(
        str(path),
        arrow_open_stream_args=stream,
        parse_options=pa_csv.ParseOptions(
            delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types={c: pa.string() for c in text_cols}, include_columns=list(text_cols)
        ),
        **common,
    )


def _write(
    batches: Any, tmp: Path, suffix: str, progress: Callable[[int], None] | None
) -> tuple[int, int]:
    """Write the result batches (pyarrow tables, in input order) with an ``id`` column;
    returns (rows, rows without text)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    writer: Any = None
    rows = blank = 0
    try:
        for table in batches:
            ids = pa.array(np.arange(rows, rows + table.num_rows, dtype=np.int64))
            table = table.add_column(0, "id", ids)
            if writer is None:
                writer = (
                    pq.ParquetWriter(tmp, table.schema)
                    if suffix == ".parquet"
                    else pa_csv.CSVWriter(tmp, table.schema)
                )
            writer.write_table(table)
            rows += table.num_rows
            blank += int(pc.sum(pc.equal(table["predicted_label"], "")).as_py() or 0)
            if progress is not None:
                progress(rows)
    finally:
        if writer is not None:
            writer.close()
    return rows, blank


def predict_on_ray(
    run_dir: str | Path,
    in_path: str | Path,
    out_path: str | Path,
    *,
    options: RayOptions,
    data: DataConfig | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Predict every row of a table on Ray Data with ``options.workers`` predictor actors.

    Args:
        run_dir: a run folder every node can read (one model or an ensemble).
        in_path: the table (every node must see it at this path).
        out_path: ``.parquet`` or ``.csv``; written here by the driver, in input order.
        options: the cluster and the number of actors (``workers``, ``cpus_per_worker``).
        data: which columns hold the text (default: ``text``).
        batch_rows: rows per ``map_batches`` call.
        progress: called with the number of rows written so far.

    Returns:
        (rows written, rows without text: empty label, NaN scores).

    Raises:
        ConfigError: an output that is not .parquet or .csv; an unreachable cluster.
        DataError: an unreadable table or a missing text column.
        ArtifactError: a run folder that does not load.
    """
    out, source = Path(out_path), Path(in_path).resolve()
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ConfigError(f"--out {out} must end in .parquet or .csv (the Ray output formats)")
    if not source.is_file():
        raise DataError("does not exist or is not a file", path=str(in_path))
    if not (Path(run_dir) / MANIFEST).is_file():  # the actors verify and load it; the driver
        raise ArtifactError(  # never holds the model, so its memory stays flat
            f"{run_dir} is not a run folder (no {MANIFEST}); give a folder fenlei train wrote"
        )
    data = data or DataConfig()
    with connect(options):
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the ids follow the input order
        context.enable_progress_bars = False  # the CLI shows its own
        results = _read(source, data.text_cols).map_batches(
            PredictBatch,
            fn_constructor_args=(
                str(Path(run_dir).resolve()),
                data.text_cols,
                data.text_joiner,
                max(1, int(options.cpus_per_worker)),
            ),
            batch_size=batch_rows,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=options.cpus_per_worker,
        )
        counts = (0, 0)

        def write(tmp: Path) -> None:
            nonlocal counts
            batches = results.iter_batches(batch_size=None, batch_format="pyarrow")
            counts = _write(batches, tmp, suffix, progress)

        try:
            atomic_write(out, write)
        except Exception as exc:
            if (mistake := user_error(exc)) is not None:
                raise mistake from None
            raise
    return counts
