"""Reading, validating and splitting labelled tables (fenlei.data).

Every bad input must be a DataError that names the file and, where it applies, the row
(file line number, header = line 1) and the column.
"""

from __future__ import annotations

import gzip
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fenlei.config import DataConfig
from fenlei.data import (
    Dataset,
    Example,
    LabelSet,
    bundled_dataset_path,
    check_splits,
    check_text,
    iter_texts,
    load_table,
    split,
    summarize,
)
from fenlei.errors import DataError, FenleiError

ROWS = [("the parcel is late", "delivery"), ("我要退款", "refund"), ("reset my password", "login")]


# ---------------------------------------------------------------- helpers


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[tuple[str, str]], sep: str = ",") -> Path:
    lines = [f"text{sep}label", *(f"{t}{sep}{lab}" for t, lab in rows)]
    return write_text(path, "\n".join(lines) + "\n")


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(body.encode("utf-8")))
    else:
        write_text(path, body)
    return path


def data_error(path: Path, cfg: DataConfig | None = None) -> DataError:
    """Load ``path`` expecting a DataError; the message must always name the file."""
    with pytest.raises(DataError) as info:
        load_table(path, cfg)
    assert str(path) in str(info.value)
    return info.value


def balanced(n_per_label: dict[str, int]) -> Dataset:
    texts, labels = [], []
    for label, n in n_per_label.items():
        for i in range(n):
            texts.append(f"{label} text number {i}")
            labels.append(label)
    return Dataset.from_lists(texts, labels, source="mem.csv")


# ---------------------------------------------------------------- reading formats


def assert_rows(ds: Dataset, path: Path) -> None:
    assert ds.texts == [t for t, _ in ROWS]
    assert ds.labels == [(lab,) for _, lab in ROWS]
    assert ds.source == str(path)
    assert not ds.multi_label
    assert len(ds) == 3


def test_load_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ROWS)
    ds = load_table(path)
    assert_rows(ds, path)
    assert [ex.source_row for ex in ds.examples] == [2, 3, 4]


def test_load_csv_accepts_str_path_quotes_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes('\ufefftext,label\n"hello, world",a\n"say ""hi""",b\n'.encode())
    ds = load_table(str(path))
    assert ds.texts == ["hello, world", 'say "hi"']
    assert ds.labels == [("a",), ("b",)]


def test_load_tsv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.tsv", ROWS, sep="\t")
    assert_rows(load_table(path), path)


def test_load_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": lab} for t, lab in ROWS])
    ds = load_table(path)
    assert_rows(ds, path)
    assert [ex.source_row for ex in ds.examples] == [1, 2, 3]


def test_load_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "", "label": "y"}\n'
    )
    err = data_error(path)
    assert err.row == 3


def test_load_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    table = pa.table({"text": [t for t, _ in ROWS], "label": [lab for _, lab in ROWS]})
    pq.write_table(table, path)
    assert_rows(load_table(path), path)


def test_load_csv_gz(tmp_path: Path) -> None:
    plain = write_csv(tmp_path / "plain.csv", ROWS)
    path = tmp_path / "d.csv.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    assert_rows(load_table(path), path)


def test_load_jsonl_gz(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl.gz", [{"text": t, "label": lab} for t, lab in ROWS])
    assert_rows(load_table(path), path)


# A 1 MB cell: Python's csv refuses fields over 128 KiB unless told otherwise.
LONG = ("a long document " * 65536)[:-1]


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.csv.gz", "d.jsonl", "d.jsonl.gz"])
def test_a_one_megabyte_text_loads(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if ".jsonl" in name:
        write_jsonl(path, [{"text": LONG, "label": "a"}, {"text": "short", "label": "b"}])
    else:
        sep = "\t" if ".tsv" in name else ","
        body = f"text{sep}label\n{LONG}{sep}a\nshort{sep}b\n".encode()
        path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    assert load_table(path).texts == [LONG, "short"]
    assert [text for _, _, text in iter_texts(path)] == [LONG, "short"]


def test_a_one_megabyte_text_loads_from_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [LONG, "short"], "label": ["a", "b"]}), path)
    assert load_table(path).texts == [LONG, "short"]
    assert [text for _, _, text in iter_texts(path)] == [LONG, "short"]


