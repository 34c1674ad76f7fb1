"""Dynamic micro-batching: concurrent requests share one model call.

A :class:`MicroBatcher` owns an asyncio queue. Its worker takes the first waiting request,
then gathers more until ``max_batch_size`` texts or ``max_wait_ms`` have passed, runs the
batch function in a thread (so the event loop keeps serving), and hands each request its
own rows back. A request is never split; one larger than ``max_batch_size`` runs alone. Under light
traffic (the previous batch held one request and nothing else waits) a request runs at once
instead of waiting, so a lone client pays no batching delay.

Example:
    >>> batcher = MicroBatcher(predictor.predict_proba, max_batch_size=64, max_wait_ms=2)
    >>> probs = await batcher.submit(["where is my parcel?"])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchFn", "BatchObserver", "MicroBatcher"]

logger = logging.getLogger(__name__)

BatchFn = Callable[[list[str]], np.ndarray]
BatchObserver = Callable[[list[str], np.ndarray], None]


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gathers texts from concurrent requests into batches for one model.

    Args:
        fn: texts -> array (N, C); runs in a worker thread.
        max_batch_size: most texts per call (a bigger single request runs alone).
        max_wait_ms: longest the first text of a batch waits for company.
        observe: called in the worker thread after each batch with (texts, outputs).
        on_batch: called on the event loop with the size of each batch (for metrics).
        workers: model calls that may run at once (each in its own thread); more than one
            helps a model whose single call leaves cores idle.
    """

    def __init__(
        self,
        fn: BatchFn,
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        observe: BatchObserver | None = None,
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
    ) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.observe = observe
        self.on_batch = on_batch
        self.queued_texts = 0
        self.batch_sizes: list[int] = []  # recent sizes, for tests and /v1 introspection
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._last_requests = 0
        self.workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fenlei-infer")

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"fenlei-batcher-{i}")
            for i in range(self.workers)
        ]

    async def stop(self) -> None:
        """Finish queued work, then stop the worker and its thread."""
        while self.queued_texts and any(not t.done() for t in self._tasks):
            await asyncio.sleep(0.005)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=True)

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """Queue ``texts``; return their outputs (N, C) once their batch has run."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        self._queue.put_nowait(_Pending(list(texts), future))
        if self._waiters and self.queued_texts >= self.max_batch_size:
            for waiter in self._waiters:  # a full batch is waiting: stop the timers early
                if not waiter.done():
                    waiter.set_result(None)
        return await future

    def _take(self, batch: list[_Pending], size: int) -> int:
        """Move queued requests into ``batch`` without waiting; return its text count."""
        assert self._queue is not None
        while size < self.max_batch_size and not self._queue.empty():
            item = self._queue.get_nowait()
            if size + len(item.texts) > self.max_batch_size:
                self._carry = item  # starts the next batch; requests are never split
                break
            batch.append(item)
            size += len(item.texts)
        return size

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline``, or until enough texts are queued to fill a batch."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        handle = loop.call_later(
            max(0.0, deadline - time.perf_counter()),
            lambda: None if waiter.done() else waiter.set_result(None),
        )
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiters.discard(waiter)

    async def _gather(self) -> list[_Pending]:
        assert self._queue is not None
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self._queue.get()
        batch = [first]
        size = self._take(batch, len(first.texts))
        # Adaptive wait: a lone request under light traffic (the last batch was one request
        # and nothing else is queued) runs at once; under load the batch waits up to
        # max_wait_ms (from the first request's arrival) for company.
        busy = len(batch) > 1 or self._last_requests > 1
        deadline = first.enqueued + self.max_wait
        while busy and size < self.max_batch_size and self._carry is None:
            if time.perf_counter() >= deadline:
                break
            await self._sleep_until(deadline)
            size = self._take(batch, size)
        self._last_requests = len(batch)
        return batch

    def _call(self, texts: list[str]) -> np.ndarray:
        out = self.fn(texts)
        if self.observe is not None:
            try:
                self.observe(texts, out)
            except Exception:  # monitoring must never fail a prediction
                logger.exception("batch observer failed")
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self.queued_texts -= sum(len(p.texts) for p in batch)
            batch = [p for p in batch if not p.future.cancelled()]
            texts = [t for p in batch for t in p.texts]
            if not texts:
                continue
            try:
                out = await loop.run_in_executor(self._executor, self._call, texts)
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self._record(len(texts))
            _split(batch, out)

    def _record(self, size: int) -> None:
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > 10_000:
            del self.batch_sizes[:5_000]
        if self.on_batch is not None:
            self.on_batch(size)


def _split(batch: list[_Pending], out: np.ndarray) -> None:
    start = 0
    for p in batch:
        end = start + len(p.texts)
        if not p.future.done():
            p.future.set_result(out[start:end])
        start = end
