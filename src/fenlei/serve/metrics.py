"""Prometheus metrics of one app, in their own registry so several apps share a process.

:class:`ServeMetrics` holds the collectors: the service's own (``fenlei_*``) and the
client library's standard process (``process_*``: memory, CPU, open files), platform
(``python_info``) and garbage-collector (``python_gc_*``) collectors.
:class:`MetricsMiddleware` (pure ASGI, cheap on the hot path) counts every request by route
template and status and times it. Every series is listed in docs/serving.md.

Counters and histograms export no ``*_created`` series (set process-wide by
``prometheus_client.disable_created_metrics``): in the text format each would be one more
series per label set holding a start timestamp, which dashboards mistake for counters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "MetricsMiddleware", "ServeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_LENGTH_BUCKETS = (10, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_SHARE_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 0.9, 1.0)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeMetrics:
    """Every collector of the service, registered in a fresh :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_*: CPU seconds, resident memory, open files
        PlatformCollector(registry=r)  # python_info: the interpreter's version
        GCCollector(registry=r)  # python_gc_*: collections (the server freezes its heap)
        self.requests = Counter(
            "fenlei_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "fenlei_http_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "fenlei_batch_size",
            "Texts per model call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "fenlei_queue_depth", "Texts waiting for a batch", ["model"], registry=r
        )
        self.predictions = Counter(
            "fenlei_predictions", "Predicted (top-1) labels", ["model", "label"], registry=r
        )
        self.input_chars = Histogram(
            "fenlei_input_length_chars",
            "Characters per text",
            ["model"],
            buckets=_LENGTH_BUCKETS,
            registry=r,
        )
        self.unknown_share = Histogram(
            "fenlei_unknown_token_share",
            "Share of a text's tokens that the model's vocabulary reads as unknown",
            ["model"],
            buckets=_SHARE_BUCKETS,
            registry=r,
        )
        self.unknown_batches = Counter(
            "fenlei_unknown_token_batches",
            "Model calls whose texts were on average more unknown tokens than the run's "
            "encoder.max_unknown_rate (texts in a language or script the model cannot read)",
            ["model"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "fenlei_drift_psi",
            "Population stability index, recent traffic vs training",
            ["model", "statistic"],
            registry=r,
        )
        self.drift_window = Gauge(
            "fenlei_drift_window_texts", "Texts in the drift window", ["model"], registry=r
        )

    def observe_batch(
        self, model: str, labels: tuple[str, ...], texts: list[str], probs: np.ndarray
    ) -> None:
        """Count a batch's predicted labels and text lengths (called per model call)."""
        if len(texts) == 0:
            return
        counts = np.bincount(probs.argmax(axis=1), minlength=len(labels))
        for index in np.flatnonzero(counts):
            self.predictions.labels(model, labels[index]).inc(float(counts[index]))
        hist = self.input_chars.labels(model)
        for text in texts:
            hist.observe(len(text))

    def observe_unknown(self, model: str, unknown_rate: np.ndarray, limit: float) -> bool:
        """Record each text's unknown-token share; count the batch (and return True) when
        their mean is over ``limit``."""
        if len(unknown_rate) == 0:
            return False
        hist = self.unknown_share.labels(model)
        for rate in unknown_rate:
            hist.observe(float(rate))
        over = float(np.mean(unknown_rate)) > limit
        if over:
            self.unknown_batches.labels(model).inc()
        return over

    def render(self) -> bytes:
        """The exposition text of every collector."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure-ASGI middleware: request count by route template and status, and latency."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
