"""Calibration, per-label thresholds and the reject option (fenlei.calibrate and its uses).

Unit checks run on synthetic logits; the end-to-end checks train tiny linear models on the
bundled data (or a small synthetic multi-label table) and follow the fitted values through
the run folder, Predictor, evaluate, the CLI and the HTTP service.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, softmax

from fenlei.artifact import write_manifest
from fenlei.calibrate import (
    CALIBRATION_FILE,
    Calibration,
    choose_reject,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    read_calibration,
    reject_point,
    tune_thresholds,
)
from fenlei.cli import main
from fenlei.config import load_config
from fenlei.data import Dataset, load_table
from fenlei.decision import DecisionRule, decide
from fenlei.errors import ArtifactError, ConfigError
from fenlei.evaluate import evaluate, label_targets, score_probabilities
from fenlei.pipeline import prepare_splits, train_run
from fenlei.predict import Predictor
from fenlei.reference import reference_stats
from tests.conftest import CALIBRATION_TINY

# ---------------------------------------------------------------- synthetic logits


def _softmax_data(temperature: float, n: int = 20000, c: int = 4, seed: int = 0):  # type: ignore[no-untyped-def]
    """Labels drawn from softmax(z); the model reports z * temperature (over-confident for
    temperature > 1), so the temperature that calibrates it is ``temperature``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, c))
    y = np.array([rng.choice(c, p=p) for p in softmax(z, axis=1)])
    return z * temperature, y


def _sigmoid_data(temperature: float, n: int = 20000, c: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, c))
    y = (rng.random((n, c)) < expit(z)).astype(int)
    return z * temperature, y


@pytest.mark.parametrize("true_t", [0.5, 2.0, 3.0])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    logits, y = _softmax_data(true_t)
    fit = fit_temperature(logits, y, multi_label=False)
    assert fit.temperature == pytest.approx(true_t, rel=0.06)
    assert fit.nll_after < fit.nll_before and fit.note is None


def test_fit_recovers_a_known_temperature_for_sigmoid_outputs() -> None:
    logits, y = _sigmoid_data(2.5)
    assert fit_temperature(logits, y, multi_label=True).temperature == pytest.approx(2.5, rel=0.06)
    # a one-logit binary head: (N, 1) logits, class ids as targets
    one = fit_temperature(logits[:, :1], y[:, 0], multi_label=False)
    assert one.temperature == pytest.approx(2.5, rel=0.1)


def test_ece_drops_on_an_over_confident_toy_model() -> None:
    logits, y = _softmax_data(3.0, seed=1)
    before = expected_calibration_error(softmax(logits, axis=1), y, multi_label=False)
    fit = fit_temperature(logits, y, multi_label=False)
    after = expected_calibration_error(
        softmax(logits / fit.temperature, axis=1), y, multi_label=False
    )
    assert before > 0.1 and after < 0.02
    ml_logits, ml_y = _sigmoid_data(3.0, seed=1)
    ml_fit = fit_temperature(ml_logits, ml_y, multi_label=True)
    assert expected_calibration_error(
        expit(ml_logits / ml_fit.temperature), ml_y, multi_label=True
    ) < 0.5 * expected_calibration_error(expit(ml_logits), ml_y, multi_label=True)


def test_ece_of_a_perfectly_calibrated_and_a_wrong_model() -> None:
    probs = np.array([[0.25, 0.75]] * 4)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 0]), multi_label=False) == 0
    # always 90 % sure, always wrong: |0 - 0.9| in the one bin used
    wrong = np.array([[0.9, 0.1]] * 5)
    assert expected_calibration_error(wrong, np.ones(5, dtype=int), multi_label=False) == 0.9
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0), multi_label=False) == 0


def test_a_dev_set_without_errors_keeps_the_temperature() -> None:
    logits = np.array([[3.0, -1.0], [-2.0, 1.0]])
    fit = fit_temperature(logits, np.array([0, 1]), multi_label=False)
    assert fit.temperature == 1.0 and fit.note is not None and "every dev decision" in fit.note


def test_calibration_keeps_the_argmax_and_row_sums() -> None:
    logits, _ = _softmax_data(1.0, n=200, c=5)
    for t in (0.2, 0.7, 4.0):
        scaled = Calibration(temperature=t).scale(logits)
        np.testing.assert_array_equal(scaled.argmax(axis=1), logits.argmax(axis=1))


# ---------------------------------------------------------------- thresholds and reject


