"""fenlei compress: int8 and pruned bag models, int8 ONNX for LSTM/transformer, the gate.

Tiny runs are trained once per module on the bundled data (train/dev files, so each run
records its dev split in splits.json); every test compresses them into new folders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from fenlei.artifact import load_run
from fenlei.classifier import TextClassifier
from fenlei.cli import main
from fenlei.compress import AccuracyGateError, compress
from fenlei.compress.prune import PruneSpec, parse_prune, prune_bag, row_keys
from fenlei.config import load_config
from fenlei.data import bundled_dataset_path, load_table
from fenlei.errors import ArtifactError, ConfigError
from fenlei.loader import export_run, open_predictor
from fenlei.models.compact import FeatureMap, Int8EmbeddingBag, quantize_rows
from fenlei.onnx import export_onnx
from fenlei.pipeline import prepare_splits, train_run
from fenlei.predict import Predictor
from fenlei.serve.app import create_app
from fenlei.serve.schemas import ServeSettings
from tests.conftest import family_overrides

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _train(family: str, folder: Path, tiny_dir: Path | None = None) -> Path:
    preset, overrides = family_overrides(family, tiny_dir)
    cfg = load_config(preset, overrides)
    train = load_table(bundled_dataset_path("train"), cfg.data)
    dev = load_table(bundled_dataset_path("dev"), cfg.data)
    train_run(cfg, prepare_splits(cfg.data, train, dev), folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny linear and nbsvm runs (dev split: the bundled dev file)."""
    root = tmp_path_factory.mktemp("sources")
    return {name: _train(name, root / name) for name in ("linear.v2", "nbsvm.v1")}


def _cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, ANSI.sub("", captured.out), ANSI.sub("", captured.err)


def _labels(predictor: Predictor, texts: list[str]) -> list[str]:
    return [p.label for p in predictor.predict(texts)]


# ---------------------------------------------------------------- building blocks


def test_quantize_rows_round_trips_within_half_a_step() -> None:
    weight = torch.randn(50, 8)
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8
    assert torch.all((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-6)


def test_int8_bag_sums_like_an_embedding_bag() -> None:
    weight = torch.randn(6, 4)
    weight[5] = 0
    bag = Int8EmbeddingBag(6, 4, padding_idx=5)
    bag.load_float(weight)
    ref = torch.nn.EmbeddingBag(6, 4, mode="sum", padding_idx=5)
    ref.weight.data.copy_(bag.weight)
    ids = torch.tensor([[0, 1, 5], [2, 2, 3]])
    assert torch.allclose(bag(ids), ref(ids), atol=1e-6)


def test_feature_map_finds_kept_keys_and_nothing_else() -> None:
    keys = np.array([3, 19, 35, 1_000_003, 7])  # 3, 19 and 35 share a slot modulo 16
    fmap = FeatureMap(len(keys))
    placed = fmap.fill(keys)
    assert len(placed) == len(keys)
    found = fmap(torch.tensor([[3, 19, 35, 1_000_003, 7, 4, -1]]), pad=99)
    assert found.tolist() == [[0, 1, 2, 3, 4, 99, 99]]


@pytest.mark.parametrize("text", ["rows=10", "rows=0.5"])
def test_parse_prune(text: str) -> None:
    spec = parse_prune(text)
    assert spec.count(100) == (10 if spec.rows else 50)


@pytest.mark.parametrize("text", ["rows=0", "rows=-3", "rows=2.5", "heads=3", "layers=0", "rows="])
def test_parse_prune_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="--prune takes rows=N"):
        parse_prune(text)


def test_pruning_every_row_kept_keeps_the_logits(runs: dict[str, Path]) -> None:
    for name in ("linear.v2", "nbsvm.v1"):
        run = load_run(runs[name])
        small, _ = prune_bag(run.model, run.config.model, run.spec, prune=None, int8=False)  # type: ignore[arg-type]
        ids, mask = run.encoder.encode_batch(load_table(bundled_dataset_path("dev")).texts[:40])
        with torch.no_grad():
            assert torch.allclose(small(ids, mask), run.model(ids, mask), atol=1e-5), name


