"""The Open Inference Protocol's wire format (KServe v2, Triton HTTP/REST): the JSON
objects as pydantic models, BYTES tensors in the binary layout, and a request's texts
checked against the protocol and the server's limits. :mod:`fenlei.serve.v2` holds the
routes that use it.

Example:
    >>> [b.decode() for b in deserialize_bytes(serialize_bytes(["退款", "ok"]))]
    ['退款', 'ok']
"""

from __future__ import annotations

import struct
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from fenlei.data import check_text
from fenlei.serve.schemas import ServeSettings

__all__ = [
    "HEADER_LENGTH",
    "INPUT",
    "LABEL",
    "OUTPUTS",
    "PROBABILITIES",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "TensorMetadata",
    "V2Error",
    "V2ModelMetadata",
    "V2ServerMetadata",
    "V2Tensor",
    "deserialize_bytes",
    "parse_request",
    "request_texts",
    "serialize_bytes",
    "split_body",
]

INPUT = "text"
PROBABILITIES = "probabilities"
LABEL = "label"
OUTPUTS = (PROBABILITIES, LABEL)
HEADER_LENGTH = "inference-header-content-length"
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


class RequestedOutput(_Strict):
    name: StrictStr
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(_Strict):
    id: StrictStr | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferResponse(_Strict):
    """What ``/infer`` answers (data, or ``parameters.binary_data_size`` after the JSON)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2Tensor]


class TensorMetadata(_Strict):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(_Strict):
    """A model's metadata: versions, platform, inputs and outputs (``-1``: any size)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


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


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
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


def parse_request(header: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(header)
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


def _rawrequest_texts(tensor: V2Tensor, binary: bytes) -> list[Any]:
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


def request_texts(request: InferRequest, binary: bytes, settings: ServeSettings) -> list[str]:
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
    items = _rawrequest_texts(tensor, binary)
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
