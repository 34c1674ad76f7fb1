"""Dynamic micro-batching: concurrent requests share one model call, fairly.

A :class:`MicroBatcher` keeps the requests that still have texts waiting. Its worker builds
a batch within a budget (``max_batch_size`` texts and ``max_batch_chars`` characters, the
cheap stand-in for tokens), runs the batch function in a thread (so the event loop keeps
serving), and hands each request its own rows back, in order, once all its texts have run.

Fairness: a batch is filled least-served request first (the characters each request has
had batched so far), so a new small request goes into the next batch instead of queueing
behind every text of a large one, and large requests take turns. A request is split across
batches when it does not fit; a text is never split, and one text over the character
budget runs in a batch of its own. A request that has had nothing batched for
``_STARVE_S`` goes first, so a steady stream of small requests cannot starve a large one.

Express lane: while every worker runs a long batch (over a quarter of the character budget),
a new request small enough to fit in that quarter runs at once in a thread of its own, so a
short request never waits for a long text to finish either.

Isolation: when a batch call raises, each of its requests is run again on its own, so
only the request that fails gets the error (logged as one line); the others get results.

Under light traffic (the previous batch held one request and nothing else waits) a request
runs at once instead of waiting, so a lone client pays no batching delay.

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

# A request with texts waiting that has had nothing batched for this long goes first.
_STARVE_S = 0.5


@dataclass(eq=False)
class _Request:
    """One submitted request: its texts, how far batching got, and its finished rows."""

    texts: list[str]
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)
    chars: int = 0  # characters in all its texts
    taken: int = 0  # texts handed to batches so far (they are taken in order)
    served_chars: int = 0  # characters handed to batches so far
    last_served: float = 0.0
    finished: int = 0  # texts whose rows came back
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (first text, rows)

    def __post_init__(self) -> None:
        self.last_served = self.enqueued
        self.chars = sum(len(t) for t in self.texts)

    @property
    def waiting(self) -> bool:
        """Texts remain that no batch has taken yet."""
        return self.taken < len(self.texts) and not self.future.done()

    def priority(self, now: float) -> tuple[int, int, float]:
        """Sort key: starving first, then least served, then oldest."""
        starving = now - self.last_served > _STARVE_S
        return (0 if starving else 1, self.served_chars, self.enqueued)

    def deliver(self, start: int, rows: np.ndarray) -> None:
        """Keep ``rows`` (the outputs of texts ``start...``); answer once all have come."""
        if self.future.done():
            return
        self.parts.append((start, rows))
        self.finished += len(rows)
        if self.finished == len(self.texts):
            if len(self.parts) == 1:
                out = rows
            else:
                out = np.concatenate([r for _, r in sorted(self.parts, key=lambda p: p[0])])
            self.future.set_result(out)


@dataclass
class _Piece:
    """Consecutive texts ``start:end`` of one request, inside one batch."""

    request: _Request
    start: int
    end: int

    @property
    def texts(self) -> list[str]:
        return self.request.texts[self.start : self.end]


@dataclass
class _Batch:
    """The pieces of one model call and what they use of the budget."""

    max_texts: int
    max_chars: int
    pieces: list[_Piece] = field(default_factory=list)
    n_texts: int = 0
    n_chars: int = 0

    @property
    def full(self) -> bool:
        return self.n_texts >= self.max_texts or self.n_chars >= self.max_chars

    def fits(self, chars: int) -> bool:
        """One more text of ``chars`` characters fits (any text fits an empty batch)."""
        if self.n_texts == 0:
            return True
        return self.n_texts < self.max_texts and self.n_chars + chars <= self.max_chars

    def take(self, request: _Request, now: float) -> None:
        """Move the request's next texts into the batch while they fit."""
        start = request.taken
        while request.taken < len(request.texts):
            chars = len(request.texts[request.taken])
            if not self.fits(chars):
                break
            request.taken += 1
            request.served_chars += chars
            self.n_texts += 1
            self.n_chars += chars
        if request.taken > start:
            request.last_served = now
            self.pieces.append(_Piece(request, start, request.taken))

    @property
    def texts(self) -> list[str]:
        return [t for p in self.pieces for t in p.texts]

    @property
    def requests(self) -> list[_Request]:
        return list({id(p.request): p.request for p in self.pieces}.values())