def test_thresholds_best_f1_and_target_precision() -> None:
    probs = np.array([[0.95, 0.9], [0.8, 0.2], [0.6, 0.7], [0.3, 0.1], [0.2, 0.6]])
    truth = np.array([[1, 1], [1, 0], [0, 1], [0, 0], [1, 0]])
    fit = tune_thresholds(probs, truth)
    chosen = DecisionRule(multi_label=True, threshold=fit.thresholds).choose(probs)
    # label 0: the best F1 (0.8) keeps 0.95 and 0.8; label 1 keeps 0.9 and 0.7 (F1 1)
    assert chosen[:, 0].tolist() == [True, True, False, False, False]
    np.testing.assert_array_equal(chosen[:, 1], truth[:, 1].astype(bool))
    assert fit.thresholds == pytest.approx((0.7, 0.65))  # halfway to the next dev score below
    # precision >= 0.6 with the highest recall keeps every text of label 0 (P 0.6, R 1)
    loose = tune_thresholds(probs, truth, min_precision=0.6)
    assert loose.thresholds[0] == pytest.approx(0.1) and loose.unmet == ()
    assert tune_thresholds(probs, truth, min_precision=1.0).thresholds == fit.thresholds


def test_an_unreachable_precision_is_reported_and_a_label_without_positives_is_left() -> None:
    probs = np.array([[0.9, 0.2], [0.9, 0.3], [0.1, 0.1]])
    truth = np.array([[1, 0], [0, 0], [1, 0]])  # two identical scores, one right, one wrong
    fit = tune_thresholds(probs, truth, min_precision=0.9, default=0.4)
    assert fit.unmet == (0,) and fit.best_precision == (pytest.approx(2 / 3),)
    assert fit.untuned == (1,) and fit.thresholds[1] == 0.4


def test_coverage_curve_and_reject_point() -> None:
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.3, 0.7], [0.45, 0.55], [0.6, 0.4]])
    y = np.array([0, 0, 1, 0, 1])  # the two least confident are wrong
    curve = coverage_curve(probs, y)
    assert [round(p.coverage, 2) for p in curve] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert [p.accuracy for p in curve][:3] == [1.0, 1.0, 1.0]
    point = choose_reject(probs, y, 0.9)
    assert point is not None and point.coverage == pytest.approx(0.6) and point.accuracy == 1.0
    assert 0.6 < point.threshold < 0.7  # halfway between 0.7 (kept) and 0.6 (not)
    assert reject_point(probs, y, point.threshold) == pytest.approx(point)  # type: ignore[comparison-overlap]
    assert choose_reject(probs, y, 0.5) == reject_point(probs, y, 0.0)  # everything kept
    assert choose_reject(np.array([[0.9, 0.1]]), np.array([1]), 0.5) is None


def test_the_rule_abstains_below_its_reject_point() -> None:
    probs = np.array([[0.9, 0.1], [0.55, 0.45]])
    rule = DecisionRule(abstain_below=0.6)
    decided = decide(probs, ["a", "b"], rule)
    assert [d.abstained for d in decided] == [False, True]
    assert decided[1].labels == () and decided[1].label == "a"  # still the most probable
    assert rule.predicted(probs).tolist() == [0, 0]  # scores at full coverage
    multi = DecisionRule(multi_label=True, abstain_below=0.6)  # ignored for multi-label
    assert not multi.abstained(probs).any()