def test_a_number_too_long_for_python_is_a_data_error(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.jsonl", '{"text": "a", "label": ' + "7" * 5000 + "}\n")
    err = data_error(path)
    assert err.row == 1 and "JSON string" in str(err)


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "D.CSV", ROWS)
    assert len(load_table(path)) == 3


def test_two_text_columns_are_joined(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "d.csv",
        "title,body,label\nLate parcel,Where is it?,delivery\nRefund,,refund\n,只有正文,other\n",
    )
    ds = load_table(path, DataConfig(text_cols=["title", "body"]))
    # Empty parts are skipped, so no stray joiner is left behind.
    assert ds.texts == ["Late parcel Where is it?", "Refund", "只有正文"]


def test_text_joiner_is_configurable(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "title,body,label\nA,B,x\n")
    ds = load_table(path, DataConfig(text_cols=["title", "body"], text_joiner=" | "))
    assert ds.texts == ["A | B"]


def test_custom_label_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "content,intent\nhello,greet\n")
    ds = load_table(path, DataConfig(text_cols=["content"], label_col="intent"))
    assert ds.labels == [("greet",)]


def test_multi_label_from_jsonl_list(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "late and broken", "label": ["delivery", "complaint"]},
            {"text": "thanks", "label": ["praise"]},
            {"text": "dup", "label": ["a", "a", " b "]},
        ],
    )
    ds = load_table(path, DataConfig(multi_label=True))
    assert ds.multi_label
    assert ds.labels == [("delivery", "complaint"), ("praise",), ("a", "b")]


def test_multi_label_from_csv_cell_with_label_sep(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "d.csv", "text,label\nlate and broken,delivery;complaint\nthanks, praise \n"
    )
    ds = load_table(path, DataConfig(multi_label=True, label_sep=";"))
    assert ds.labels == [("delivery", "complaint"), ("praise",)]


def test_multi_label_default_separator_is_pipe(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "text,label\nlate and broken,delivery|complaint\n")
    ds = load_table(path, DataConfig(multi_label=True))
    assert ds.labels == [("delivery", "complaint")]


def test_single_label_task_rejects_a_label_list(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": ["a", "b"]}])
    err = data_error(path)
    assert err.row == 1
    assert err.column == "label"
    assert "single-label" in str(err)


def test_multi_label_label_set_and_check_splits(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": ["y"]}],
    )
    ds = load_table(path, DataConfig(multi_label=True))
    labels = check_splits(ds)
    assert labels.names == ("x", "y")
    assert labels.multi_label
    assert labels.encode(("y", "x")) == [1, 0]


# ---------------------------------------------------------------- in-memory datasets


def test_dataset_from_lists() -> None:
    ds = Dataset.from_lists(["a", "b"], ["x", "y"])
    assert ds.texts == ["a", "b"]
    assert ds.labels == [("x",), ("y",)]
    assert ds.source == "<memory>"
    assert not ds.multi_label
    assert ds.examples[0] == Example(text="a", labels=("x",), source_row=1)


def test_dataset_from_lists_multi_label() -> None:
    ds = Dataset.from_lists(["a", "b"], [["x", "y"], ["y"]])
    assert ds.multi_label
    assert ds.labels == [("x", "y"), ("y",)]


def test_dataset_from_lists_length_mismatch() -> None:
    with pytest.raises(DataError, match=r"2 texts but 1 labels"):
        Dataset.from_lists(["a", "b"], ["x"])


def test_dataset_from_lists_empty_text_names_row() -> None:
    with pytest.raises(DataError, match=r"^mem, row 2, column 'text': text is empty"):
        Dataset.from_lists(["a", "  "], ["x", "y"], source="mem")


def test_dataset_is_frozen() -> None:
    ds = Dataset.from_lists(["a"], ["x"])
    with pytest.raises(AttributeError):
        ds.source = "other"  # type: ignore[misc]


def test_label_set_is_sorted_and_indexes() -> None:
    labels = LabelSet.fit(Dataset.from_lists(["a", "b", "c"], ["zeta", "alpha", "zeta"]))
    assert labels.names == ("alpha", "zeta")
    assert len(labels) == 2
    assert "zeta" in labels
    assert "beta" not in labels
    assert labels.index("zeta") == 1
    assert labels.encode(("alpha",)) == [0]


# ---------------------------------------------------------------- split and summarize


def test_split_sizes_no_overlap_and_stratified() -> None:
    ds = balanced({"a": 50, "b": 30, "c": 20})
    train, dev, test = split(ds, dev_fraction=0.1, test_fraction=0.1, seed=7)
    assert test is not None
    assert (len(train), len(dev), len(test)) == (80, 10, 10)
    rows = [{ex.source_row for ex in part.examples} for part in (train, dev, test)]
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]
    assert rows[0] | rows[1] | rows[2] == set(range(1, 101))
    # Label proportions are kept exactly (50/30/20 of 100 divides evenly).
    assert Counter(lab for (lab,) in train.labels) == {"a": 40, "b": 24, "c": 16}
    assert Counter(lab for (lab,) in dev.labels) == {"a": 5, "b": 3, "c": 2}
    assert Counter(lab for (lab,) in test.labels) == {"a": 5, "b": 3, "c": 2}
    assert train.source == "mem.csv [train split]"
    assert dev.source == "mem.csv [dev split]"
    assert test.source == "mem.csv [test split]"


