"""The Open Inference Protocol (KServe v2) routes, driven by Triton's own HTTP client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fenlei.predict import Predictor
from fenlei.serve.v2_wire import deserialize_bytes, serialize_bytes

from .conftest import LiveServer, StartServer

httpclient = pytest.importorskip("tritonclient.http")
utils = pytest.importorskip("tritonclient.utils")

TEXTS = ["where is my parcel?", "我要退款", "can I talk to a human", "ok"]


@pytest.fixture
def triton(live: LiveServer) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(url=live.url.removeprefix("http://"))
    yield client
    client.close()


def _text_input(texts: list[str], *, binary: bool, column: bool = False) -> Any:
    array = np.array(texts, dtype=np.object_)
    if column:
        array = array.reshape(-1, 1)
    tensor = httpclient.InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata(triton: Any, predictor: Predictor) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("intents")
    assert not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("intents")
    n = len(predictor.labels)
    assert meta["name"] == "intents" and meta["versions"] == [predictor.info().version]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    server = triton.get_server_metadata()
    assert server["name"] == "fenlei" and "binary_tensor_data" in server["extensions"]


def test_infer_with_the_clients_defaults_is_binary(triton: Any, predictor: Predictor) -> None:
    result = triton.infer("intents", [_text_input(TEXTS, binary=True)])
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (len(TEXTS), len(predictor.labels))
    np.testing.assert_allclose(probs, predictor.predict_proba(TEXTS), atol=1e-6)
    labels = [b.decode() for b in result.as_numpy("label")]
    assert labels == [p.label for p in predictor.predict(TEXTS)]
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] > 0


def test_infer_json_both_ways_with_requested_outputs(triton: Any, predictor: Predictor) -> None:
    outputs = [httpclient.InferRequestedOutput("label", binary_data=False)]
    result = triton.infer(
        "intents",
        [_text_input(TEXTS, binary=False, column=True)],
        outputs=outputs,
        request_id="r-7",
    )
    response = result.get_response()
    assert response["id"] == "r-7" and [o["name"] for o in response["outputs"]] == ["label"]
    assert response["outputs"][0]["data"] == [p.label for p in predictor.predict(TEXTS)]
    assert result.as_numpy("probabilities") is None


def test_classification_extension_gives_top_k(triton: Any, predictor: Predictor) -> None:
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=2)]
    result = triton.infer("intents", [_text_input(TEXTS, binary=True)], outputs=outputs)
    top = result.as_numpy("probabilities")
    assert top.shape == (len(TEXTS), 2)
    expected = predictor.predict_proba(TEXTS)
    for row, probs in zip(top, expected, strict=True):
        score, index, label = row[0].decode().split(":", 2)
        assert int(index) == int(probs.argmax()) and label == predictor.labels[int(index)]
        assert float(score) == pytest.approx(float(probs.max()), abs=1e-5)


def test_client_mistakes_raise_the_servers_message(triton: Any) -> None:
    with pytest.raises(utils.InferenceServerException, match=r"text\[1\] is empty") as exc:
        triton.infer("intents", [_text_input(["fine", "  "], binary=True)])
    assert exc.value.status() == "400"
    with pytest.raises(utils.InferenceServerException, match="no model named 'nope'") as exc:
        triton.infer("nope", [_text_input(["fine"], binary=False)])
    assert exc.value.status() == "404"
    with pytest.raises(utils.InferenceServerException, match="unknown output 'logits'"):
        triton.infer(
            "intents",
            [_text_input(["fine"], binary=True)],
            outputs=[httpclient.InferRequestedOutput("logits")],
        )


def _post(live: LiveServer, body: Any, **kwargs: Any) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with live.client() as c:
        return c.post("/v2/models/intents/infer", content=content, **kwargs)


def _request(data: list[Any], shape: list[int] | None = None, datatype: str = "BYTES") -> Any:
    shape = [len(data)] if shape is None else shape
    return {"inputs": [{"name": "text", "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{nope", 400, "not valid JSON"),
        ({"inputs": []}, 400, "invalid inference request: inputs"),
        (_request(["a"], datatype="FP32"), 400, "datatype 'FP32'"),
        (_request(["a", "b"], shape=[3]), 400, "shape [3] but 2 elements"),
        (_request(["a"], shape=[1, 2]), 400, "send [N] or [N, 1]"),
        (_request(["a", 5]), 400, "text[1] is int"),
        (_request([""]), 400, "text[0] is empty"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, 400, "'x'"),
        (_request(["a"] * 9), 413, "max_texts"),
        (_request(["a" * 501]), 413, "max_chars"),
        ({**_request(["a"]), "outputs": [{"name": "label"}] * 2}, 400, "twice"),
        ({**_request(["a"]), "parameters": {"binary_data_output": "yes"}}, 400, "true or false"),
    ],
)
def test_mistakes_are_4xx_with_the_protocols_error(
    live: LiveServer, body: Any, status: int, message: str
) -> None:
    r = _post(live, body)
    assert r.status_code == status
    error = r.json()["error"]
    assert isinstance(error, str) and message in error


def test_binary_input_is_checked(live: LiveServer) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    bad = header + b"\x09\x00\x00\x00abcd"  # declares 9 bytes, 4 follow
    r = _post(live, bad, headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and "declares 9 bytes" in r.json()["error"]
    r = _post(live, bad, headers={"Inference-Header-Content-Length": "x"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_bytes_round_trip() -> None:
    items = ["a", "", "退款 😀"]
    assert [b.decode() for b in deserialize_bytes(serialize_bytes(items))] == items


def test_token_guards_models_not_health(start_server: StartServer, serve_run: Path) -> None:
    server = start_server({"intents": serve_run}, token="s3cret")
    with server.client() as c:
        assert c.get("/v2/health/ready").status_code == 200
        r = c.post("/v2/models/intents/infer", json=_request(["hi"]))
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
        ok = c.post(
            "/v2/models/intents/infer",
            json=_request(["hi"]),
            headers={"Authorization": "Bearer s3cret"},
        )
    assert ok.status_code == 200


def test_versioned_routes_and_metrics(live: LiveServer, predictor: Predictor) -> None:
    version = predictor.info().version
    with live.client() as c:
        ok = c.post(f"/v2/models/intents/versions/{version}/infer", json=_request(["hi"]))
        wrong = c.get("/v2/models/intents/versions/0/ready")
        text = c.get("/metrics").text
    assert ok.status_code == 200 and ok.json()["model_version"] == version
    assert wrong.status_code == 404 and "not '0'" in wrong.json()["error"]
    assert 'route="/v2/models/{name}/versions/{version}/infer",status="200"' in text
    assert 'fenlei_predictions_total{label="' in text