def test_calibration_json_round_trip_and_bad_files(tmp_path: Path) -> None:
    cal = Calibration(temperature=1.7, thresholds=(0.3, 0.6), details={"why": "test"})
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(cal.to_json()), encoding="utf-8")
    assert read_calibration(tmp_path, 2) == cal
    with pytest.raises(ArtifactError, match="2 thresholds for 3 labels"):
        read_calibration(tmp_path, 3)
    for bad in ({"temperature": -1}, {"temperature": 1, "colour": "red"}, [1, 2]):
        (tmp_path / CALIBRATION_FILE).write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(ArtifactError, match=CALIBRATION_FILE):
            read_calibration(tmp_path, 2)
    (tmp_path / CALIBRATION_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="not readable JSON"):
        read_calibration(tmp_path, 2)
    assert read_calibration(tmp_path / "missing", 2).is_identity


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.min_precision=0.9"], "multi-label data"),
        (["data.multi_label=true", "eval.abstain_target_accuracy=0.9"], "single-label"),
        (["data.multi_label=true", "eval.min_precision=1.5"], "eval.min_precision"),
        (
            ["data.multi_label=true", "eval.min_precision=0.9", "eval.per_label_thresholds=false"],
            "per_label_thresholds=true",
        ),
    ],
)
def test_decision_settings_that_cannot_work(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("linear", overrides)


def test_cli_min_precision_on_single_label_data_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "d.csv"
    table.write_text("text,label\n" + "".join(f"t {i},{'ab'[i % 2]}\n" for i in range(30)))
    assert main(["train", str(table), "--min-precision", "0.9", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "abstain_target_accuracy" in err[0]
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- end to end: single-label

TINY = CALIBRATION_TINY


def test_training_fits_saves_and_applies_a_temperature(abstaining_run: Path, bundled) -> None:  # type: ignore[no-untyped-def]
    metrics = json.loads((abstaining_run / "metrics.json").read_text(encoding="utf-8"))
    cal = metrics["calibration"]
    assert cal["bins"] == 15 and set(cal["ece_before"]) == {"dev", "test"}
    assert cal["ece_after"]["dev"] < cal["ece_before"]["dev"]
    assert cal["nll_after"] < cal["nll_before"]
    manifest = json.loads((abstaining_run / "manifest.json").read_text(encoding="utf-8"))
    assert CALIBRATION_FILE in manifest["files"]
    saved = read_calibration(abstaining_run, 12)
    assert saved.temperature == pytest.approx(cal["temperature"]) != 1.0
    predictor = Predictor.from_run(abstaining_run, backend="torch")
    texts = bundled["test"].texts[:20]
    logits = predictor.logits(texts)
    np.testing.assert_allclose(
        predictor.predict_proba(texts), softmax(logits / saved.temperature, axis=1), atol=1e-5
    )
    # the reference the drift monitor compares with describes the calibrated confidences
    reference = json.loads((abstaining_run / "reference.json").read_text(encoding="utf-8"))
    dev = bundled["dev"].texts
    now = reference_stats(predictor, dev)["statistics"]["confidence"]["shares"]
    np.testing.assert_allclose(reference["statistics"]["confidence"]["shares"], now, atol=1e-9)


def test_abstain_in_the_api_evaluate_and_cli(
    abstaining_run: Path, bundled, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    predictor = Predictor.from_run(abstaining_run, backend="torch")
    metrics = json.loads((abstaining_run / "metrics.json").read_text(encoding="utf-8"))
    point = metrics["decision"]["abstain_below"]
    assert predictor.rule.abstain_below == pytest.approx(point)
    test = bundled["test"]
    predictions = predictor.predict(test.texts)
    out = [p for p in predictions if p.abstained]
    assert out and len(out) < len(predictions)
    assert all(p.labels == () and p.score < point for p in out)
    assert all(p.labels == (p.label,) and p.score >= point for p in predictions if not p.abstained)
    # evaluate: the chosen point is the run's, with the coverage the decisions give
    report = evaluate(predictor, test)["reject"]
    assert report["chosen"]["threshold"] == pytest.approx(point)
    assert report["chosen"]["coverage"] == pytest.approx(1 - len(out) / len(predictions))
    assert metrics["decision"]["coverage"]["test"]["coverage"] == pytest.approx(
        report["chosen"]["coverage"]
    )
    assert [c["coverage"] for c in report["curve"]] == sorted(
        (c["coverage"] for c in report["curve"]), reverse=True
    )
    # the CLI: predict marks the abstained text, evaluate prints the curve and the point
    text = test.texts[predictions.index(out[0])]
    assert main(["predict", str(abstaining_run), text, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["abstained"] is True and row["label"] == out[0].label
    assert main(["predict", str(abstaining_run), text]) == 0
    assert "abstain (best:" in capsys.readouterr().out
    assert main(["evaluate", str(abstaining_run), test.source]) == 0
    shown = capsys.readouterr().out
    assert "Coverage and accuracy" in shown and "chosen (the run's reject point)" in shown


def test_a_run_without_calibration_file_loads_as_before(
    abstaining_run: Path, tmp_path: Path, bundled
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    old = shutil.copytree(abstaining_run, tmp_path / "old")
    (old / CALIBRATION_FILE).unlink()
    write_manifest(old)  # an older fenlei's folder: no calibration.json, none listed
    predictor = Predictor.from_run(old, backend="torch")
    assert predictor.calibration.is_identity and predictor.rule == DecisionRule()
    texts = bundled["test"].texts[:10]
    np.testing.assert_allclose(
        predictor.predict_proba(texts), softmax(predictor.logits(texts), axis=1), atol=1e-6
    )
    assert not any(p.abstained for p in predictor.predict(texts))


def test_calibration_can_be_turned_off(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config("linear", [*TINY, "eval.calibrate=false"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    result = train_run(cfg, splits, tmp_path / "run")
    assert not (tmp_path / "run" / CALIBRATION_FILE).exists()
    cal = result.metrics.calibration
    assert cal is not None and cal.temperature == 1.0 and cal.note == "eval.calibrate is off"
    assert cal.ece_after == cal.ece_before


# ---------------------------------------------------------------- end to end: multi-label

ML_TEXTS = [
    "charged twice on my card #3",
    "double charge refund it",
    "parcel lost give my money back please",
    "where is the parcel",
    "send my money back",
    "hello",
    "the weather is nice today",
]


def test_per_label_thresholds_are_saved_and_used_by_predict_and_evaluate(
    thresholds_run: Path,
) -> None:
    saved = read_calibration(thresholds_run, 3)
    assert saved.thresholds is not None and len(set(saved.thresholds)) > 1
    metrics = json.loads((thresholds_run / "metrics.json").read_text(encoding="utf-8"))
    assert list(metrics["decision"]["thresholds"].values()) == pytest.approx(saved.thresholds)
    predictor = Predictor.from_run(thresholds_run, backend="torch")
    assert predictor.rule == DecisionRule(multi_label=True, threshold=saved.thresholds)
    probs = predictor.predict_proba(ML_TEXTS)
    want = [d.labels for d in decide(probs, predictor.labels, predictor.rule)]
    got = predictor.predict(ML_TEXTS)
    assert [p.labels for p in got] == want
    for p in got:  # every chosen label reaches its own threshold, no other does
        assert set(p.labels) == {
            lab for j, lab in enumerate(predictor.labels) if p.probs[lab] >= saved.thresholds[j]
        }
    # evaluate decides with the same thresholds
    table = load_table(thresholds_run.parent / "ml.jsonl", predictor.info().data)
    sample = Dataset(table.examples[:40], table.source, True)
    scored = score_probabilities(
        predictor.predict_proba(sample.texts), sample, predictor.labels, predictor.rule
    ).to_json()
    assert evaluate(predictor, sample)["per_class"] == scored["per_class"]
    y = label_targets(sample, predictor.labels, True)
    decided = predictor.rule.predicted(predictor.predict_proba(sample.texts))
    assert scored["accuracy"] == pytest.approx(float((decided == y).all(axis=1).mean()))


def test_an_unreachable_min_precision_warns_and_keeps_best_f1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"text": "same words", "label": ["a"] if i % 2 else ["b"]} for i in range(40)]
    rows += [{"text": f"other words {i}", "label": ["b"]} for i in range(20)]
    table = tmp_path / "ml.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    args = ["train", str(table), "--multi-label", "--min-precision", "0.99"]
    args += ["--out", str(tmp_path / "run"), "--set", "eval.plots=false"]
    args += ["--set", "train.epochs=2", "--set", "model.buckets=500"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "'a'" not in captured.err and "a (at best" in captured.err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["decision"]["min_precision"] == 0.99 and "a" in metrics["decision"]["unmet"]


def test_predict_file_leaves_the_label_of_an_abstained_text_empty(
    abstaining_run: Path, bundled, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import csv

    test = bundled["test"]
    out = tmp_path / "scored.csv"
    assert main(["predict", str(abstaining_run), "--file", test.source, "--out", str(out)]) == 0
    with out.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    predictions = Predictor.from_run(abstaining_run, backend="torch").predict(test.texts)
    assert [r["predicted_label"] for r in rows] == [
        "" if p.abstained else p.label for p in predictions
    ]
    assert any(r["predicted_label"] == "" for r in rows)


def test_a_one_logit_binary_head_is_scaled_before_its_sigmoid(bundled) -> None:  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    from fenlei.config import EncoderConfig
    from fenlei.tokenize import train_encoder

    class OneLogit(nn.Module):  # (B, T) ids -> (B, 1): a fixed score per text
        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return ((ids * mask).sum(dim=1, keepdim=True) % 7 - 3).float()

    encoder = train_encoder(bundled["train"].texts, EncoderConfig(vocab_size=600))
    texts = bundled["test"].texts[:12]
    plain = Predictor(encoder, OneLogit(), ["neg", "pos"])
    scaled = plain.calibrated(Calibration(temperature=2.0))
    z = plain.logits(texts)
    assert z.shape == (12, 1)
    expected = expit(z[:, 0] / 2.0)
    np.testing.assert_allclose(scaled.predict_proba(texts)[:, 1], expected, atol=1e-6)
    np.testing.assert_allclose(scaled.predict_proba(texts).sum(axis=1), 1.0, atol=1e-6)
    assert [p.label for p in scaled.predict(texts)] == [p.label for p in plain.predict(texts)]
