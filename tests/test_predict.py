"""The Predictor: decisions through the run's DecisionRule, ONNX threads from from_run, what
info() says, predict_proba's batch size, input statistics, and no process-wide torch state."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fenlei.artifact import verify_manifest
from fenlei.cli import main
from fenlei.config import load_config
from fenlei.data import bundled_dataset_path
from fenlei.decision import DecisionRule, decide
from fenlei.models import family_of
from fenlei.onnx import export_onnx
from fenlei.predict import HEADLINE_METRICS, Predictor, ServablePredictor, headline_metrics

TEXTS = ["where is my parcel?", "我要退款", "x", "can I talk to a human please", "ꙮꙮ ꙮ"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny linear run folder trained on the bundled data."""
    folder = tmp_path_factory.mktemp("predict") / "run"
    settings = ["train.epochs=1", "train.threads=1", "model.buckets=1000", "eval.plots=false"]
    args = ["train", str(bundled_dataset_path("train")), "--out", str(folder)]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 0
    return folder


@pytest.fixture(scope="module")
def predictor(run: Path) -> Predictor:
    return Predictor.from_run(run, backend="torch")


def test_the_rule_comes_from_the_run(predictor: Predictor) -> None:
    threshold = load_config("linear").eval.threshold
    assert predictor.rule == DecisionRule(multi_label=False, threshold=threshold)
    assert predictor.multi_label is False and predictor.threshold == threshold


def test_predict_is_the_rules_decision(predictor: Predictor) -> None:
    probs = predictor.predict_proba(TEXTS)
    expected = decide(probs, predictor.labels, predictor.rule)
    got = predictor.predict(TEXTS)
    assert [(p.label, p.labels) for p in got] == [(d.label, d.labels) for d in expected]
    assert all(p.labels == (p.label,) for p in got)  # single-label: the best label


def test_multi_label_predict_applies_per_label_thresholds(predictor: Predictor) -> None:
    n = len(predictor.labels)
    # label 0 always reaches its threshold, label 1 never, the rest at 0.5 (sigmoid outputs)
    rule = DecisionRule(multi_label=True, threshold=(0.0, 1.1, *([0.5] * (n - 2))))
    tagger = Predictor(predictor.encoder, predictor.model, predictor.labels, rule=rule)
    assert tagger.multi_label and tagger.rule is rule
    probs = tagger.predict_proba(TEXTS)
    for pred, row in zip(tagger.predict(TEXTS), probs, strict=True):
        assert predictor.labels[0] in pred.labels and predictor.labels[1] not in pred.labels
        chosen = {lab for j, lab in enumerate(predictor.labels) if row[j] >= rule.threshold[j]}  # type: ignore[index]
        assert set(pred.labels) == chosen
        assert pred.label == predictor.labels[int(row.argmax())]


def test_from_run_threads_reach_the_onnx_session(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    export_onnx(copy)
    for threads in (1, 2):
        onnx = Predictor.from_run(copy, backend="onnx", threads=threads)
        session = onnx.model.session  # type: ignore[union-attr]
        assert session.get_session_options().intra_op_num_threads == threads
        assert onnx.info().backend == "onnx"
    np.testing.assert_allclose(
        onnx.predict_proba(TEXTS),
        Predictor.from_run(copy, backend="torch").predict_proba(TEXTS),
        atol=1e-4,
    )


def test_info_describes_the_run(run: Path, predictor: Predictor) -> None:
    info = predictor.info()
    manifest = verify_manifest(run)
    sha = manifest["files"]["model.safetensors"]["sha256"]
    assert info.version == f"{manifest['fenlei_version']}+{sha[:12]}"
    assert info.labels == predictor.labels and info.multi_label is False
    assert (info.preset, info.architecture) == ("linear", "linear.v2")
    assert (info.backend, info.device, info.kind) == ("torch", "cpu", "single")
    assert info.serve_chunk == family_of("linear.v2").serve_chunk is None
    assert info.batch_size == load_config("linear").eval.batch_size
    assert info.run_dir == run and info.data is not None and info.data.text_cols == ("text",)
    assert 0 <= info.metrics["dev_accuracy"] <= 1 and "best_epoch" in info.metrics
    allowed = {f"{split}_{key}" for split in ("dev", "test") for key in HEADLINE_METRICS}
    assert set(info.metrics) <= allowed | {"best_epoch", "train_seconds"}


def test_info_without_a_run_folder(predictor: Predictor) -> None:
    bare = Predictor(predictor.encoder, predictor.model, predictor.labels)
    info = bare.info()
    assert info.version.endswith("+unknown") and info.preset == "unknown"
    assert info.architecture == type(predictor.model).__name__
    assert info.run_dir is None and info.data is None and info.metrics == {}


def test_transformer_family_serves_in_chunks() -> None:
    assert family_of("transformer.v1").serve_chunk == 8


def test_headline_metrics_picks_the_shared_keys() -> None:
    metrics = {"dev": {"accuracy": 0.9, "loss": 0.3, "n": 10}, "test": "n/a", "best_epoch": 2}
    assert headline_metrics(metrics) == {"dev_accuracy": 0.9, "dev_n": 10, "best_epoch": 2}


def test_predict_proba_takes_a_batch_size_per_call(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fenlei.predict as predict_module

    seen: list[int] = []
    real = predict_module.batched_logits

    def spy(*args, batch_size: int, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(batch_size)
        return real(*args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(predict_module, "batched_logits", spy)
    default = predictor.predict_proba(TEXTS)
    one_by_one = predictor.predict_proba(TEXTS, batch_size=1)
    np.testing.assert_allclose(one_by_one, default, atol=1e-6)
    assert seen == [predictor.batch_size, 1]
    assert predictor.batch_size == predictor.info().batch_size  # the call changed nothing


def test_score_is_probabilities_and_statistics_from_one_pass(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    encode = predictor.encoder.encode_ids

    def counting(texts):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return encode(texts)

    monkeypatch.setattr(predictor.encoder, "encode_ids", counting)
    scored = predictor.score(TEXTS)
    assert calls == [len(TEXTS)]  # tokenized once
    np.testing.assert_allclose(scored.probs, predictor.predict_proba(TEXTS), atol=1e-6)
    stats = predictor.text_stats(TEXTS)
    np.testing.assert_array_equal(scored.stats.length, stats.length)
    np.testing.assert_array_equal(scored.stats.unknown_rate, stats.unknown_rate)
    assert stats.length.tolist() == [len(t) for t in TEXTS]
    assert stats.unknown_rate[-1] > 0 and stats.unknown_rate[0] == 0  # unseen script: unknown
    empty = predictor.score([])
    assert empty.probs.shape == (0, len(predictor.labels)) and len(empty.stats.length) == 0


def test_predictor_has_the_servable_surface(predictor: Predictor) -> None:
    servable: ServablePredictor = predictor  # mypy checks the structure
    assert servable.labels == predictor.labels
    assert replace(servable.info(), device="cuda").device == "cuda"  # a frozen record


def _flushes_denormals() -> bool:
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0)


def test_the_library_leaves_process_wide_torch_state_alone(run: Path) -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    threads = torch.get_num_threads()
    try:
        Predictor.from_run(run, backend="torch").predict(TEXTS)
        assert not _flushes_denormals()
        assert torch.get_num_threads() == threads
    finally:
        torch.set_flush_denormal(True)
