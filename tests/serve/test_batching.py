"""The micro-batcher: batches form under concurrency, results go back to their request."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

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


def test_request_bigger_than_max_batch_runs_alone() -> None:
    async def main() -> list[int]:
        batcher = MicroBatcher(_echo, max_batch_size=4, max_wait_ms=10)
        await batcher.start()
        out = await asyncio.gather(batcher.submit(["a"] * 10), batcher.submit(["b"]))
        await batcher.stop()
        assert out[0].shape == (10, 2) and out[1].shape == (1, 2)
        return batcher.batch_sizes

    assert _run(main()) == [10, 1]


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
    from types import SimpleNamespace

    from fenlei.serve.app import _workers
    from fenlei.serve.schemas import ServeSettings

    def predictor(arch: str) -> Any:
        return SimpleNamespace(
            run=SimpleNamespace(config=load_config(arch)), device=torch.device("cpu")
        )

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert _workers(predictor("minilm"), ServeSettings(threads=1)) == 2
    assert _workers(predictor("minilm"), ServeSettings(threads=2)) == 1
    assert _workers(predictor("linear"), ServeSettings(threads=1)) == 1
    assert _workers(predictor("minilm"), ServeSettings(workers=3)) == 3
