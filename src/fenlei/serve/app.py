"""The HTTP service: :func:`create_app` (the app factory) and :func:`serve` (uvicorn).

Each model is loaded once, in the app's lifespan, from its run folder (manifest verified),
or injected ready-made by tests (:mod:`fenlei.serve.loading`; its :class:`ServeState`,
:class:`ServedModel` and :data:`ModelSource` are importable from here too). A prediction
request travels decode -> limits -> batch -> predict (thread) -> unbatch -> encode, each step a
small function below.

Example:
    >>> app = create_app(["runs/demo"], ServeSettings(max_batch_size=32))  # doctest: +SKIP
    >>> serve(["runs/demo"], ServeSettings(), host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fenlei._version import __version__
from fenlei.decision import DecisionRule, decide
from fenlei.errors import ConfigError
from fenlei.serve.guard import Guard, bearer_ok, error_json, uvicorn_options
from fenlei.serve.loading import (
    ModelSource,
    ServedModel,
    ServeState,
    _configure,
    _lifespan,
    _load,
    _name_sources,
    _workers,  # noqa: F401  (re-exported: tests import it from here)
)
from fenlei.serve.metrics import CONTENT_TYPE, MetricsMiddleware, ServeMetrics
from fenlei.serve.schemas import (
    DriftReport,
    ErrorResponse,
    HealthResponse,
    ModelDetail,
    ModelList,
    PredictRequest,
    PredictResponse,
    ServeSettings,
    describe_model,
)

__all__ = ["ApiError", "ModelSource", "ServeState", "ServedModel", "create_app", "serve"]

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A client (or server) error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message, **extra}
        self.headers: dict[str, str] | None = None


# ---------------------------------------------------------------- dependencies


async def _state(request: Request) -> ServeState:
    state: ServeState = request.app.state.fenlei
    return state


async def _authorize(request: Request, state: ServeState = Depends(_state)) -> None:
    token = state.settings.token
    if token is None:
        return
    # The Guard middleware has already refused a wrong token; this keeps the check with the
    # routes should the app ever be mounted without it.
    if not bearer_ok(request.scope["headers"], token):
        error = ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token: send `Authorization: Bearer <token>` "
            "(the server's --token / FENLEI_TOKEN)",
        )
        error.headers = {"WWW-Authenticate": "Bearer"}
        raise error


async def _model(name: str, state: ServeState = Depends(_state)) -> ServedModel:
    served = state.models.get(name)
    if served is None:
        known = ", ".join(sorted(state.models)) or "none"
        raise ApiError(404, "unknown_model", f"no model named {name!r}; loaded: {known}")
    return served


# ---------------------------------------------------------------- the prediction path


def _check_limits(body: PredictRequest, settings: ServeSettings) -> None:
    if len(body.texts) > settings.max_texts:
        raise ApiError(
            413,
            "too_many_texts",
            f"{len(body.texts)} texts in one request; the limit (max_texts) is "
            f"{settings.max_texts}: split the request",
            limit="max_texts",
            max=settings.max_texts,
            got=len(body.texts),
        )
    longest = max(range(len(body.texts)), key=lambda i: len(body.texts[i]))
    if len(body.texts[longest]) > settings.max_chars:
        raise ApiError(
            413,
            "text_too_long",
            f"text {longest} has {len(body.texts[longest])} characters; the limit (max_chars) "
            f"is {settings.max_chars}: shorten or split it",
            limit="max_chars",
            max=settings.max_chars,
            got=len(body.texts[longest]),
        )


def _encode(
    name: str, labels: tuple[str, ...], rule: DecisionRule, probs: np.ndarray, top_k: int
) -> dict[str, Any]:
    """The response body: the rule's decision per text (as ``Predictor.predict`` gives it)
    and the ``top_k`` most probable labels."""
    k = min(top_k, len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (N, C) -> (N, k)
    predictions = []
    for decided, row, idx in zip(
        decide(probs, labels, rule), probs.tolist(), order.tolist(), strict=True
    ):
        predictions.append(
            {
                "label": decided.label,
                "score": decided.score,
                "labels": list(decided.labels),
                "abstained": decided.abstained,
                "top": [{"label": labels[j], "probability": row[j]} for j in idx],
            }
        )
    return {"model": name, "predictions": predictions}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 422)
}


async def predict(
    body: PredictRequest,
    served: ServedModel = Depends(_model),
    state: ServeState = Depends(_state),
    _: None = Depends(_authorize),
) -> Response:
    """Classify texts: labels with probabilities, in input order."""
    _check_limits(body, state.settings)
    probs = await served.batcher.submit(body.texts)
    predictor = served.predictor
    return JSONResponse(_encode(served.name, predictor.labels, predictor.rule, probs, body.top_k))


async def list_models(
    state: ServeState = Depends(_state), _: None = Depends(_authorize)
) -> ModelList:
    """Every loaded model: name, labels, version, backend and training metrics."""
    return ModelList(models=[m.info for m in state.models.values()])


async def get_model(
    served: ServedModel = Depends(_model),
    state: ServeState = Depends(_state),
    _: None = Depends(_authorize),
) -> ModelDetail:
    """One model: labels, family, backend, calibration, decision rule and request limits."""
    predictor = served.predictor
    calibration = getattr(predictor, "calibration", None)  # an ensemble has none of its own
    return describe_model(
        served.info,
        device=predictor.info().device,
        rule=predictor.rule,
        temperature=getattr(calibration, "temperature", None),
        settings=state.settings,
    )


async def drift(
    served: ServedModel = Depends(_model), _: None = Depends(_authorize)
) -> DriftReport:
    """PSI per statistic of recent traffic against the training reference."""
    if served.drift is None:
        raise ApiError(
            404,
            "no_reference",
            f"model {served.name!r} has no reference.json (trained before drift monitoring); "
            "retrain it to monitor drift",
        )
    return served.drift.report(served.name)


async def healthz(state: ServeState = Depends(_state)) -> HealthResponse:
    """Liveness: the process answers (with the models loaded so far)."""
    return HealthResponse(status="ok", models=list(state.models))


async def readyz(state: ServeState = Depends(_state)) -> Response:
    """Readiness: every model is loaded and the server is not shutting down."""
    body = HealthResponse(status="ready" if state.ready else "not_ready", models=list(state.models))
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


async def metrics(state: ServeState = Depends(_state)) -> Response:
    """Prometheus exposition: requests, latency, batches, queue, labels, lengths, drift."""
    for served in state.models.values():
        if served.drift is None:
            continue
        state.metrics.drift_window.labels(served.name).set(served.drift.size)
        for stat, value in served.drift.psi_values().items():
            gauge = state.metrics.drift_psi.labels(served.name, stat)
            gauge.set(float("nan") if value is None else value)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


# ---------------------------------------------------------------- errors


def _error_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    content = error_json(body)  # ASCII-escaped: safe for input with lone surrogates
    return Response(content, status_code=status, headers=headers, media_type="application/json")


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc.status, exc.body, exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg")),
            "type": str(e.get("type")),
        }
        for e in exc.errors()
    ]
    malformed = any(d["type"] == "json_invalid" for d in details)
    message = (
        "the body is not valid JSON"
        if malformed
        else 'the request does not match the schema: expected {"texts": ["..."], "top_k": 1}'
    )
    named = [
        str(e.get("msg")).removeprefix("Value error, ")
        for e in exc.errors()
        if e.get("type") == "value_error"
    ]
    if named:  # a check that names the item (texts[3] is empty): say it first
        message = f"{named[0]} ({message})"
    code = "malformed_json" if malformed else "invalid_request"
    return _error_response(422, {"code": code, "message": message, "details": details})


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(exc.status_code, {"code": code, "message": str(exc.detail)})


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return _error_response(500, {"code": "internal_error", "message": "internal server error"})


# ---------------------------------------------------------------- the page and the docs


def _page() -> str:
    return resources.files("fenlei.serve").joinpath("static/index.html").read_text("utf-8")


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from local assets, never a CDN: ``fastapi-offline``'s Swagger UI
    5 (it reads the OpenAPI 3.1 FastAPI writes; swagger-ui-bundle's 4.x showed nothing)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    try:
        assets = resources.files("fastapi_offline").joinpath("static")
    except ModuleNotFoundError:  # the page says what to install instead of calling a CDN
        missing = "<p>API docs need the serve extra: pip install 'fenlei[serve]'</p>"
        app.get("/docs", include_in_schema=False)(lambda: HTMLResponse(missing, 501))
        return
    app.mount("/static/swagger", StaticFiles(directory=str(assets)), name="swagger")

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="fenlei API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon.png",
        )

    app.get("/docs", include_in_schema=False)(docs)


def _routes(app: FastAPI) -> None:
    page = _page()
    app.get("/", include_in_schema=False)(lambda: HTMLResponse(page))
    app.get("/healthz", response_model=HealthResponse)(healthz)
    app.get("/readyz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})(
        readyz
    )
    app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})(
        metrics
    )
    app.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]})(list_models)
    app.get(
        "/v1/models/{name}",
        response_model=ModelDetail,
        responses={401: _ERRORS[401], 404: _ERRORS[404]},
    )(get_model)
    app.post("/v1/models/{name}/predict", response_model=PredictResponse, responses=_ERRORS)(
        predict
    )
    app.get(
        "/v1/models/{name}/drift",
        response_model=DriftReport,
        responses={401: _ERRORS[401], 404: _ERRORS[404]},
    )(drift)
    from fenlei.serve.explaining import add_explain_route  # it builds on this module

    add_explain_route(app)
    from fenlei.serve.v2 import add_v2_routes  # the Open Inference Protocol (/v2)

    add_v2_routes(app)


def create_app(
    models: Mapping[str, ModelSource] | Sequence[ModelSource] | ModelSource,
    settings: ServeSettings | None = None,
) -> FastAPI:
    """Build the service for run folders (loaded at start-up) or ready predictors.

    Args:
        models: run folders, or predictors (a :class:`~fenlei.predict.Predictor` or any
            object with the :class:`~fenlei.predict.ServablePredictor` surface); a list names
            each by its folder, a mapping names them explicitly.
        settings: batching, limits, token, backend and drift window.

    Raises:
        ConfigError: two models would share a name.

    Example:
        >>> app = create_app({"intents": "runs/demo"})  # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    state = ServeState(settings=settings, metrics=ServeMetrics())
    app = FastAPI(
        title="fenlei",
        version=__version__,
        description="Text classification: predictions, model info, drift and metrics.",
        lifespan=_lifespan(_name_sources(models), state),
        docs_url=None,
        redoc_url=None,
    )
    app.state.fenlei = state
    _add_docs(app)
    _routes(app)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(Guard, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # outermost: counts refusals
    return app


def _check_port_free(host: str, port: int) -> None:
    """Fail with one clear line, before loading models, when the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on host {host!r}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port "
                "(or stop what is using it)"
            ) from exc


def serve(
    models: Mapping[str, ModelSource] | Sequence[ModelSource],
    settings: ServeSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM (in-flight requests finish first)."""
    import uvicorn

    settings = settings or ServeSettings()
    _check_port_free(host, port)
    # Load (and verify) every run folder before uvicorn starts, so a bad folder or device is
    # one clear error from this call rather than a traceback from the server's start-up.
    _configure(settings)
    loaded = {name: _load(source, settings) for name, source in _name_sources(models).items()}
    app = create_app(loaded, settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        access_log=False,
        **uvicorn_options(settings),
    )
