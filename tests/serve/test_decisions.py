"""The service decides as the library does when a run folder carries a calibration: the
temperature, per-label thresholds and the reject option (``abstained``) of
``calibration.json``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fenlei.data import Dataset
from fenlei.decision import decide
from fenlei.predict import Predictor

from .conftest import StartServer

ML_TEXTS = [
    "charged twice on my card #3",
    "double charge refund it",
    "parcel lost give my money back please",
    "where is the parcel",
    "send my money back",
    "hello",
    "the weather is nice today",
]


def test_served_labels_use_the_per_label_thresholds(
    start_server: StartServer, thresholds_run: Path
) -> None:
    predictor = Predictor.from_run(thresholds_run, backend="torch")
    assert isinstance(predictor.rule.threshold, tuple)
    want = [
        d.labels
        for d in decide(predictor.predict_proba(ML_TEXTS), predictor.labels, predictor.rule)
    ]
    server = start_server({"tags": thresholds_run}, backend="torch")
    with server.client() as c:
        body = c.post("/v1/models/tags/predict", json={"texts": ML_TEXTS}).json()
    assert [tuple(p["labels"]) for p in body["predictions"]] == want
    for served, expected in zip(body["predictions"], predictor.predict(ML_TEXTS), strict=True):
        assert served["score"] == pytest.approx(expected.score, abs=1e-6)  # calibrated alike
        assert served["abstained"] is False


def test_served_predictions_say_when_the_model_abstains(
    start_server: StartServer, abstaining_run: Path, bundled: dict[str, Dataset]
) -> None:
    predictor = Predictor.from_run(abstaining_run, backend="torch")
    texts = bundled["test"].texts[:40]
    expected = predictor.predict(texts)
    assert any(p.abstained for p in expected) and not all(p.abstained for p in expected)
    server = start_server({"intents": abstaining_run}, backend="torch")
    with server.client() as c:
        body = c.post("/v1/models/intents/predict", json={"texts": texts}).json()
    served = body["predictions"]
    assert [p["abstained"] for p in served] == [p.abstained for p in expected]
    assert [p["labels"] for p in served] == [list(p.labels) for p in expected]
    assert [p["label"] for p in served] == [p.label for p in expected]