class MicroBatcher:
    """Gathers texts from concurrent requests into fair, bounded batches for one model.

    Args:
        fn: texts -> array (N, C); runs in a worker thread.
        max_batch_size: most texts per call.
        max_batch_chars: most characters per call (a single longer text runs alone).
        max_wait_ms: longest the first text of a batch waits for company.
        observe: called in the worker thread after each batch with (texts, outputs).
        on_batch: called on the event loop with the size of each batch (for metrics).
        workers: model calls that may run at once (each in its own thread); more than one
            helps a model whose single call leaves cores idle. The express lane adds one
            thread, used only while every worker runs a long batch.
    """

    def __init__(
        self,
        fn: BatchFn,
        *,
        max_batch_size: int = 64,
        max_batch_chars: int = 8_192,
        max_wait_ms: float = 2.0,
        observe: BatchObserver | None = None,
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
    ) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_batch_chars = max_batch_chars
        self.max_wait = max_wait_ms / 1000.0
        self.observe = observe
        self.on_batch = on_batch
        self.queued_texts = 0  # texts no batch has taken yet
        self.queued_chars = 0
        self.batch_sizes: list[int] = []  # recent sizes, for tests and /v1 introspection
        self.workers = workers
        self._active: list[_Request] = []
        self._arrived: asyncio.Event | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._last_requests = 0
        self._running = 0  # batches handed to an executor and not finished
        self._long = 0  # workers running a batch of more than express_chars
        self.express_chars = max(1, max_batch_chars // 4)
        self._express_wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fenlei-infer")
        self._express = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fenlei-express")

    async def start(self) -> None:
        """Start the workers on the running event loop."""
        self._arrived = asyncio.Event()
        self._express_wake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"fenlei-batcher-{i}")
            for i in range(self.workers)
        ]
        self._tasks.append(asyncio.create_task(self._run_express(), name="fenlei-express"))

    async def stop(self) -> None:
        """Finish queued and running work, then stop the workers and their threads."""
        while (self.queued_texts or self._running) and any(not t.done() for t in self._tasks):
            await asyncio.sleep(0.005)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=True)
        self._express.shutdown(wait=True)

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """Queue ``texts``; return their outputs (N, C), in order, once all have run."""
        if self._arrived is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        request = _Request(list(texts), future)
        if not request.texts:
            return np.zeros((0, 0))
        self._active.append(request)
        self.queued_texts += len(request.texts)
        self.queued_chars += request.chars
        self._arrived.set()
        assert self._express_wake is not None
        self._express_wake.set()
        if self._waiters and (
            self.queued_texts >= self.max_batch_size or self.queued_chars >= self.max_batch_chars
        ):
            for waiter in self._waiters:  # a full batch is waiting: stop the timers early
                if not waiter.done():
                    waiter.set_result(None)
        return await future

    # ------------------------------------------------------------ building a batch

    def _fill(self, batch: _Batch) -> None:
        """Add waiting texts to ``batch``: starving, then least-served requests first."""
        now = time.perf_counter()
        for request in sorted(self._active, key=lambda r: r.priority(now)):
            if batch.full:
                break
            if request.waiting:
                before = (request.taken, request.served_chars)
                batch.take(request, now)
                self.queued_texts -= request.taken - before[0]
                self.queued_chars -= request.served_chars - before[1]
        kept = []
        for request in self._active:
            if request.waiting:
                kept.append(request)
            elif request.taken < len(request.texts):  # failed or cancelled: drop the rest
                self.queued_texts -= len(request.texts) - request.taken
                self.queued_chars -= sum(len(t) for t in request.texts[request.taken :])
                request.taken = len(request.texts)
        self._active = kept

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

    async def _gather(self) -> _Batch:
        assert self._arrived is not None
        batch = _Batch(self.max_batch_size, self.max_batch_chars)
        while not batch.pieces:
            while not self._active:
                self._arrived.clear()
                await self._arrived.wait()
            self._fill(batch)
        # Adaptive wait: a lone request under light traffic (the last batch was one request
        # and nothing else is queued) runs at once; under load the batch waits up to
        # max_wait_ms (from its oldest request's arrival) for company, unless texts are
        # already left waiting because the batch is as full as it gets.
        n_requests = len(batch.requests)
        busy = n_requests > 1 or self._last_requests > 1
        deadline = min(r.enqueued for r in batch.requests) + self.max_wait
        while busy and not batch.full and not self._active:
            if time.perf_counter() >= deadline:
                break
            await self._sleep_until(deadline)
            self._fill(batch)
        self._last_requests = len(batch.requests)
        return batch

    # ------------------------------------------------------------ running a batch

    def _call(self, texts: list[str]) -> np.ndarray:
        out = self.fn(texts)
        if self.observe is not None:
            try:
                self.observe(texts, out)
            except Exception:  # monitoring must never fail a prediction
                logger.exception("batch observer failed")
        return out

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            pieces = [p for p in batch.pieces if not p.request.future.done()]
            texts = [t for p in pieces for t in p.texts]
            if not texts:
                continue
            long = int(batch.n_chars > self.express_chars)
            self._long += long
            if long and self._express_wake is not None:
                self._express_wake.set()  # new small requests need not wait for this one
            try:
                await self._execute(self._executor, pieces, texts)
            finally:
                self._long -= long

    async def _run_express(self) -> None:
        """Run new small requests at once while every worker is busy with a long batch."""
        assert self._express_wake is not None
        while True:
            await self._express_wake.wait()
            self._express_wake.clear()
            if self._long < self.workers:
                continue
            batch = self._fill_express()
            if not batch.pieces:
                continue
            await self._execute(self._express, batch.pieces, batch.texts)
            self._express_wake.set()  # more may have come meanwhile

    def _fill_express(self) -> _Batch:
        """Whole new requests, oldest first, within a quarter of the character budget."""
        batch = _Batch(self.max_batch_size, self.express_chars)
        now = time.perf_counter()
        for request in sorted(self._active, key=lambda r: r.enqueued):
            fits = (
                batch.n_chars + request.chars <= batch.max_chars
                and batch.n_texts + len(request.texts) <= batch.max_texts
            )
            if fits and request.taken == 0 and request.waiting:
                batch.take(request, now)
                self.queued_texts -= len(request.texts)
                self.queued_chars -= request.chars
        self._active = [r for r in self._active if r.taken < len(r.texts)]
        return batch

    async def _execute(
        self, executor: ThreadPoolExecutor, pieces: list[_Piece], texts: list[str]
    ) -> None:
        """Run one batch on ``executor`` and hand out its rows (or isolate its failure)."""
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            try:
                out = await loop.run_in_executor(executor, self._call, texts)
            except Exception as exc:
                await self._isolate(executor, pieces, exc)
                return
            self._record(len(texts))
            _deliver(pieces, out)
        finally:
            self._running -= 1

    async def _isolate(
        self, executor: ThreadPoolExecutor, pieces: list[_Piece], exc: Exception
    ) -> None:
        """Run each request of a failed batch alone: only the one that fails gets the error."""
        loop = asyncio.get_running_loop()
        by_request: dict[int, list[_Piece]] = {}
        for piece in pieces:
            by_request.setdefault(id(piece.request), []).append(piece)
        failed = 0
        for own in by_request.values():
            request = own[0].request
            if len(by_request) == 1:
                error: Exception | None = exc  # alone already: no point running it again
            else:
                try:
                    texts = [t for p in own for t in p.texts]
                    out = await loop.run_in_executor(executor, self._call, texts)
                    self._record(len(texts))
                    _deliver(own, out)
                    error = None
                except Exception as again:
                    error = again
            if error is not None:
                failed += 1
                if not request.future.done():
                    request.future.set_exception(error)
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        logger.warning(
            "a batch of %d requests failed (%s: %s); each request ran alone: %d failed",
            len(by_request),
            type(exc).__name__,
            message,
            failed,
        )

    def _record(self, size: int) -> None:
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > 10_000:
            del self.batch_sizes[:5_000]
        if self.on_batch is not None:
            self.on_batch(size)


def _deliver(pieces: list[_Piece], out: np.ndarray) -> None:
    """Hand each piece its rows of ``out`` (N, C), in the order the texts were batched."""
    row = 0
    for piece in pieces:
        n = piece.end - piece.start
        piece.request.deliver(piece.start, out[row : row + n])
        row += n
