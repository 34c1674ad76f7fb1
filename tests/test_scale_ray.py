"""`--ray` end to end on a local Ray (two CPUs, no dashboard) that one fixture starts.

Data-parallel training with two workers against a local run (tiny LSTM, separable data)
through a worker killed mid-training, and batch prediction's row count and order. Skipped
when the ``ray`` extra is not installed. Ray's process start-up dominates: kept to three
jobs.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fenlei.cli import main  # noqa: E402
from fenlei.config import load_config  # noqa: E402
from fenlei.data import load_table  # noqa: E402
from fenlei.loader import open_predictor  # noqa: E402
from fenlei.pipeline import prepare_splits, train_run  # noqa: E402
from fenlei.records import EpochRecord  # noqa: E402
from fenlei.scale import RayOptions, Tables, predict_on_ray, train_on_ray  # noqa: E402

# Ray's own modules warn about their deprecated settings (warnings are errors here)
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:ray.*"),
]

TINY_LSTM = [
    "train.threads=1",
    "eval.plots=false",
    "encoder.vocab_size=200",
    "model.embedding_dim=16",
    "model.hidden_size=16",
    "train.lr=0.01",
    "train.epochs=4",
    "train.batch_size=16",
]


@pytest.fixture(scope="session")
def local_ray() -> Iterator[Any]:
    """One local Ray for the session: two CPUs, no dashboard."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _write_table(path: Path, rows: int, seed: int) -> Path:
    """Two classes with disjoint words: a tiny model separates them in a few epochs."""
    rng = random.Random(seed)
    words = {"pos": "sunny bright warm happy glad calm", "neg": "rainy dark cold sad grim loud"}
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = "pos" if i % 2 else "neg"
            writer.writerow([" ".join(rng.choices(words[label].split(), k=6)), label])
    return path


def _crash_rank_one_once(marker: str) -> Any:
    """An epoch hook that kills rank 1's process (SIGKILL) after epoch 2, once."""

    def hook(record: EpochRecord) -> None:
        import signal

        import ray.train

        rank = ray.train.get_context().get_world_rank()
        if rank == 1 and record.epoch == 2 and not os.path.exists(marker):
            Path(marker).write_text("killed", encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def test_two_workers_survive_a_killed_worker_and_match_a_local_run(
    local_ray: Any, tmp_path: Path
) -> None:
    train_csv = _write_table(tmp_path / "train.csv", 160, seed=1)
    dev_csv = _write_table(tmp_path / "dev.csv", 60, seed=2)
    cfg = load_config("lstm", TINY_LSTM)
    local = train_run(
        cfg,
        prepare_splits(cfg.data, load_table(train_csv, cfg.data), load_table(dev_csv, cfg.data)),
        tmp_path / "local",
    )
    marker = tmp_path / "killed"
    result = train_on_ray(
        cfg,
        Tables(train_csv, dev_csv),
        tmp_path / "ddp",
        options=RayOptions(workers=2, max_failures=1),
        on_epoch=_crash_rank_one_once(str(marker)),
    )
    assert marker.read_text(encoding="utf-8") == "killed"  # a worker did die mid-training
    assert abs(result.metrics.dev.accuracy - local.metrics.dev.accuracy) <= 0.05
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]  # resumed, not restarted
    # the folder is a plain run folder: same files as the local one, and it loads
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "local").iterdir()
    )
    texts = ["sunny warm glad", "cold grim rainy"]
    assert open_predictor(tmp_path / "ddp").predict(texts)[0].label == "pos"
    assert not (tmp_path / ".ddp.ray").exists()  # Ray's checkpoint copies are cleaned


def test_batch_prediction_keeps_every_row_in_order(local_ray: Any, tmp_path: Path) -> None:
    train_csv = _write_table(tmp_path / "train.csv", 80, seed=3)
    code = main(
        ["train", str(train_csv), "-o", str(tmp_path / "run"), "--preset", "linear"]
        + [f"--set={s}" for s in ("train.epochs=2", "encoder.vocab_size=200", "eval.plots=false")]
    )
    assert code == 0
    big = _write_table(tmp_path / "big.csv", 2500, seed=4)
    out = tmp_path / "out.parquet"
    rows, blank = predict_on_ray(
        tmp_path / "run", big, out, options=RayOptions(workers=2), batch_rows=256
    )
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert (rows, blank, table.num_rows) == (2500, 0, 2500)
    assert table["id"].to_pylist() == list(range(2500))
    predictor = open_predictor(tmp_path / "run")
    texts = [e.text for e in load_table(big).examples]
    expected = predictor.predict_proba(texts)
    got = np.stack([table[f"p_{name}"].to_numpy() for name in predictor.labels], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    csv_out = tmp_path / "out.csv"
    argv = ["predict", str(tmp_path / "run"), "--file", str(big), "--out", str(csv_out)]
    code = main([*argv, "--ray", "--workers", "1"])
    assert code == 0
    with csv_out.open(encoding="utf-8") as fh:
        lines = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in lines] == list(range(2500))
    assert [r["predicted_label"] for r in lines] == table["predicted_label"].to_pylist()


def test_tune_runs_trials_as_ray_tasks_sharing_the_study(local_ray: Any, tmp_path: Path) -> None:
    from fenlei.scale import trial_launcher
    from fenlei.tuning import tune
    from fenlei.tuning.trials import run_trials

    train_csv = _write_table(tmp_path / "train.csv", 80, seed=5)
    result = tune(
        train_csv,
        out=tmp_path / "best",
        preset="linear",
        overrides=["train.epochs=1", "encoder.vocab_size=200", "eval.plots=false"],
        trials=2,
        launcher=trial_launcher(RayOptions(workers=2), run_trials),
    )
    assert [t.state for t in result.trials] == ["complete", "complete"]
    assert (tmp_path / "best" / "model.safetensors").is_file()
