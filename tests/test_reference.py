"""Reference statistics written at training time, and PSI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fenlei.classifier import TextClassifier
from fenlei.reference import STATISTICS, bin_shares, psi, reference_stats


def test_psi_is_zero_for_equal_and_large_for_shifted() -> None:
    assert psi([0.25] * 4, [0.25] * 4) == pytest.approx(0.0)
    assert psi([0.25] * 4, [0.7, 0.1, 0.1, 0.1]) > 0.2


def test_bin_shares() -> None:
    assert bin_shares([0.0, 0.4, 0.6, 1.0], [0.0, 0.5, 1.0]) == [0.5, 0.5]
    assert bin_shares([], [0.0, 1.0]) == [0.0]


def test_training_writes_reference_json(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clf = TextClassifier(
        "linear",
        overrides=["train.epochs=1", "model.buckets=1000", "eval.plots=false"],
        run_dir=tmp_path / "run",
    )
    clf.fit(bundled["train"].texts[:200], [lab[0] for lab in bundled["train"].labels[:200]])
    ref = json.loads((tmp_path / "run" / "reference.json").read_text())
    assert set(ref["statistics"]) == set(STATISTICS)
    for stat in ref["statistics"].values():
        assert len(stat["shares"]) == len(stat["edges"]) - 1
        assert sum(stat["shares"]) == pytest.approx(1.0)
    again = reference_stats(clf.predictor_, bundled["dev"].texts)
    assert again["n"] == len(bundled["dev"])


def test_precomputed_probabilities_are_reused(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fenlei.predict import Predictor

    clf = TextClassifier(
        "linear",
        overrides=["train.epochs=1", "model.buckets=1000", "eval.plots=false"],
        run_dir=tmp_path / "run",
    )
    clf.fit(bundled["train"].texts[:200], [lab[0] for lab in bundled["train"].labels[:200]])
    predictor = Predictor.from_run(tmp_path / "run", backend="torch")
    texts = bundled["dev"].texts
    fresh = reference_stats(predictor, texts)
    probs = predictor.predict_proba(texts)

    def no_model(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the model ran again")

    predictor.predict_proba = no_model  # type: ignore[method-assign]
    predictor.score = no_model  # type: ignore[method-assign]
    assert reference_stats(predictor, texts, probs=probs) == fresh
    with pytest.raises(ValueError, match="rows of probabilities"):
        reference_stats(predictor, texts, probs=probs[:3])
