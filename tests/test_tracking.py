"""fenlei.tracking: a training run logged to MLflow and TensorBoard, read back with MLflow's
own client and TensorBoard's event reader."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from fenlei.cli import main
from fenlei.config import RunConfig, load_config
from fenlei.data import Dataset
from fenlei.errors import ConfigError, MissingExtraError
from fenlei.pipeline import Splits, TrainResult, prepare_splits, train_run
from fenlei.records import EpochRecord
from fenlei.tracking import flatten_config, track_run

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

ANSI = re.compile(r"\x1b\[[0-9;]*m")

TINY = [
    "train.threads=1",
    "train.epochs=2",
    "train.patience=null",
    "encoder.vocab_size=600",
    "model.buckets=2000",
    "model.embedding_dim=16",
]


@pytest.fixture(scope="module")
def cfg() -> RunConfig:
    return load_config("linear", TINY)


@pytest.fixture(scope="module")
def splits(bundled: dict[str, Dataset], cfg: RunConfig) -> Splits:
    return prepare_splits(cfg.data, bundled["train"], bundled["dev"])


def _tracked(
    kind: str,
    cfg: RunConfig,
    splits: Splits,
    run_dir: Path,
    on_epoch: Any = None,
) -> TrainResult:
    """Train inside track_run, as train_run(track=kind) does."""
    with track_run(kind, cfg, run_dir) as tracking:
        result = train_run(cfg, splits, run_dir, on_epoch=tracking.chain(on_epoch))
        tracking.finish(result.run_dir, result.metrics.to_json())
    return result


def _mlflow_env(monkeypatch: pytest.MonkeyPatch, store: Path) -> Any:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(store.as_uri())


def _only_run(client: Any) -> Any:
    experiment = client.get_experiment_by_name("fenlei")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def mlflow_run(
    tmp_path_factory: pytest.TempPathFactory, cfg: RunConfig, splits: Splits
) -> tuple[Any, Any, TrainResult]:
    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        client = _mlflow_env(mp, tmp / "mlruns")
        result = _tracked("mlflow", cfg, splits, tmp / "run")
        return client, _only_run(client), result


def test_mlflow_holds_the_flattened_config(mlflow_run: Any, cfg: RunConfig) -> None:
    _, run, _ = mlflow_run
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run"
    assert run.data.params == flatten_config(cfg)
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["model.architecture"] == "linear.v2"
    assert run.data.tags["fenlei.run_dir"].endswith("run")


def test_mlflow_holds_each_epoch_and_the_final_metrics(mlflow_run: Any) -> None:
    client, run, result = mlflow_run
    history = client.get_metric_history(run.info.run_id, "dev/accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    by_step = {m.step: m.value for m in history}
    assert by_step == pytest.approx({r.epoch: r.dev["accuracy"] for r in result.history})
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) == 2
    final = run.data.metrics
    assert final["final/dev_accuracy"] == pytest.approx(result.metrics.dev.accuracy)
    assert final["final/best_epoch"] == result.metrics.best_epoch


def test_mlflow_holds_the_plots_and_the_run_folder(mlflow_run: Any) -> None:
    client, run, result = mlflow_run
    plots = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "plots")}
    assert "training_curves.png" in plots
    files = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "run")}
    expected = {p.name for p in result.run_dir.iterdir() if not p.name.startswith(".")}
    assert files == expected
    assert {"manifest.json", "model.safetensors", "config.json", "plots"} <= files


def test_a_failed_training_is_a_failed_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfg: RunConfig, splits: Splits
) -> None:
    client = _mlflow_env(monkeypatch, tmp_path / "mlruns")

    def boom(record: EpochRecord) -> None:
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        _tracked("mlflow", cfg, splits, tmp_path / "r", on_epoch=boom)
    run = _only_run(client)
    assert run.info.status == "FAILED"
    assert len(client.get_metric_history(run.info.run_id, "dev/accuracy")) == 1


def test_tensorboard_events_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfg: RunConfig, splits: Splits
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    result = _tracked("tensorboard", cfg, splits, tmp_path / "r")
    (folder,) = (tmp_path / "tensorboard").glob("r-*")
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    dev = events.Scalars("dev/accuracy")
    assert [e.step for e in dev] == [1, 2]
    assert [e.value for e in dev] == pytest.approx([r.dev["accuracy"] for r in result.history])
    assert "train/loss" in tags["scalars"]
    assert "final/dev_accuracy" in tags["scalars"]
    assert "plots/training_curves" in tags["images"]
    assert {"config/text_summary", "run_folder/text_summary"} <= set(tags["tensors"])


def test_missing_packages_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfg: RunConfig, splits: Splits
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(MissingExtraError, match=r"mlflow-skinny.*fenlei\[track\]"):
        _tracked("mlflow", cfg, splits, tmp_path / "a")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingExtraError, match=r"tensorboard.*fenlei\[track\]"):
        _tracked("tensorboard", cfg, splits, tmp_path / "b")
    with pytest.raises(ConfigError, match="mlflow, tensorboard"):
        _tracked("wandb", cfg, splits, tmp_path / "c")


def test_train_run_track_logs_each_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfg: RunConfig, splits: Splits
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    result = train_run(cfg, splits, tmp_path / "p", track="tensorboard")
    (folder,) = (tmp_path / "tensorboard").glob("p-*")
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    final = events.Scalars("final/dev_accuracy")
    assert final[0].value == pytest.approx(result.metrics.dev.accuracy)


def test_cli_train_track_mlflow_defaults_to_the_local_file_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    from fenlei.data import bundled_dataset_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # fenlei opts in itself
    sets = [arg for s in [*TINY, "eval.plots=false"] for arg in ("--set", s)]
    code = main(
        [
            "train",
            str(bundled_dataset_path("train")),
            "--dev",
            str(bundled_dataset_path("dev")),
            *sets,
            "--out",
            str(tmp_path / "cli-run"),
            "--track",
            "mlflow",
        ]
    )
    assert code == 0, ANSI.sub("", capsys.readouterr().err)
    assert (tmp_path / "mlruns").is_dir()
    run = _only_run(MlflowClient((tmp_path / "mlruns").as_uri()))
    assert run.info.run_name == "cli-run" and run.info.status == "FINISHED"
    assert run.data.params["eval.plots"] == "false"