# ---------------------------------------------------------------- bag models


@pytest.mark.parametrize("name", ["linear.v2", "nbsvm.v1"])
def test_int8_bag_model_is_smaller_and_predicts_the_same(
    runs: dict[str, Path], tmp_path: Path, name: str
) -> None:
    result = compress(runs[name], tmp_path / "int8", int8=True)
    assert result.compressed.size_mb < result.source.size_mb
    texts = load_table(bundled_dataset_path("test")).texts
    before = Predictor.from_run(runs[name], backend="torch")
    after = Predictor.from_run(tmp_path / "int8", backend="torch")
    agree = np.mean(np.array(_labels(before, texts)) == np.array(_labels(after, texts)))
    assert agree >= 0.97
    assert np.abs(before.predict_proba(texts) - after.predict_proba(texts)).max() < 0.05
    metrics = json.loads((tmp_path / "int8" / "metrics.json").read_text())
    assert [m["name"] for m in metrics["compress"]["models"]] == ["source", "compressed"]
    assert metrics["dev"]["accuracy"] == pytest.approx(result.compressed.accuracy)


@pytest.mark.parametrize("name", ["linear.v2", "nbsvm.v1"])
def test_pruned_bag_model_is_smaller(runs: dict[str, Path], tmp_path: Path, name: str) -> None:
    result = compress(runs[name], tmp_path / "small", int8=True, prune="rows=0.3", max_drop=1.0)
    run = load_run(tmp_path / "small")
    assert run.spec.kept_rows is not None and run.spec.int8_table
    # every asked-for row is kept (a key without a slot once shrank the table again and again)
    available = int((row_keys(load_run(runs[name]).model) >= 0).sum())  # type: ignore[arg-type]
    assert run.spec.kept_rows == PruneSpec(fraction=0.3).count(available)

    # the rows shrink to under a third; a vocabulary's character n-gram table (nbsvm on
    # small data) is not rows and is kept whole
    def without_char_table(size_mb: float, folder: Path) -> float:
        return size_mb - load_run(folder).model.char_table.nbytes / 1e6  # type: ignore[union-attr]

    assert without_char_table(result.compressed.size_mb, tmp_path / "small") < (
        without_char_table(result.source.size_mb, runs[name]) / 3
    )
    assert result.compressed.folder_mb < result.source.folder_mb


def test_compressed_bag_folder_exports_serves_and_loads(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "small"
    compress(runs["linear.v2"], out, int8=True, prune="rows=0.5", max_drop=1.0)
    texts = load_table(bundled_dataset_path("dev")).texts[:20]
    torch_probs = Predictor.from_run(out, backend="torch").predict_proba(texts)
    export_run(out)  # traced from the int8 module: ONNX reads the same int8 rows
    onnx = open_predictor(out)
    assert onnx.info().backend == "onnx"
    assert np.abs(onnx.predict_proba(texts) - torch_probs).max() < 1e-4
    clf = TextClassifier.load(out)
    assert clf.predict(texts[:3]) == _labels(onnx, texts[:3])  # type: ignore[arg-type]
    with TestClient(create_app({"small": out}, ServeSettings())) as client:
        reply = client.post("/v1/models/small/predict", json={"texts": texts[:2]})
        assert reply.status_code == 200, reply.text


# ---------------------------------------------------------------- the gate and bad input


def test_gate_refuses_and_leaves_nothing(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny"
    args = ["compress", str(runs["linear.v2"]), "--out", str(out), "--prune", "rows=3"]
    code, _, err = _cli(capsys, [*args, "--max-drop", "0"])
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--max-drop" in lines[0], err
    assert list(tmp_path.iterdir()) == []
    code, stdout, err = _cli(capsys, [*args, "--max-drop", "0", "--force"])
    assert code == 0, err
    assert "compressed" in stdout and "p50" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["compress"]["forced"] is True
    Predictor.from_run(out)


def test_gate_error_type(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(AccuracyGateError):
        compress(runs["nbsvm.v1"], tmp_path / "x", prune=PruneSpec(rows=1), max_drop=0.0)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8", "--max-drop", "1.5"], r"--max-drop is an accuracy difference in \[0, 1\]"),
        (["--int8", "--max-drop", "-0.1"], r"--max-drop is an accuracy difference"),
        ([], "nothing to do"),
        (["--prune", "heads=2"], "--prune takes rows=N"),
    ],
)
def test_bad_options_are_one_line(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "new"
    code, _, err = _cli(capsys, ["compress", str(runs["linear.v2"]), "--out", str(out), *extra])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), err
    assert list(tmp_path.iterdir()) == []


def test_a_tampered_source_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "source"
    shutil.copytree(runs["nbsvm.v1"], source)
    with (source / "labels.json").open("a") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactError, match=r"labels\.json"):
        compress(source, tmp_path / "new", int8=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_out_that_exists_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="already exists"):
        compress(runs["nbsvm.v1"], tmp_path, int8=True)


