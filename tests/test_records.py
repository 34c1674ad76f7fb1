"""EpochRecord: one line of metrics.jsonl, today's and older fenlei's."""

from __future__ import annotations

import json
from pathlib import Path

from fenlei.records import EpochRecord, history_lines, read_history


def test_a_loop_record_round_trips_and_keeps_the_old_line_format() -> None:
    record = EpochRecord(
        epoch=2,
        train_loss=0.5,
        dev={"loss": 0.4, "accuracy": 0.9, "macro_f1": 0.8},
        seconds=1.5,
        precision="bf16-mixed",
        is_best=True,
        lr=0.001,
    )
    line = record.to_json()
    assert list(line) == ["epoch", "train_loss", "dev", "lr", "seconds", "precision", "is_best"]
    assert EpochRecord.from_json(json.loads(json.dumps(line))) == record


def test_a_solve_record_carries_its_setting_in_param() -> None:
    record = EpochRecord(
        epoch=1, train_loss=0.3, dev={"accuracy": 0.7}, seconds=0.1, param={"c": 0.3}
    )
    assert "lr" not in record.to_json()
    assert record.to_json()["param"] == {"c": 0.3}
    assert EpochRecord.from_json(record.to_json()) == record
    assert record.param_text() == "c=0.3"


def test_older_solved_records_with_c_are_read_into_param(tmp_path: Path) -> None:
    old = {
        "epoch": 1,
        "c": 0.1,
        "train_loss": 0.6,
        "dev": {"loss": 0.5, "accuracy": 0.8, "macro_f1": 0.7},
        "seconds": 2.0,
        "precision": "fp32",
        "is_best": True,
    }
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (record,) = read_history(path)
    assert record.param == {"c": 0.1}
    assert record.lr is None
    path.write_text(history_lines([record]))
    assert read_history(path) == [record]
