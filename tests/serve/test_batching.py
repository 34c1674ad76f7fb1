"""The micro-batcher: batches form under concurrency, results go back to their request."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fenlei.config import load_config
from fenlei.serve.batching import MicroBatcher

from .conftest import StartServer


def _echo(texts: list[str]) -> np.ndarray:
    """Row i = (len(text), batch size): lets a test see both its result and its batch."""
    return np.array([[float(len(t)), float(len(texts))] for t in texts])


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    async def main() -> tuple[list[np.ndarray], list[int]]:
        batcher = MicroBatcher(_echo, max_batch_size=16, max_wait_ms=20)
        await batcher.start()
        texts = [["x" * (i + 1), "y" * (i + 2)] for i in range(40)]
        outs = await asyncio.gather(*(batcher.submit(t) for t in texts))
        await batcher.stop()
        return outs, batcher.batch_sizes

    outs, sizes = _run(main())
    for i, out in enumerate(outs):
        assert out[:, 0].tolist() == [i + 1, i + 2]  # own rows, in order
    assert max(sizes) == 16 and sum(sizes) == 80
    assert all(size <= 16 for size in sizes)


def test_lone_request_waits_at_most_max_wait() -> None:
    async def main() -> float:
        batcher = MicroBatcher(_echo, max_batch_size=64, max_wait_ms=5)
        await batcher.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit(["hello"])
        elapsed = loop.time() - start
        await batcher.stop()
        return elapsed

    assert _run(main()) < 0.5


def test_request_bigger_than_max_batch_is_split_and_comes_back_in_order() -> None:
    # (Before fair batching a request was never split: this one ran alone as one call of 10.)
    async def main() -> list[int]:
        batcher = MicroBatcher(_echo, max_batch_size=4, max_wait_ms=10)
        await batcher.start()
        big = ["a" * (i + 1) for i in range(10)]
        out = await asyncio.gather(batcher.submit(big), batcher.submit(["b"]))
        await batcher.stop()
        assert out[0][:, 0].tolist() == [len(t) for t in big]  # its own rows, in order
        assert out[1].shape == (1, 2)
        return batcher.batch_sizes

    sizes = _run(main())
    assert max(sizes) <= 4 and sum(sizes) == 11


def test_model_error_reaches_every_request_of_the_batch() -> None:
    def boom(texts: list[str]) -> np.ndarray:
        raise RuntimeError("model failed")

    async def main() -> None:
        batcher = MicroBatcher(boom, max_batch_size=8, max_wait_ms=10)
        await batcher.start()
        results = await asyncio.gather(
            batcher.submit(["a"]), batcher.submit(["b"]), return_exceptions=True
        )
        await batcher.stop()
        assert all(isinstance(r, RuntimeError) for r in results)

    _run(main())


def test_inference_runs_off_the_event_loop() -> None:
    seen: list[str] = []

    def record(texts: list[str]) -> np.ndarray:
        seen.append(threading.current_thread().name)
        return _echo(texts)

    async def main() -> None:
        batcher = MicroBatcher(record, max_batch_size=8, max_wait_ms=1)
        await batcher.start()
        await batcher.submit(["a"])
        await batcher.stop()

    _run(main())
    assert seen and seen[0].startswith("fenlei-infer")


def test_batches_larger_than_one_form_under_http_load(
    start_server: StartServer, serve_run: Path
) -> None:
    server = start_server({"intents": serve_run}, max_batch_size=32, max_wait_ms=10)

    async def load() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/v1/models/intents/predict", json={"texts": [f"parcel {i}"]})
                    for i in range(64)
                )
            )
        return [r.status_code for r in responses]

    assert set(asyncio.run(load())) == {200}
    sizes = server.state.models["intents"].batcher.batch_sizes
    assert sum(sizes) == 64
    assert max(sizes) > 1, sizes
    with server.client() as c:
        metrics = c.get("/metrics").text
    assert 'fenlei_batch_size_count{model="intents"}' in metrics
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('fenlei_batch_size_count{model="intents"}')
    )
    assert count == pytest.approx(len(sizes))


def test_two_workers_run_two_batches_at_once() -> None:
    lock = threading.Lock()
    active = [0, 0]  # now, most

    def slow(texts: list[str]) -> np.ndarray:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        threading.Event().wait(0.05)
        with lock:
            active[0] -= 1
        return _echo(texts)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(slow, max_batch_size=4, max_wait_ms=1, workers=2)
        await batcher.start()
        outs = await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(16)))
        await batcher.stop()
        return list(outs)

    outs = _run(main())
    assert [o[0, 0] for o in outs] == [len(f"t{i}") for i in range(16)]
    assert active[1] == 2


def test_workers_auto_one_per_free_core_for_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    from fenlei.models import family_of
    from fenlei.predict import PredictorInfo
    from fenlei.serve.app import _workers
    from fenlei.serve.schemas import ServeSettings

    def predictor(preset: str) -> PredictorInfo:
        architecture = load_config(preset).model.architecture
        return PredictorInfo(
            labels=("a", "b"),
            multi_label=False,
            architecture=architecture,
            backend="onnx",
            device="cpu",
            serve_chunk=family_of(architecture).serve_chunk,
        )

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert _workers(predictor("minilm"), ServeSettings(threads=1)) == 2
    assert _workers(predictor("minilm"), ServeSettings(threads=2)) == 1
    assert _workers(predictor("linear"), ServeSettings(threads=1)) == 1
    assert _workers(predictor("minilm"), ServeSettings(workers=3)) == 3


# ---------------------------------------------------------------- isolation


def test_a_failing_text_fails_only_its_own_request(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[list[str]] = []

    def picky(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        if "POISON" in texts:
            raise ValueError("cannot encode POISON")
        return _echo(texts)

    async def main() -> list[Any]:
        batcher = MicroBatcher(picky, max_batch_size=64, max_wait_ms=50)
        await batcher.start()
        requests = [[f"t{i}", f"u{i}"] for i in range(40)]
        requests[17] = ["ok", "POISON"]
        outs = await asyncio.gather(
            *(batcher.submit(texts) for texts in requests), return_exceptions=True
        )
        await batcher.stop()
        return list(outs)

    with caplog.at_level("WARNING", logger="fenlei.serve.batching"):
        outs = _run(main())
    assert isinstance(outs[17], ValueError)
    for i, out in enumerate(outs):
        if i != 17:
            assert isinstance(out, np.ndarray), (i, out)
            assert out[:, 0].tolist() == [len(f"t{i}"), len(f"u{i}")]
    shared = [c for c in calls if "POISON" in c and len(c) > 2]
    assert shared, calls  # the poison was batched with others, so isolation was exercised
    records = [r for r in caplog.records if r.name == "fenlei.serve.batching"]
    assert len(records) == len(shared) and all(r.exc_info is None for r in records)
    assert "ValueError: cannot encode POISON" in records[0].getMessage()


# ---------------------------------------------------------------- fairness


def _gated() -> tuple[Any, threading.Event, threading.Event, list[list[str]]]:
    """A batch function whose first call blocks until released; records every batch."""
    started, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def fn(texts: list[str]) -> np.ndarray:
        batches.append(texts)
        if len(batches) == 1:
            started.set()
            release.wait(timeout=30)
        return _echo(texts)

    return fn, started, release, batches


async def _until(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.001)


def test_small_request_goes_into_the_next_batch_not_behind_a_large_one() -> None:
    fn, started, release, batches = _gated()
    big = [f"{i:02d}" + "x" * 998 for i in range(20)]  # 20 texts of 1,000 characters

    async def main() -> tuple[np.ndarray, np.ndarray]:
        batcher = MicroBatcher(fn, max_batch_size=64, max_batch_chars=2000, max_wait_ms=1)
        await batcher.start()
        big_task = asyncio.ensure_future(batcher.submit(big))
        await _until(started)  # the first 2,000 characters of the big request are running
        # 600 characters: more than the express lane takes (a quarter of 2,000)
        small_task = asyncio.ensure_future(batcher.submit(["s" * 600]))
        await asyncio.sleep(0.01)
        release.set()
        out = await asyncio.gather(big_task, small_task)
        await batcher.stop()
        return out[0], out[1]

    big_out, small_out = _run(main())
    assert batches[0] == big[:2]
    assert batches[1][0] == "s" * 600  # next in line, not after the other 18 big texts
    assert small_out[:, 0].tolist() == [600]
    assert big_out[:, 0].tolist() == [1000] * 20
    assert [t for b in batches for t in b if t[0] != "s"] == big  # taken in order, once
    assert all(sum(len(t) for t in b) <= 2000 for b in batches)


def test_short_request_runs_at_once_while_a_long_batch_runs() -> None:
    fn, started, release, batches = _gated()

    async def main() -> np.ndarray:
        batcher = MicroBatcher(fn, max_batch_size=64, max_batch_chars=8000, max_wait_ms=1)
        await batcher.start()
        long_task = asyncio.ensure_future(batcher.submit(["z" * 6000]))
        await _until(started)  # a long batch (over a quarter of the budget) is running
        # the express lane answers while the long batch still holds the worker
        small = await asyncio.wait_for(batcher.submit(["hi", "there"]), timeout=20)
        assert not long_task.done()
        release.set()
        await long_task
        await batcher.stop()
        return small

    small = _run(main())
    assert small[:, 0].tolist() == [2, 5]
    assert batches[1] == ["hi", "there"]


def test_large_requests_take_turns_and_a_long_text_runs_alone() -> None:
    fn, started, release, batches = _gated()
    a = ["a" * 500] * 6
    b = ["b" * 500] * 6

    async def main() -> None:
        batcher = MicroBatcher(fn, max_batch_size=64, max_batch_chars=1000, max_wait_ms=1)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(["z" * 5000]))  # over the budget
        await _until(started)
        rest = asyncio.gather(batcher.submit(a), batcher.submit(b))
        await asyncio.sleep(0.01)
        release.set()
        await first
        await rest
        await batcher.stop()

    _run(main())
    assert batches[0] == ["z" * 5000]
    owners = [batch[0][0] for batch in batches[1:]]
    assert owners == ["a", "b", "a", "b", "a", "b"]  # least-served first: they alternate
    assert all(len(batch) == 2 for batch in batches[1:])


def test_a_request_left_unserved_too_long_goes_first() -> None:
    from fenlei.serve.batching import _STARVE_S, _Request

    loop = asyncio.new_event_loop()
    try:
        big = _Request(["x"], loop.create_future(), enqueued=0.0)
        big.served_chars = 10**6  # has had much, but nothing for a while
        new = _Request(["y"], loop.create_future(), enqueued=_STARVE_S)
        assert new.priority(_STARVE_S) < big.priority(_STARVE_S / 2)  # least served first
        assert big.priority(2 * _STARVE_S) < new.priority(2 * _STARVE_S)  # unless starving
    finally:
        loop.close()