def test_explicit_data_is_used(runs: dict[str, Path], tmp_path: Path) -> None:
    result = compress(
        runs["nbsvm.v1"], tmp_path / "new", int8=True, data=bundled_dataset_path("test")
    )
    assert result.data.endswith("test.csv") or "test" in result.data
    assert result.compressed.n == len(load_table(bundled_dataset_path("test")))


# ---------------------------------------------------------------- int8 ONNX


@pytest.mark.parametrize("name", ["lstm.v1", "transformer.v1"])
def test_int8_onnx_run_folder_loads_and_serves(
    tmp_path: Path, tiny_transformer_dir: Path, name: str
) -> None:
    source = _train(name, tmp_path / "source", tiny_transformer_dir)
    out = tmp_path / "int8"
    result = compress(source, out, int8=True, max_drop=1.0)
    assert result.compressed.backend == "onnx" and result.source.backend == "torch"
    assert (out / "model.onnx").is_file()
    if name == "transformer.v1":  # weights quantized with a scale per output channel
        scales = [t for t in onnx.load(out / "model.onnx").graph.initializer if "scale" in t.name]
        assert any(len(t.dims) == 1 and t.dims[0] > 1 for t in scales), scales
    predictor = open_predictor(out)
    assert predictor.info().backend == "onnx"
    texts = load_table(bundled_dataset_path("dev")).texts[:30]
    fp32 = Predictor.from_run(source, backend="torch").predict_proba(texts)
    assert np.abs(predictor.predict_proba(texts) - fp32).max() < 0.1
    assert TextClassifier.load(out).predict(texts[:2]) is not None
    with TestClient(create_app({"int8": out}, ServeSettings())) as client:
        reply = client.post("/v1/models/int8/predict", json={"texts": texts[:2]})
        assert reply.status_code == 200, reply.text
    if name == "lstm.v1":  # `fenlei export` must not replace the int8 model with an fp32 one
        before = (out / "model.onnx").read_bytes()
        with pytest.raises(ArtifactError, match="int8 model fenlei compress made"):
            export_onnx(out)
        assert (out / "model.onnx").read_bytes() == before
        open_predictor(out)  # and the folder still verifies


# ---------------------------------------------------------------- transformer layers


def _layers_of(run: Path) -> int:
    spec = json.loads((run / "model_config.json").read_text(encoding="utf-8"))
    return int(spec["transformer_config"]["num_hidden_layers"])


@pytest.fixture(scope="module")
def tiny_bert_run(tmp_path_factory: pytest.TempPathFactory, tiny_transformer_dir: Path) -> Path:
    """A tiny 2-layer transformer.v1 run (train and dev splits: the bundled files)."""
    return _train("transformer.v1", tmp_path_factory.mktemp("bert") / "run", tiny_transformer_dir)


