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

Example:
    >>> add_v2_routes(app)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import struct
from enum import Enum
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from fenlei._version import __version__
from fenlei.data import check_text
from fenlei.decision import decide
from fenlei.serve.app import ServedModel, ServeState, _state
from fenlei.serve.guard import bearer_ok
from fenlei.serve.schemas import ServeSettings

__all__ = [
    "INPUT",
    "LABEL",
    "PROBABILITIES",
    "V2Error",
    "V2ModelMetadata",
    "V2ServerMetadata",
    "V2Tensor",
    "add_v2_routes",
    "deserialize_bytes",
    "serialize_bytes",
]

INPUT = "text"
PROBABILITIES = "probabilities"
LABEL = "label"
_OUTPUTS = (PROBABILITIES, LABEL)
_HEADER_LENGTH = "inference-header-content-length"
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix: 4 bytes, little-endian


class V2Error(Exception):
    """A failed v2 request, answered ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers: dict[str, str] | None = None


# ---------------------------------------------------------------- the protocol's JSON


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class V2Tensor(_Strict):
    """A tensor of a request or response: name, datatype, shape, data or binary size."""

    name: StrictStr
    datatype: StrictStr
    shape: list[StrictInt]
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class _RequestedOutput(_Strict):
    name: StrictStr
    parameters: dict[str, Any] = Field(default_factory=dict)


class _InferRequest(_Strict):
    id: StrictStr | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[_RequestedOutput] | None = None


class _InferResponse(_Strict):
    """What ``/infer`` answers (data, or ``parameters.binary_data_size`` after the JSON)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2Tensor]


class _TensorMetadata(_Strict):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(_Strict):
    """A model's metadata: versions, platform, inputs and outputs (``-1``: any size)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[_TensorMetadata]
    outputs: list[_TensorMetadata]


class V2ServerMetadata(_Strict):
    """The server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]


# ---------------------------------------------------------------- BYTES tensors


def serialize_bytes(items: list[str]) -> bytes:
    """BYTES elements in the binary layout: each a 4-byte little-endian length, then UTF-8.

    Example:
        >>> serialize_bytes(["ab"])
        b'\\x02\\x00\\x00\\x00ab'
    """
    parts = []
    for item in items:
        raw = item.encode("utf-8")
        parts += [_LENGTH.pack(len(raw)), raw]
    return b"".join(parts)


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """The elements of a binary BYTES tensor (the inverse of :func:`serialize_bytes`).

    Raises:
        V2Error: (400) an element's length runs past the end of the data.
    """
    items: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + _LENGTH.size > len(raw):
            raise V2Error(400, f"binary BYTES data ends inside element {len(items)}'s length")
        (size,) = _LENGTH.unpack_from(raw, at)
        at += _LENGTH.size
        if at + size > len(raw):
            raise V2Error(
                400, f"binary BYTES element {len(items)} declares {size} bytes; fewer follow"
            )
        items.append(raw[at : at + size])
        at += size
    return items


# ---------------------------------------------------------------- decoding a request