def test_split_is_seeded() -> None:
    ds = balanced({"a": 40, "b": 40})

    def rows(seed: int) -> list[list[int]]:
        parts = split(ds, seed=seed)
        return [[ex.source_row for ex in p.examples] for p in parts if p is not None]

    assert rows(3) == rows(3)
    assert rows(3) != rows(4)


def test_split_without_test_fraction() -> None:
    ds = balanced({"a": 20, "b": 20})
    train, dev, test = split(ds, dev_fraction=0.25, test_fraction=0.0)
    assert test is None
    assert (len(train), len(dev)) == (30, 10)
    assert Counter(lab for (lab,) in dev.labels) == {"a": 5, "b": 5}


def test_split_too_small_is_a_data_error() -> None:
    ds = Dataset.from_lists(["a", "b"], ["x", "y"], source="tiny.csv")
    with pytest.raises(DataError, match=r"^tiny\.csv: cannot split 2 rows"):
        split(ds)


def test_summarize() -> None:
    texts = ["a" * n for n in (1, 2, 3, 4, 100)]
    ds = Dataset.from_lists(texts, ["x", "y", "x", "x", "y"], source="s.csv")
    s = summarize(ds)
    assert s.source == "s.csv"
    assert s.rows == 5
    assert s.label_counts == {"x": 3, "y": 2}
    assert list(s.label_counts) == ["x", "y"]
    assert (s.chars_min, s.chars_median, s.chars_max) == (1, 3.0, 100)
    assert s.chars_p95 == 100.0


def test_summarize_counts_every_label_of_multi_label_rows() -> None:
    ds = Dataset.from_lists(["a", "bb"], [["x", "y"], ["y"]])
    assert summarize(ds).label_counts == {"x": 1, "y": 2}


# ---------------------------------------------------------------- bundled dataset


@pytest.mark.parametrize("name", ["train", "dev", "test"])
def test_bundled_dataset(name: str) -> None:
    path = bundled_dataset_path(name)
    assert path.name == f"support_{name}.csv"
    ds = load_table(path)
    assert len(ds) > 100
    assert len(LabelSet.fit(ds)) >= 12
    has_chinese = any(
        any(unicodedata.name(ch, "").startswith("CJK UNIFIED") for ch in t) for t in ds.texts
    )
    has_english = any(re.fullmatch(r"[A-Za-z0-9 ,.'?!\-]+", t) for t in ds.texts)
    assert has_chinese and has_english


def test_bundled_splits_are_consistent() -> None:
    train, dev, test = (load_table(bundled_dataset_path(n)) for n in ("train", "dev", "test"))
    labels = check_splits(train, dev, test)
    assert len(labels) >= 12


