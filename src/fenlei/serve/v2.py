"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) over the loaded models.

KServe gateways and Triton clients talk to ``fenlei serve`` unchanged:

* ``GET /v2/health/live``, ``GET /v2/health/ready``: 200, else 400 (empty bodies);
* ``GET /v2``: server metadata (name, version, extensions);
* ``GET /v2/models/{name}[/versions/{version}]``: the model's inputs and outputs;
* ``GET /v2/models/{name}[/versions/{version}]/ready``;
* ``POST /v2/models/{name}[/versions/{version}]/infer``: one ``BYTES`` input ``text`` of
  shape ``[N]`` or ``[N, 1]``; outputs ``probabilities`` (``FP32 [N, C]``, columns in the
  order of the model's labels) and ``label`` (``BYTES [N]``, the most probable label).

A request may name the outputs it wants and ask for each as binary data (Triton's
``binary_tensor_data`` extension: ``parameters.binary_data``, or ``binary_data_output``
for all) or as the top k of the probabilities (``classification`` extension:
``"<probability>:<index>:<label>"`` strings, ``BYTES [N, k]``). Inputs may come as JSON or
as binary data (``Inference-Header-Content-Length``). Texts travel the same path as
``/v1/.../predict``: the token, body and size limits, the micro-batcher, metrics and drift.
Errors are the protocol's ``{"error": "<message>"}``: 400 for a malformed request, 404 for
an unknown model or version, 413 over a limit.

The wire format (the JSON objects, BYTES tensors, a request's texts) is
:mod:`fenlei.serve.v2_wire`.

Example:
    >>> add_v2_routes(app)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from fenlei._version import __version__
from fenlei.decision import decide
from fenlei.serve.app import ServedModel, ServeState, _state
from fenlei.serve.guard import bearer_ok
from fenlei.serve.v2_wire import (
    HEADER_LENGTH,
    INPUT,
    LABEL,
    OUTPUTS,
    PROBABILITIES,
    InferRequest,
    InferResponse,
    TensorMetadata,
    V2Error,
    V2ModelMetadata,
    V2ServerMetadata,
    parse_request,
    request_texts,
    serialize_bytes,
    split_body,
)

__all__ = ["add_v2_routes"]

# ---------------------------------------------------------------- encoding a response


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise V2Error(400, f"{where} parameter {key!r} is {value!r}; it must be true or false")
    return value


def _classification(parameters: dict[str, Any], name: str) -> int | None:
    k = parameters.get("classification")
    if k is None:
        return None
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise V2Error(400, f"output {name!r}: classification is {k!r}; give a count of 1 or more")
    if name != PROBABILITIES:
        raise V2Error(400, f"output {name!r} cannot be classified; ask it of {PROBABILITIES!r}")
    return k


def _requested(request: InferRequest) -> list[tuple[str, bool, int | None]]:
    """(name, as binary, classification top k) per output to return, in request order."""
    all_binary = _flag(request.parameters, "binary_data_output", "request")
    if request.outputs is None:
        return [(name, all_binary, None) for name in OUTPUTS]
    chosen: list[tuple[str, bool, int | None]] = []
    for out in request.outputs:
        if out.name not in OUTPUTS:
            raise V2Error(400, f"unknown output {out.name!r}; this model has {list(OUTPUTS)}")
        if any(out.name == name for name, _, _ in chosen):
            raise V2Error(400, f"output {out.name!r} is requested twice")
        binary = _flag(out.parameters, "binary_data", f"output {out.name!r}") or all_binary
        chosen.append((out.name, binary, _classification(out.parameters, out.name)))
    return chosen


def _top_k(probs: np.ndarray, labels: tuple[str, ...], k: int) -> list[str]:
    """Triton's classification strings, row-major (N, k): ``probability:index:label``."""
    k = min(k, len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (N, C) -> (N, k)
    return [f"{probs[i, j]:f}:{j}:{labels[j]}" for i, row in enumerate(order) for j in row]


def _tensor(
    name: str, served: ServedModel, probs: np.ndarray, k: int | None
) -> tuple[str, list[int], list[Any] | np.ndarray]:
    """(datatype, shape, values) of one output."""
    labels = served.predictor.labels
    n = probs.shape[0]
    if k is not None:
        return "BYTES", [n, min(k, len(labels))], _top_k(probs, labels, k)
    if name == PROBABILITIES:
        return "FP32", [n, len(labels)], probs.astype("<f4", copy=False)
    decided = decide(probs, labels, served.predictor.rule)
    return "BYTES", [n], [d.label for d in decided]


def _encode(
    served: ServedModel, request: InferRequest, probs: np.ndarray
) -> tuple[dict[str, Any], bytes]:
    """The response's JSON and the binary data that follows it."""
    outputs, chunks = [], []
    for name, binary, k in _requested(request):
        datatype, shape, values = _tensor(name, served, probs, k)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = values.tobytes() if isinstance(values, np.ndarray) else serialize_bytes(values)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = values.ravel().tolist() if isinstance(values, np.ndarray) else values
        outputs.append(tensor)
    body: dict[str, Any] = {"model_name": served.name, "model_version": served.info.version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = outputs
    return body, b"".join(chunks)


def _respond(body: dict[str, Any], binary: bytes) -> Response:
    header = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    if not binary:
        return Response(header, media_type="application/json")
    return Response(
        header + binary,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


# ---------------------------------------------------------------- routes


async def _authorize(request: Request, state: ServeState = Depends(_state)) -> None:
    # The Guard middleware has already refused a wrong token on /v2/models; this keeps the
    # check with the routes should the app be mounted without it.
    token = state.settings.token
    if token is not None and not bearer_ok(request.scope["headers"], token):
        error = V2Error(401, "missing or wrong bearer token: send `Authorization: Bearer <token>`")
        error.headers = {"WWW-Authenticate": "Bearer"}
        raise error


async def _model(
    name: str, state: ServeState = Depends(_state), _: None = Depends(_authorize)
) -> ServedModel:
    served = state.models.get(name)
    if served is None:
        known = ", ".join(sorted(state.models)) or "none"
        raise V2Error(404, f"no model named {name!r}; loaded: {known}")
    return served


async def _versioned(version: str, served: ServedModel = Depends(_model)) -> ServedModel:
    if version != served.info.version:
        raise V2Error(
            404, f"model {served.name!r} has version {served.info.version!r}, not {version!r}"
        )
    return served


async def live() -> Response:
    """Server liveness: 200 while the process answers."""
    return Response(status_code=200)


async def ready(state: ServeState = Depends(_state)) -> Response:
    """Server readiness: 200 once every model is loaded, 400 while starting or stopping."""
    return Response(status_code=200 if state.ready else 400)


async def server_metadata() -> V2ServerMetadata:
    """The server's name, version and the protocol extensions it supports."""
    return V2ServerMetadata(
        name="fenlei", version=__version__, extensions=["binary_tensor_data", "classification"]
    )


def _metadata(served: ServedModel) -> V2ModelMetadata:
    n_labels = len(served.info.labels)
    return V2ModelMetadata(
        name=served.name,
        versions=[served.info.version],
        platform=f"fenlei_{served.info.backend}",
        inputs=[TensorMetadata(name=INPUT, datatype="BYTES", shape=[-1])],
        outputs=[
            TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, n_labels]),
            TensorMetadata(name=LABEL, datatype="BYTES", shape=[-1]),
        ],
    )


def _model_routes(served_dependency: Any) -> tuple[Any, Any, Any]:
    """The metadata, ready and infer handlers over one way of finding the model."""

    async def metadata(served: ServedModel = Depends(served_dependency)) -> V2ModelMetadata:
        """The model's inputs and outputs (probabilities' columns: GET /v1/models/{name})."""
        return _metadata(served)

    async def model_ready(
        served: ServedModel = Depends(served_dependency), state: ServeState = Depends(_state)
    ) -> Response:
        """Model readiness: 200 when it can take requests, 400 while starting or stopping."""
        return Response(status_code=200 if state.ready else 400)

    async def infer(
        request: Request,
        served: ServedModel = Depends(served_dependency),
        state: ServeState = Depends(_state),
    ) -> Response:
        """Classify a BYTES tensor of texts: probabilities (FP32 [N, C]) and labels (BYTES
        [N]), as JSON or binary data (Triton's binary tensor extension)."""
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise V2Error(400, f"Content-Encoding {encoding!r} is not supported; send it plain")
        header, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
        parsed = parse_request(header)
        texts = request_texts(parsed, binary, state.settings)
        _requested(parsed)  # a bad output request is refused before the model runs
        probs = await served.batcher.submit(texts)
        return _respond(*_encode(served, parsed, probs))

    return metadata, model_ready, infer


# The JSON form of an inference request, as far as fenlei reads it (the protocol allows more
# parameters; they are ignored). Written out because the model's own schema says "any
# parameters", which documents nothing.
_INFER_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"binary_data_output": {"type": "boolean"}},
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "enum": [INPUT]},
                    "datatype": {"type": "string", "enum": ["BYTES"]},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "data": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "enum": list(OUTPUTS)},
                    "parameters": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "binary_data": {"type": "boolean"},
                            "classification": {"type": "integer", "minimum": 1},
                        },
                    },
                },
            },
        },
    },
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _INFER_SCHEMA,
                "example": {
                    "inputs": [
                        {
                            "name": INPUT,
                            "datatype": "BYTES",
                            "shape": [1],
                            "data": ["where is my parcel?"],
                        }
                    ]
                },
            }
        },
    }
}
_V2_ERROR = {
    "description": "the protocol's error object",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            },
            "example": {"error": "no model named 'x'; loaded: intents"},
        }
    },
}