def test_dropping_layers_writes_a_smaller_transformer_that_loads_predicts_and_serves(
    tiny_bert_run: Path, tiny_transformer_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "one-layer"
    result = compress(tiny_bert_run, out, prune="layers=1", max_drop=1.0)
    assert _layers_of(tiny_bert_run) == 2 and _layers_of(out) == 1
    about = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["compress"]
    assert about["layers"]["kept"] == [0] and about["layers"]["of"] == 2
    recovery = about["layers"]["recovery"]
    assert recovery["initialised_from"] == str(tiny_bert_run)
    assert recovery["transfer"]["labelled"] == len(load_table(bundled_dataset_path("train")))
    assert [t["run"] for t in recovery["teachers"]] == [str(tiny_bert_run)]
    # the config names the real pretrained encoder (not the temporary fine-tuned copy)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))["model"]
    assert config["pretrained"] == str(tiny_transformer_dir) and config["keep_layers"] == 1
    assert result.compressed.n == len(load_table(bundled_dataset_path("dev")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-layer"]  # no temporaries left
    texts = load_table(bundled_dataset_path("dev")).texts[:4]
    assert len(TextClassifier.load(out).predict(texts)) == 4
    with TestClient(create_app({"small": out}, ServeSettings())) as client:
        reply = client.post("/v1/models/small/predict", json={"texts": texts})
        assert reply.status_code == 200, reply.text


def test_dropping_layers_and_int8_from_the_cli(
    tiny_bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "small"
    args = ["compress", str(tiny_bert_run), "--out", str(out), "--prune", "layers=1"]
    code, stdout, _ = _cli(capsys, [*args, "--int8", "--max-drop", "1", "--recover-epochs", "2"])
    assert code == 0, stdout
    assert "Source vs compressed" in stdout and "onnx" in stdout
    assert _layers_of(out) == 1 and (out / "model.onnx").is_file()
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["train"]["epochs"] == 2
    assert open_predictor(out).info().backend == "onnx"


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ("layers=2", "keeps all 2 layers"),
        ("layers=3", "has 2 layers; keep 1..2"),
        ("rows=10", "offers --prune layers=K and --int8"),
    ],
)
def test_layer_requests_that_cannot_work_are_refused_and_leave_nothing(
    tiny_bert_run: Path, tmp_path: Path, prune: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        compress(tiny_bert_run, tmp_path / "new", prune=prune)
    assert list(tmp_path.iterdir()) == []


def test_dropping_layers_of_a_bag_model_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="offers --prune rows=N"):
        compress(runs["nbsvm.v1"], tmp_path / "new", prune="layers=1")


def test_keep_layers_trains_a_cut_down_transformer_v2(
    tmp_path: Path, tiny_transformer_dir: Path
) -> None:
    preset, overrides = family_overrides("transformer.v2", tiny_transformer_dir)
    cfg = load_config(preset, [*overrides, "model.keep_layers=1"])
    train = load_table(bundled_dataset_path("train"), cfg.data)
    train_run(cfg, prepare_splits(cfg.data, train), tmp_path / "run")
    assert _layers_of(tmp_path / "run") == 1
    assert len(open_predictor(tmp_path / "run").predict(["a text"])) == 1


def test_parse_prune_reads_layers() -> None:
    assert parse_prune("layers=3") == PruneSpec(layers=3)
    with pytest.raises(ConfigError, match="layers=K"):
        parse_prune("layers=0.5")


def test_pruning_an_lstm_is_refused(tmp_path: Path) -> None:
    source = _train("lstm.v1", tmp_path / "source")
    with pytest.raises(ConfigError, match="--int8 only"):
        compress(source, tmp_path / "new", prune="rows=10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_fenlei_compress_is_callable_after_the_package_is_imported(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    import fenlei
    import fenlei.compress  # binds fenlei.compress to the package

    result = fenlei.compress(runs["nbsvm.v1"], tmp_path / "new", int8=True)
    assert result.run_dir == tmp_path / "new"


def test_default_data_is_a_dev_split_made_from_the_training_table(tmp_path: Path) -> None:
    # splits.json names such a split "<table> [dev split]"; the table is read again
    preset, overrides = family_overrides("nbsvm.v1")
    cfg = load_config(preset, overrides)
    train = load_table(bundled_dataset_path("train"), cfg.data)
    train_run(cfg, prepare_splits(cfg.data, train), tmp_path / "source")
    result = compress(tmp_path / "source", tmp_path / "new", int8=True)
    assert result.data.endswith("[dev split]") and result.compressed.n > 0