def test_bundled_unknown_split() -> None:
    with pytest.raises(DataError, match="train, dev or test"):
        bundled_dataset_path("validation")


# ---------------------------------------------------------------- iter_texts


def test_iter_texts_without_label_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "in.csv", "id,text\n1,where is my order\n2,我要退款\n")
    got = list(iter_texts(path))
    assert [(rowno, text) for rowno, _, text in got] == [(2, "where is my order"), (3, "我要退款")]
    assert got[0][1] == {"id": "1", "text": "where is my order"}


def test_iter_texts_joins_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"title": "A", "body": "B"}])
    got = list(iter_texts(path, DataConfig(text_cols=["title", "body"])))
    assert [text for _, _, text in got] == ["A B"]


def test_iter_texts_missing_text_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "in.csv", "id,body\n1,hello\n")
    with pytest.raises(DataError) as info:
        list(iter_texts(path))
    assert str(info.value).startswith(f"{path}, row 2, column 'text':")


def test_iter_texts_empty_text(tmp_path: Path) -> None:
    path = write_text(tmp_path / "in.csv", "text\nfine\n   \n")
    with pytest.raises(DataError, match=r"row 3, column 'text': text is empty"):
        list(iter_texts(path))


# ---------------------------------------------------------------- bad inputs


def test_data_error_is_a_fenlei_error() -> None:
    assert issubclass(DataError, FenleiError)


def test_missing_text_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "body,label\nhello,a\n")
    err = data_error(path)
    assert (err.path, err.row, err.column) == (str(path), 2, "text")
    assert str(err).startswith(f"{path}, row 2, column 'text': has no column 'text'")
    assert "'body'" in str(err)  # lists the columns that do exist
    assert "--text-col" in str(err)


def test_missing_second_text_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "title,label\nhello,a\n")
    err = data_error(path, DataConfig(text_cols=["title", "body"]))
    assert err.column == "body"
    assert "column 'body'" in str(err)


def test_missing_label_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "text,category\nhello,a\n")
    err = data_error(path)
    assert (err.row, err.column) == (2, "label")
    assert str(err).startswith(f"{path}, row 2, column 'label': has no column 'label'")
    assert "--label-col" in str(err)


def test_missing_label_key_in_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    err = data_error(path)
    assert (err.row, err.column) == (2, "label")


@pytest.mark.parametrize("text", ["", "   ", "\t "], ids=["empty", "spaces", "tab"])
def test_empty_or_whitespace_text(tmp_path: Path, text: str) -> None:
    path = write_text(tmp_path / "d.csv", f'text,label\nfine,a\nfine,b\n"{text}",a\n')
    err = data_error(path)
    assert (err.row, err.column) == (4, "text")
    assert str(err).startswith(f"{path}, row 4, column 'text': text is empty or whitespace")


