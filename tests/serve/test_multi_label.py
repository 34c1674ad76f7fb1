"""A served multi-label model decides as the library does: the run's threshold, every label
that reaches it (maybe none, maybe several), the same labels as ``Predictor.predict``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fenlei.cli import main
from fenlei.predict import Predictor

from .conftest import StartServer

_PHRASES = {
    ("billing",): "charged twice on my card",
    ("refund",): "send my money back",
    ("shipping",): "where is the parcel",
    ("billing", "refund"): "double charge refund it",
    ("refund", "shipping"): "parcel lost give my money back",
}
TEXTS = [
    "charged twice on my card #3",
    "double charge refund it",
    "parcel lost give my money back please",
    "where is the parcel",
    "send my money back",
    "hello",
    "ok",
    "the weather is nice today",
]


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny multi-label linear run (threshold 0.4) trained on a synthetic JSONL table."""
    folder = tmp_path_factory.mktemp("multi")
    phrases = list(_PHRASES.items())
    rows = [
        {"text": f"{text} #{i}", "label": list(labels)}
        for i in range(100)
        for labels, text in [phrases[i % len(phrases)]]
    ]
    table = folder / "ml.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    run = folder / "run"
    settings = [
        "train.epochs=20",
        "train.lr=0.05",
        "train.threads=1",
        "model.buckets=500",
        "encoder.min_frequency=1",
        "eval.plots=false",
        "eval.threshold=0.4",
        "eval.per_label_thresholds=false",  # one threshold for all (tests/serve/test_decisions.py)
    ]
    args = ["train", str(table), "--multi-label", "--out", str(run)]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 0
    return run


def test_served_labels_are_predictor_labels(
    start_server: StartServer, multi_label_run: Path
) -> None:
    predictor = Predictor.from_run(multi_label_run, backend="torch")
    assert predictor.multi_label and predictor.threshold == pytest.approx(0.4)
    expected = predictor.predict(TEXTS)
    server = start_server({"tags": multi_label_run}, backend="torch")
    with server.client() as c:
        info = c.get("/v1/models").json()["models"][0]
        body = c.post("/v1/models/tags/predict", json={"texts": TEXTS, "top_k": 3}).json()
    assert info["multi_label"] is True
    served = body["predictions"]
    assert [p["labels"] for p in served] == [list(e.labels) for e in expected]
    assert [p["label"] for p in served] == [e.label for e in expected]
    for pred, exp in zip(served, expected, strict=True):
        assert pred["score"] == pytest.approx(exp.score, abs=1e-6)
        # every chosen label reaches the run's threshold; no other label does
        probs = exp.probs
        assert set(pred["labels"]) == {lab for lab, p in probs.items() if p >= 0.4}
    # the threshold matters here: some text gets several labels, which an argmax never gives
    assert any(len(p["labels"]) > 1 for p in served)