def _split_body(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(the JSON header, the binary data after it)."""
    if header_length is None:
        return raw, b""
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if not 0 <= size <= len(raw):
        raise V2Error(
            400,
            f"Inference-Header-Content-Length is {header_length!r}; it must be the JSON "
            f"header's size in bytes (0-{len(raw)})",
        )
    return raw[:size], raw[size:]


def _parse(header: bytes) -> _InferRequest:
    try:
        return _InferRequest.model_validate_json(header)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise V2Error(400, "the inference request is not valid JSON") from None
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise V2Error(400, f"invalid inference request: {problems}") from None


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _raw_texts(tensor: V2Tensor, binary: bytes) -> list[Any]:
    """The elements of the text input: from the binary data or the JSON ``data``."""
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise V2Error(
                400,
                f"input {INPUT!r} has binary_data_size {size!r}; {len(binary)} bytes of binary "
                "data follow the JSON header",
            )
        return list(deserialize_bytes(binary[:size]))
    if tensor.data is None:
        raise V2Error(400, f"input {INPUT!r} has no data (nor parameters.binary_data_size)")
    return _flatten(tensor.data)


def _check_shape(tensor: V2Tensor) -> int:
    if tensor.datatype != "BYTES":
        raise V2Error(
            400, f"input {INPUT!r} has datatype {tensor.datatype!r}; send the texts as BYTES"
        )
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise V2Error(
            400, f"input {INPUT!r} has shape {shape}; send [N] or [N, 1] texts (N at least 1)"
        )
    return shape[0]


def _decode_text(i: int, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            item = item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise V2Error(400, f"text[{i}] is not valid UTF-8 (byte {exc.start})") from None
    if not isinstance(item, str):
        raise V2Error(400, f"text[{i}] is {type(item).__name__}; every element must be a string")
    problem = check_text(item) or ("is empty" if not item.strip() else None)
    if problem is not None:
        raise V2Error(400, f"text[{i}] {problem}; send a non-empty text in valid Unicode")
    return item


def _texts(request: _InferRequest, binary: bytes, settings: ServeSettings) -> list[str]:
    """The request's texts, checked against the protocol, the model and the limits."""
    names = [t.name for t in request.inputs]
    if names != [INPUT]:
        raise V2Error(400, f"inputs {names}; this model takes one BYTES input named {INPUT!r}")
    (tensor,) = request.inputs
    n = _check_shape(tensor)
    if n > settings.max_texts:
        raise V2Error(
            413,
            f"{n} texts in one request; the limit (max_texts) is {settings.max_texts}: "
            "split the request",
        )
    items = _raw_texts(tensor, binary)
    if len(items) != n:
        raise V2Error(400, f"input {INPUT!r} has shape {tensor.shape} but {len(items)} elements")
    texts = [_decode_text(i, item) for i, item in enumerate(items)]
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            raise V2Error(
                413,
                f"text[{i}] has {len(text)} characters; the limit (max_chars) is "
                f"{settings.max_chars}: shorten or split it",
            )
    return texts


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


def _requested(request: _InferRequest) -> list[tuple[str, bool, int | None]]:
    """(name, as binary, classification top k) per output to return, in request order."""
    all_binary = _flag(request.parameters, "binary_data_output", "request")
    if request.outputs is None:
        return [(name, all_binary, None) for name in _OUTPUTS]
    chosen: list[tuple[str, bool, int | None]] = []
    for out in request.outputs:
        if out.name not in _OUTPUTS:
            raise V2Error(400, f"unknown output {out.name!r}; this model has {list(_OUTPUTS)}")
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
    served: ServedModel, request: _InferRequest, probs: np.ndarray
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
        inputs=[_TensorMetadata(name=INPUT, datatype="BYTES", shape=[-1])],
        outputs=[
            _TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, n_labels]),
            _TensorMetadata(name=LABEL, datatype="BYTES", shape=[-1]),
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
        header, binary = _split_body(await request.body(), request.headers.get(_HEADER_LENGTH))
        parsed = _parse(header)
        texts = _texts(parsed, binary, state.settings)
        _requested(parsed)  # a bad output request is refused before the model runs
        probs = await served.batcher.submit(texts)
        return _respond(*_encode(served, parsed, probs))

    return metadata, model_ready, infer


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object"},
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
_V2_ERROR = {"content": {"application/json": {"example": {"error": "message"}}}}


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
    app.get("/v2/health/live", tags=tags)(live)
    app.get("/v2/health/ready", tags=tags, responses={400: {}})(ready)
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
        app.get(prefix + "/ready", tags=tags, responses=errors, include_in_schema=not versioned)(
            model_ready
        )
        app.post(
            prefix + "/infer",
            tags=tags,
            response_model=_InferResponse,
            responses=errors,
            openapi_extra=_INFER_BODY,
            include_in_schema=not versioned,
        )(infer)