async def _on_v2_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, V2Error)
    content = json.dumps({"error": exc.message}, ensure_ascii=True).encode()
    return Response(
        content, status_code=exc.status, headers=exc.headers, media_type="application/json"
    )


def add_v2_routes(app: FastAPI) -> None:
    """Register the Open Inference Protocol's routes (``/v2/...``) and their error shape."""
    app.add_exception_handler(V2Error, _on_v2_error)
    tags: list[str | Enum] = ["Open Inference Protocol (v2)"]
    empty: dict[int | str, dict[str, Any]] = {
        200: {"description": "yes (empty body)"},
        400: {"description": "no (empty body)"},
    }
    app.get("/v2/health/live", tags=tags, response_class=Response, responses=empty)(live)
    app.get("/v2/health/ready", tags=tags, response_class=Response, responses=empty)(ready)
    app.get("/v2", tags=tags, response_model=V2ServerMetadata)(server_metadata)
    errors: dict[int | str, dict[str, Any]] = {c: _V2_ERROR for c in (400, 401, 404, 413)}
    for prefix, dependency in (
        ("/v2/models/{name}", _model),
        ("/v2/models/{name}/versions/{version}", _versioned),
    ):
        metadata, model_ready, infer = _model_routes(dependency)
        versioned = "version" in prefix
        app.get(
            prefix,
            tags=tags,
            response_model=V2ModelMetadata,
            responses=errors,
            include_in_schema=not versioned,
        )(metadata)
        app.get(
            prefix + "/ready",
            tags=tags,
            response_class=Response,
            responses={**errors, **empty},
            include_in_schema=not versioned,
        )(model_ready)
        app.post(
            prefix + "/infer",
            tags=tags,
            response_model=InferResponse,
            responses=errors,
            openapi_extra=_INFER_BODY,
            include_in_schema=not versioned,
        )(infer)
