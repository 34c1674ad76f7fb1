"""The explain route: ``POST /v1/models/{name}/explain``, a score per word of each text.

Same token, limits (``max_chars``; texts per request: the tighter ``max_explain_texts``),
metrics and error shapes as predict. An explanation costs a model pass per
integrated-gradients step (32 or more for an LSTM or a transformer), so explanations run in
worker threads of their own (at most :data:`EXPLAIN_THREADS` at once,
:data:`EXPLAIN_QUEUE` waiting, beyond that 429), never through the micro-batcher:
predictions queued behind them are not held up. :func:`add_explain_route` registers the
route on an app.

Example:
    >>> add_explain_route(app)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response

from fenlei.errors import ConfigError, DataError, MissingExtraError
from fenlei.serve.app import (
    _ERRORS,
    ApiError,
    ServedModel,
    ServeState,
    _authorize,
    _check_limits,
    _model,
    _state,
)
from fenlei.serve.schemas import (
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    PredictRequest,
    ServeSettings,
)

__all__ = ["EXPLAIN_QUEUE", "EXPLAIN_THREADS", "add_explain_route"]

EXPLAIN_THREADS = 1  # explanations at once per server: each uses every torch thread it has
EXPLAIN_QUEUE = 8  # requests that may wait for a thread before the server answers 429


class _Pool:
    """The bounded executor: a capacity limiter over anyio's worker threads, and a count of
    the requests waiting for it."""

    def __init__(self, threads: int, queue: int) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.queue = queue
        self.waiting = 0

    async def run(self, fn: Any) -> Any:
        if self.waiting >= self.queue:
            error = ApiError(
                429,
                "too_many_explanations",
                f"{self.waiting} explain requests are already waiting; send this one again "
                "in a moment (explanations run one at a time)",
                limit="explain_queue",
                max=self.queue,
                got=self.waiting + 1,
            )
            error.headers = {"Retry-After": "1"}
            raise error
        self.waiting += 1
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self.limiter)
        finally:
            self.waiting -= 1


def _check_explain_limits(body: ExplainRequest, settings: ServeSettings) -> None:
    if len(body.texts) > settings.max_explain_texts:
        raise ApiError(
            413,
            "too_many_texts",
            f"{len(body.texts)} texts in one explain request; the limit (max_explain_texts) "
            f"is {settings.max_explain_texts}: split the request",
            limit="max_explain_texts",
            max=settings.max_explain_texts,
            got=len(body.texts),
        )
    # max_texts and max_chars (not re-validated: an empty text is the explainer's to refuse)
    _check_limits(PredictRequest.model_construct(texts=body.texts), settings)


def _explainer(served: ServedModel, target: str | None) -> Any:
    explain = getattr(served.predictor, "explain", None)
    if explain is None:
        raise ApiError(
            404,
            "not_explainable",
            f"model {served.name!r} ({type(served.predictor).__name__}) cannot explain its "
            "predictions",
        )
    labels = served.predictor.labels
    if target is not None and target not in labels:
        raise ApiError(
            422,
            "unknown_label",
            f"target {target!r} is not a label of model {served.name!r}: {', '.join(labels)}",
        )
    return explain


def _encode(name: str, explanations: list[Any]) -> dict[str, Any]:
    out = []
    for e in explanations:
        body = e.to_json()
        del body["text"]  # the client sent it; the spans index into it
        out.append(body)
    return {"model": name, "explanations": out}


def add_explain_route(app: FastAPI) -> None:
    """Register ``POST /v1/models/{name}/explain`` with its own bounded pool of threads."""
    pool = _Pool(EXPLAIN_THREADS, EXPLAIN_QUEUE)

    async def explain(
        body: ExplainRequest,
        served: ServedModel = Depends(_model),
        state: ServeState = Depends(_state),
        _: None = Depends(_authorize),
    ) -> Response:
        """Explain texts: a score per word towards the predicted label or ``target``.

        Bag models (linear, nbsvm) are explained exactly; LSTMs and transformers by
        integrated gradients, with Captum's convergence delta. Spans are character offsets
        (Unicode code points) into each text.
        """
        _check_explain_limits(body, state.settings)
        explain_texts = _explainer(served, body.target)
        try:
            explanations = await pool.run(
                functools.partial(explain_texts, body.texts, target=body.target)
            )
        except DataError as exc:
            raise ApiError(422, "unexplainable_text", str(exc)) from exc
        except ConfigError as exc:  # e.g. an ensemble member that cannot explain
            raise ApiError(404, "not_explainable", str(exc)) from exc
        except MissingExtraError as exc:  # the server's installation, not the client's fault
            raise ApiError(501, "explain_unavailable", str(exc)) from exc
        return JSONResponse(_encode(served.name, explanations))

    responses: dict[int | str, dict[str, Any]] = {
        **_ERRORS,
        **{code: {"model": ErrorResponse} for code in (429, 501)},
    }
    app.post("/v1/models/{name}/explain", response_model=ExplainResponse, responses=responses)(
        explain
    )
