"""Rough edges of the REST service a new user hit: empty texts, one model's description, a
health answer that names the models, and Prometheus' process series without ``_created``
duplicates. (The CLI's side, one prediction shape and the empty text: test_cli_json.py.)"""

from __future__ import annotations

import pytest

from fenlei.predict import Predictor
from fenlei.serve.schemas import ModelDetail

from .conftest import LiveServer

TEXTS = ["where is my parcel?", "我要退款", "can I talk to a human"]


@pytest.mark.parametrize("empty", ["", "  ", "\n\t"])
def test_empty_text_is_422_naming_the_item(live: LiveServer, empty: str) -> None:
    with live.client() as c:
        r = c.post("/v1/models/intents/predict", json={"texts": ["fine", empty]})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("texts[1] is empty")


def test_get_one_model_describes_it(live: LiveServer, predictor: Predictor) -> None:
    with live.client() as c:
        r = c.get("/v1/models/intents")
        missing = c.get("/v1/models/nope")
    assert r.status_code == 200
    detail = ModelDetail.model_validate(r.json())
    assert detail.name == "intents" and detail.labels == list(predictor.labels)
    assert detail.architecture == "linear.v2" and detail.backend == "torch"
    assert detail.device == "cpu" and detail.temperature == predictor.calibration.temperature
    assert detail.decision.multi_label is False and detail.decision.thresholds is None
    assert detail.limits.max_texts == 8 and detail.limits.max_chars == 500
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"


def test_healthz_names_the_loaded_models(live: LiveServer) -> None:
    with live.client() as c:
        assert c.get("/healthz").json() == {"status": "ok", "models": ["intents"]}


def test_metrics_have_process_series_and_no_created(live: LiveServer) -> None:
    with live.client() as c:
        c.post("/v1/models/intents/predict", json={"texts": TEXTS})
        text = c.get("/metrics").text
    for name in (
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "python_info{",
        "python_gc_collections_total{",
        'fenlei_http_requests_total{route="/v1/models/{name}/predict",status="200"}',
    ):
        assert name in text, name
    assert "_created" not in text
