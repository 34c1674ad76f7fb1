"""Loading the served models: each run folder (or ready predictor) becomes a :class:`ServedModel`
with its micro-batcher, drift monitor and description, in the app's lifespan.

The loading policy reads the predictor's ``info()``: texts per model call (:func:`_chunk_size`),
batches at once (:func:`_workers`), and the batch function that predicts and observes each
batch for ``/metrics`` and drift (:func:`_batch_function`). :mod:`fenlei.serve.app` builds the
app and its routes on :class:`ServeState`.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI

from fenlei.errors import ConfigError
from fenlei.loader import open_predictor
from fenlei.predict import PredictorInfo, ServablePredictor
from fenlei.runtime import configure_torch
from fenlei.serve.batching import MicroBatcher
from fenlei.serve.drift import DriftMonitor
from fenlei.serve.metrics import ServeMetrics
from fenlei.serve.schemas import ModelInfo, ServeSettings

__all__ = ["UNKNOWN_WARNING_EVERY_S", "ModelSource", "ServeState", "ServedModel"]

logger = logging.getLogger(__name__)

ModelSource = ServablePredictor | str | Path


@dataclass
class ServedModel:
    """One loaded model with its batcher, drift monitor and description."""

    name: str
    predictor: ServablePredictor
    batcher: MicroBatcher
    drift: DriftMonitor | None
    info: ModelInfo


@dataclass
class ServeState:
    """What the handlers read: settings, metrics and the loaded models."""

    settings: ServeSettings
    metrics: ServeMetrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False


def _name_sources(
    models: Mapping[str, ModelSource] | Sequence[ModelSource] | ModelSource,
) -> dict[str, ModelSource]:
    if isinstance(models, Mapping):
        return dict(models)
    items: list[ModelSource]
    if isinstance(models, str | Path) or not isinstance(models, Sequence):
        items = [models]  # one run folder or one predictor
    else:
        items = list(models)
    named: dict[str, ModelSource] = {}
    for i, item in enumerate(items):
        if isinstance(item, str | Path):
            name = Path(item).resolve().name
        else:
            run_dir = item.info().run_dir
            name = run_dir.resolve().name if run_dir is not None else f"model{i}"
        if name in named:
            raise ConfigError(
                f"two models are both named {name!r}; pass a mapping {{name: run_dir}} "
                "(or `fenlei serve name=RUN`) to name them apart"
            )
        named[name] = item
    return named


def _load(source: ModelSource, settings: ServeSettings) -> ServablePredictor:
    """A run folder of any kind loaded for serving (ONNX Runtime with the server's threads;
    an ensemble's members all behind this one name), or the predictor given, as it is."""
    if not isinstance(source, str | Path):
        return source
    return open_predictor(
        source, backend=settings.backend, device=settings.device, threads=settings.threads
    )


def _configure(settings: ServeSettings) -> None:
    """Process-wide torch state: flush denormals, and limit intra-op threads (on few cores,
    spinning math threads starve the event loop)."""
    configure_torch(threads=settings.threads)


def _model_info(name: str, info: PredictorInfo) -> ModelInfo:
    return ModelInfo(
        name=name,
        labels=list(info.labels),
        multi_label=info.multi_label,
        version=info.version,
        preset=info.preset,
        architecture=info.architecture,
        backend=info.backend,
        kind=info.kind,
        metrics=dict(info.metrics),
        members=dict(info.members),
    )


def _chunk_size(info: PredictorInfo, settings: ServeSettings) -> int:
    """Texts per model call: the setting, else the family's serving chunk on a CPU (MiniLM:
    8 length-sorted texts per call beat 1 and 32), else the run's eval batch size."""
    if settings.chunk_size is not None:
        return settings.chunk_size
    if info.serve_chunk is not None and info.device == "cpu":
        return info.serve_chunk
    return info.batch_size


def _workers(info: PredictorInfo, settings: ServeSettings) -> int:
    """Batches that may run at once: a model whose family serves in chunks (a transformer)
    gets one per core its threads leave free.

    Measured on 2 cores, MiniLM (ONNX, 1 thread) at concurrency 32: 220 requests/s with one
    worker, 385 with two. A small model's call takes about a millisecond, so a second worker
    only contends with the event loop for the GIL: one.
    """
    if settings.workers is not None:
        return settings.workers
    if info.serve_chunk is None or info.device != "cpu":
        return 1  # a GPU runs one batch at a time anyway
    return max(1, min(4, (os.cpu_count() or 1) // (settings.threads or 1)))


UNKNOWN_WARNING_EVERY_S = 60.0  # at most one log line per model and minute


def _batch_function(
    name: str,
    predictor: ServablePredictor,
    chunk: int,
    metrics: ServeMetrics,
    drift: DriftMonitor | None,
    max_unknown_rate: float,
) -> Callable[[list[str]], np.ndarray]:
    """texts -> probabilities (N, C), observed for /metrics and drift in the same worker
    thread. The predictor scores and measures the texts in one pass
    (:meth:`~fenlei.predict.Predictor.score`), so a batch is tokenized once; a batch that is
    mostly unknown tokens is counted and logged (as training refuses such data)."""
    labels = predictor.labels
    last_warning = [-UNKNOWN_WARNING_EVERY_S]

    def warn_unknown(rates: np.ndarray) -> None:
        now = time.monotonic()
        if now - last_warning[0] < UNKNOWN_WARNING_EVERY_S:
            return
        last_warning[0] = now
        logger.warning(
            "model %s: %.0f%% of the tokens of a batch of %d text(s) are unknown to its "
            "vocabulary (encoder.max_unknown_rate is %.0f%%): the texts may be in a language "
            "or script the model was not trained on, and its predictions are guesses "
            "(see fenlei_unknown_token_batches_total)",
            name,
            100 * float(np.mean(rates)),
            len(rates),
            100 * max_unknown_rate,
        )

    def run(texts: list[str]) -> np.ndarray:
        scored = predictor.score(texts, batch_size=chunk)
        probs, stats = scored.probs, scored.stats
        try:
            metrics.observe_batch(name, labels, texts, probs)
            if metrics.observe_unknown(name, stats.unknown_rate, max_unknown_rate):
                warn_unknown(stats.unknown_rate)
            if drift is not None:
                drift.observe(texts, probs, stats=stats)
        except Exception:  # monitoring must never fail a prediction
            logger.exception("observing a batch of %s failed", name)
        return probs

    return run


def _serve_model(name: str, predictor: ServablePredictor, state: ServeState) -> ServedModel:
    settings, metrics = state.settings, state.metrics
    info = predictor.info()
    drift = DriftMonitor.from_predictor(
        predictor, window=settings.drift_window, min_samples=settings.drift_min_samples
    )
    batch_hist = metrics.batch_size.labels(name)
    batcher = MicroBatcher(
        _batch_function(
            name, predictor, _chunk_size(info, settings), metrics, drift, info.max_unknown_rate
        ),
        max_batch_size=settings.max_batch_size,
        max_batch_chars=settings.max_batch_chars,
        max_wait_ms=settings.max_wait_ms,
        on_batch=batch_hist.observe,
        workers=_workers(info, settings),
    )
    metrics.queue_depth.labels(name).set_function(lambda: batcher.queued_texts)
    return ServedModel(name, predictor, batcher, drift, _model_info(name, info))


def _lifespan(sources: dict[str, ModelSource], state: ServeState):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _configure(state.settings)
        for name, source in sources.items():
            predictor = _load(source, state.settings)
            state.models[name] = _serve_model(name, predictor, state)
            logger.info("loaded model %s (%s)", name, state.models[name].info.version)
        for served in state.models.values():
            await served.batcher.start()
        # Everything loaded so far (torch, the models, the app) lives as long as the server:
        # freezing it keeps the cyclic GC from rescanning it, which showed as tail latency.
        gc.collect()
        gc.freeze()
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            gc.unfreeze()
            for served in state.models.values():
                await served.batcher.stop()

    return lifespan