def test_empty_text_in_jsonl_null(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": None, "label": "x"}])
    err = data_error(path)
    assert (err.row, err.column) == (1, "text")


@pytest.mark.parametrize("cell", ["", "  "], ids=["empty", "spaces"])
def test_missing_label_value(tmp_path: Path, cell: str) -> None:
    path = write_text(tmp_path / "d.csv", f"text,label\nhello,a\nworld,{cell}\n")
    err = data_error(path)
    assert (err.row, err.column) == (3, "label")
    assert str(err).startswith(f"{path}, row 3, column 'label': label is missing")


def test_missing_label_value_multi_label(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "text,label\nhello,a|b\nworld,|\n")
    err = data_error(path, DataConfig(multi_label=True))
    assert (err.row, err.column) == (3, "label")


@pytest.mark.parametrize("other_name", ["dev", "test"])
def test_label_only_in_dev_or_test(tmp_path: Path, other_name: str) -> None:
    train = load_table(write_csv(tmp_path / "train.csv", [("a", "x"), ("b", "y")]))
    other_path = write_csv(tmp_path / f"{other_name}.csv", [("c", "x"), ("d", "z")])
    other = load_table(other_path)
    with pytest.raises(DataError) as info:
        if other_name == "dev":
            check_splits(train, other)
        else:
            check_splits(train, None, other)
    err = info.value
    assert (err.path, err.row) == (str(other_path), 3)
    assert str(err).startswith(f"{other_path}, row 3: label 'z' never occurs")
    assert str(tmp_path / "train.csv") in str(err)


def test_check_splits_returns_train_labels(tmp_path: Path) -> None:
    train = load_table(write_csv(tmp_path / "train.csv", [("a", "y"), ("b", "x"), ("c", "y")]))
    dev = load_table(write_csv(tmp_path / "dev.csv", [("c", "x")]))
    assert check_splits(train, dev).names == ("x", "y")


def test_single_class(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", [("a", "only"), ("b", "only"), ("c", "only")])
    with pytest.raises(DataError) as info:
        check_splits(load_table(path))
    assert str(info.value).startswith(f"{path}: only one class ('only')")


def test_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\nhello,a\n\xff\xfe bad,b\n")
    err = data_error(path)
    assert err.row == 3
    assert str(err).startswith(f"{path}, row 3: byte 0xff")
    assert "UTF-8" in str(err)


def test_undecodable_bytes_in_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a", "label": "x"}\n{"text": "\xe4\xb8", "label": "y"}\n')
    err = data_error(path)
    assert err.row == 2


def test_ragged_row_too_many_fields(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "text,label\nfine,a\nhello, world,b\nfine,c\n")
    err = data_error(path)
    assert err.row == 3
    assert str(err).startswith(f"{path}, row 3: has 3 fields but the header has 2")


def test_ragged_row_too_few_fields(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.tsv", "text\tlabel\nfine\ta\nno label here\n")
    err = data_error(path)
    assert err.row == 3
    assert "has 1 fields but the header has 2" in str(err)


@pytest.mark.parametrize(
    ("name", "header"), [("d.csv", "text,label,text"), ("d.tsv", "text\tlabel\t text")]
)
def test_duplicated_header_column(tmp_path: Path, name: str, header: str) -> None:
    sep = "\t" if name.endswith(".tsv") else ","
    path = write_text(tmp_path / name, f"{header}\nfirst{sep}a{sep}third\n")
    err = data_error(path)
    assert (err.row, err.column) == (1, "text")
    assert str(err).startswith(f"{path}, row 1, column 'text': appears twice in the header")
    assert "columns 1 and 3" in str(err)
    with pytest.raises(DataError, match="appears twice"):
        list(iter_texts(path))


def test_repeated_unnamed_columns_are_allowed(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "text,label,,\nhello,a,,\nworld,b,,\n")
    assert load_table(path).texts == ["hello", "world"]


def test_duplicated_key_in_a_json_line(tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "d.jsonl",
        '{"text": "a", "label": "x"}\n{"text": "b", "label": "y", "text": "c"}\n',
    )
    err = data_error(path)
    assert (err.row, err.column) == (2, "text")
    assert "twice" in str(err)


def test_duplicated_parquet_column(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    columns = [pa.array(["a", "b"]), pa.array(["x", "y"]), pa.array(["c", "d"])]
    pq.write_table(pa.Table.from_arrays(columns, names=["text", "label", "text"]), path)
    err = data_error(path)
    assert err.column == "text"
    assert "appears twice in the header (columns 1 and 3)" in str(err)


def test_check_text() -> None:
    assert check_text("fine 😀 我想退款") is None
    assert check_text("") is None  # emptiness is each boundary's own decision
    problem = check_text("ab\ud800c")
    assert problem is not None
    assert problem.startswith("contains U+D800 at character 2, a lone surrogate")
    assert "UTF-8" in problem
    assert check_text("\udce9")  # how Python keeps an undecodable command-line byte


def test_lone_surrogate_in_jsonl_names_file_row_and_column(tmp_path: Path) -> None:
    # valid JSON: a \ud800 escape decodes to a lone surrogate, which no tokenizer accepts
    path = write_text(
        tmp_path / "d.jsonl",
        '{"text": "fine", "label": "a"}\n{"text": "bad \\ud800", "label": "b"}\n',
    )
    err = data_error(path)
    assert (err.row, err.column) == (2, "text")
    assert "contains U+D800 at character 4" in str(err)
    assert "remove it, or write the whole pair" in str(err)
    with pytest.raises(DataError, match=r"row 2, column 'text': contains U\+D800"):
        list(iter_texts(path))


def test_lone_surrogate_in_a_second_text_column_or_a_label(tmp_path: Path) -> None:
    def ascii_jsonl(name: str, records: list[dict[str, str]]) -> Path:
        return write_text(tmp_path / name, "".join(json.dumps(r) + "\n" for r in records))

    records = [{"title": "ok", "body": "x\udfff", "label": "a"}, {"title": "b", "body": "c"}]
    path = ascii_jsonl("d.jsonl", records)
    err = data_error(path, DataConfig(text_cols=["title", "body"]))
    assert (err.row, err.column) == (1, "body")
    err = data_error(ascii_jsonl("l.jsonl", [{"text": "fine", "label": "\ud83d"}]))
    assert (err.row, err.column) == (1, "label")


def test_lone_surrogate_in_parquet(tmp_path: Path) -> None:
    # Parquet stores UTF-8, which cannot hold a surrogate: pyarrow refuses to write one,
    # so the reader can never see one (checked here so a future pyarrow cannot surprise us)
    with pytest.raises(UnicodeEncodeError):
        pa.table({"text": ["\ud800"]})


def test_from_lists_refuses_a_lone_surrogate_naming_its_index() -> None:
    with pytest.raises(DataError, match=r"^mem: texts\[1\] contains U\+DC80 at character 0"):
        Dataset.from_lists(["fine", "\udc80 bad"], ["a", "b"], source="mem")
    with pytest.raises(DataError, match=r"labels\[0\] contains U\+D800"):
        Dataset.from_lists(["fine"], [["a", "\ud800"]], source="mem")


def test_malformed_json_line(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label}\n')
    err = data_error(path)
    assert err.row == 2
    assert str(err).startswith(f"{path}, row 2: not valid JSON")


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n')
    err = data_error(path)
    assert err.row == 2
    assert "JSON object" in str(err)


@pytest.mark.parametrize("name", ["d.txt", "d.xlsx", "noext", "d.gz", "d.txt.gz"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = write_text(tmp_path / name, "text,label\nhello,a\n")
    err = data_error(path)
    assert "unknown file type" in str(err)
    assert ".csv" in str(err)


@pytest.mark.parametrize("name", ["nope.csv", "nope.jsonl.gz", "nope.parquet"])
def test_nonexistent_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    err = data_error(path)
    assert str(err) == f"{path}: file does not exist"


def test_truncated_gzip(tmp_path: Path) -> None:
    body = "text,label\n" + "".join(f"row number {i},label{i % 3}\n" for i in range(500))
    blob = gzip.compress(body.encode())
    path = tmp_path / "d.csv.gz"
    path.write_bytes(blob[: len(blob) // 2])
    err = data_error(path)
    assert "truncated" in str(err)


def test_not_gzip_at_all(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.jsonl.gz", '{"text": "a", "label": "x"}\n')
    err = data_error(path)
    assert "gzip" in str(err)


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = write_text(tmp_path / name, "")
    err = data_error(path)
    assert "empty" in str(err) or "no data rows" in str(err)


def test_header_only_csv(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "text,label\n")
    assert str(data_error(path)) == f"{path}: has no data rows"


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.parquet", "this is not parquet")
    assert "Parquet" in str(data_error(path))


def test_parquet_row_numbers_single_row_group(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c", "", "e"], "label": list("xyxyx")}), path)
    err = data_error(path)
    assert (err.row, err.column) == (4, "text")


def test_parquet_row_numbers_across_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    table = pa.table({"text": ["a", "b", "c", "", "e"], "label": list("xyxyx")})
    pq.write_table(table, path, row_group_size=2)
    err = data_error(path)
    assert (err.row, err.column) == (4, "text")


def test_from_lists_with_one_label_tuples_is_single_label() -> None:
    ds = Dataset.from_lists(["a", "b"], [("x",), ("y",)])
    assert ds.multi_label is False and ds.labels == [("x",), ("y",)]
    assert Dataset.from_lists(["a", "b"], [("x", "y"), ("y",)]).multi_label is True
