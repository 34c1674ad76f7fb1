"""Load benchmark of the HTTP service against a naive server and a transformers pipeline.

Loopback only, bounded in seconds and requests. Each server runs in its own process; the
load generator here is a small keep-alive HTTP/1.1 client on asyncio (one connection per
concurrent client, one text per request) so that the client costs the shared CPU little.

Servers compared in the same run, on the same model and the same texts:

* ``fenlei``   -- ``fenlei serve``: micro-batching, inference in a worker thread.
* ``naive``    -- a FastAPI endpoint calling ``Predictor.predict_proba`` once per request
  (same model, same backend as ``fenlei``: the difference is the batching).
* ``pipeline`` -- (transformer runs only) a FastAPI endpoint calling a ``transformers``
  text-classification pipeline on the same pretrained encoder, once per request.

``--scenario noisy`` (fenlei only) measures fairness instead: ``--concurrency`` clients send
one text per request, first alone, then while one more client sends the largest requests
the server allows (``--noisy-texts`` texts of ``--noisy-chars`` characters) back to back.
The target: the small clients' p50 at most doubles.

Usage::

    python bench/serve_load.py                          # trains runs/bench-linear if needed
    python bench/serve_load.py --run runs/minilm --servers fenlei,naive,pipeline
    python bench/serve_load.py --duration 5 --concurrency 1,32   # a quick look
    python bench/serve_load.py --scenario noisy --concurrency 8 --duration 20 \
        --out bench/results/serve_noisy_linear.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAX_REQUESTS = 2_000_000  # hard bound per level, whatever the duration


# ---------------------------------------------------------------- servers (subprocesses)


def _naive_app(run: str, backend: str, threads: int) -> Any:
    from fastapi import FastAPI

    from fenlei.decision import decide
    from fenlei.predict import Predictor

    # same ONNX Runtime threads as fenlei's (torch's are set process-wide by _serve_main)
    predictor = Predictor.from_run(run, backend=backend, threads=threads or None)
    app = FastAPI()

    @app.post("/v1/models/{name}/predict")
    def predict(name: str, body: dict[str, Any]) -> dict[str, Any]:
        probs = predictor.predict_proba(body["texts"])  # one model call per request
        decided = decide(probs, predictor.labels, predictor.rule)
        return {
            "model": name,
            "predictions": [
                {"label": d.label, "score": d.score, "labels": list(d.labels)} for d in decided
            ],
        }

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def _pipeline_app(run: str) -> Any:
    from fastapi import FastAPI
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from fenlei.artifact import load_run

    loaded = load_run(run)  # the run's config names the pretrained encoder and its length
    labels, config = loaded.labels, loaded.config
    encoder_dir = config.model.pretrained or config.encoder.pretrained
    from fenlei.tokenize import resolve_pretrained

    path = resolve_pretrained(str(encoder_dir))
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    tokenizer = AutoTokenizer.from_pretrained(path)
    import torch

    gpu = 0 if torch.cuda.is_available() else -1  # where fenlei and naive run too (auto)
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, device=gpu)
    max_length = config.encoder.max_length
    app = FastAPI()

    @app.post("/v1/models/{name}/predict")
    def predict(name: str, body: dict[str, Any]) -> dict[str, Any]:
        out = pipe(body["texts"], truncation=True, max_length=max_length)
        return {
            "model": name,
            "predictions": [{"label": o["label"], "score": o["score"]} for o in out],
        }

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def _serve_main(
    kind: str, run: str, port: int, max_batch_size: int, max_wait_ms: float, backend: str
) -> None:
    import uvicorn

    from fenlei.runtime import configure_torch

    # Same intra-op threads for every server (FENLEI_BENCH_THREADS, default 1; 0 = torch's),
    # and flush-denormal as fenlei serve sets it.
    threads = int(os.environ.get("FENLEI_BENCH_THREADS", "1"))
    configure_torch(threads=threads or None)
    if kind == "fenlei":
        from fenlei.serve.app import create_app
        from fenlei.serve.schemas import ServeSettings

        settings = ServeSettings(
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            backend=backend,  # type: ignore[arg-type]
            threads=threads or None,
            # FENLEI_BENCH_WORKERS overrides fenlei's own choice (0 = auto, the default)
            workers=int(os.environ.get("FENLEI_BENCH_WORKERS", "0")) or None,
            # FENLEI_BENCH_BATCH_CHARS sets max_batch_chars (unset: the default)
            **_batch_chars(),
        )
        app = create_app({"bench": run}, settings)
    elif kind == "naive":
        app = _naive_app(run, backend, threads)
    else:
        app = _pipeline_app(run)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _batch_chars() -> dict[str, int]:
    value = os.environ.get("FENLEI_BENCH_BATCH_CHARS")
    return {"max_batch_chars": int(value)} if value else {}


# ---------------------------------------------------------------- the load generator


@dataclass
class Level:
    server: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


async def _client(
    port: int, bodies: list[bytes], stop_at: float, lat: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /v1/models/bench/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    )
    i = random.randrange(len(bodies))
    try:
        while time.perf_counter() < stop_at and len(lat) < MAX_REQUESTS:
            body = bodies[i % len(bodies)]
            i += 1
            start = time.perf_counter()
            writer.write(head.format(len(body)).encode() + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - start)
            if not status_line.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    except (ConnectionError, asyncio.IncompleteReadError):
        errors.append(1)
    finally:
        writer.close()


async def _level(port: int, bodies: list[bytes], concurrency: int, seconds: float) -> tuple:
    lat: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(_client(port, bodies, stop_at, lat, errors) for _ in range(concurrency)))
    return lat, len(errors), time.perf_counter() - start


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def _run(coro: Any) -> Any:
    # uvloop (installed with uvicorn[standard]) spends less of the shared CPU per request
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_level(
    server: str, port: int, bodies: list[bytes], concurrency: int, seconds: float, warmup: float
) -> Level:
    _run(_level(port, bodies, concurrency, warmup))
    lat, errors, elapsed = _run(_level(port, bodies, concurrency, seconds))
    return Level(
        server=server,
        concurrency=concurrency,
        seconds=round(elapsed, 2),
        requests=len(lat),
        errors=errors,
        rps=round(len(lat) / elapsed, 1),
        p50_ms=round(_percentile(lat, 0.50), 2),
        p99_ms=round(_percentile(lat, 0.99), 2),
    )


# ---------------------------------------------------------------- orchestration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def _texts() -> list[str]:
    from fenlei.data import bundled_dataset_path, load_table

    texts = [t for split in ("dev", "test") for t in load_table(bundled_dataset_path(split)).texts]
    return texts


def _ensure_linear_run(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    from fenlei.classifier import TextClassifier
    from fenlei.data import bundled_dataset_path, load_table

    train = load_table(bundled_dataset_path("train"))
    TextClassifier("linear", overrides=["eval.plots=false"], run_dir=path).fit(
        train.texts, [labels[0] for labels in train.labels]
    )
    return path


def bench_server(
    kind: str, run: Path, args: argparse.Namespace, bodies: list[bytes]
) -> list[Level]:
    port = _free_port()
    cmd = [sys.executable, __file__, "_serve", kind, str(run), str(port)]
    cmd += [str(args.max_batch_size), str(args.max_wait_ms), args.backend]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with subprocess.Popen(cmd, env=env) as proc:
        try:
            _wait_ready(port, proc)
            levels = []
            for c in args.concurrency:
                level = run_level(kind, port, bodies, c, args.duration, args.warmup)
                print(json.dumps(asdict(level)), flush=True)
                levels.append(level)
            return levels
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def _noisy_phase(
    port: int, small: list[bytes], big: list[bytes] | None, concurrency: int, seconds: float
) -> tuple[Level, Level | None]:
    """Small clients (and, when ``big`` is given, one client sending it) for ``seconds``."""

    async def phase() -> tuple[list[float], int, list[float], int, float]:
        lat: list[float] = []
        errors: list[int] = []
        big_lat: list[float] = []
        big_errors: list[int] = []
        start = time.perf_counter()
        stop_at = start + seconds
        clients = [_client(port, small, stop_at, lat, errors) for _ in range(concurrency)]
        if big is not None:
            clients.append(_client(port, big, stop_at, big_lat, big_errors))
        await asyncio.gather(*clients)
        elapsed = time.perf_counter() - start
        return lat, len(errors), big_lat, len(big_errors), elapsed

    lat, errors, big_lat, big_errors, elapsed = _run(phase())

    def level(name: str, values: list[float], n_errors: int, c: int) -> Level:
        return Level(
            server=name,
            concurrency=c,
            seconds=round(elapsed, 2),
            requests=len(values),
            errors=n_errors,
            rps=round(len(values) / elapsed, 1),
            p50_ms=round(_percentile(values, 0.50), 2),
            p99_ms=round(_percentile(values, 0.99), 2),
        )

    name = "fenlei, small clients" + (" + noisy neighbour" if big is not None else " alone")
    noisy = level("fenlei, noisy neighbour", big_lat, big_errors, 1) if big is not None else None
    return level(name, lat, errors, concurrency), noisy


def bench_noisy(run: Path, args: argparse.Namespace, small: list[bytes]) -> dict[str, Any]:
    """Small clients' latency alone, then beside one client sending maximum-size requests."""
    texts = _texts()
    rng = random.Random(1)
    big_texts = []
    for _ in range(args.noisy_texts):
        rng.shuffle(texts)
        pool = " ".join(texts)
        while len(pool) < args.noisy_chars:
            pool = f"{pool} {pool}"
        big_texts.append(pool[: args.noisy_chars])
    big = [json.dumps({"texts": big_texts}, ensure_ascii=False).encode()]
    port = _free_port()
    cmd = [sys.executable, __file__, "_serve", "fenlei", str(run), str(port)]
    cmd += [str(args.max_batch_size), str(args.max_wait_ms), args.backend]
    c = args.concurrency[0]
    with subprocess.Popen(cmd, env={**os.environ}) as proc:
        try:
            _wait_ready(port, proc)
            _noisy_phase(port, small, big, c, args.warmup)  # warm both request shapes
            quiet, _ = _noisy_phase(port, small, None, c, args.duration)
            loud, noisy = _noisy_phase(port, small, big, c, args.duration)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    assert noisy is not None
    ratio = loud.p50_ms / quiet.p50_ms if quiet.p50_ms else float("inf")
    return {
        "levels": [quiet, loud, noisy],
        "noisy_request": {
            "texts": len(big_texts),
            "chars": sum(len(t) for t in big_texts),
            "bytes": len(big[0]),
        },
        "max_batch_chars": int(os.environ.get("FENLEI_BENCH_BATCH_CHARS") or 0) or "default",
        "p50_ratio": round(ratio, 2),
        "target_met": ratio <= 2.0,
    }


def _markdown(levels: list[Level]) -> str:
    lines = [
        "| server | concurrency | requests/s | p50 ms | p99 ms | errors | requests |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for lv in levels:
        lines.append(
            f"| {lv.server} | {lv.concurrency} | {lv.rps:,.0f} | {lv.p50_ms:.1f} | "
            f"{lv.p99_ms:.1f} | {lv.errors} | {lv.requests:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_serve":
        kind, run, port, mbs, mw = argv[1:6]
        backend = argv[6] if len(argv) > 6 else "auto"
        _serve_main(kind, run, int(port), int(mbs), float(mw), backend)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        type=Path,
        default=ROOT / "runs" / "bench-linear",
        help="Run folder (a linear run is trained there if missing).",
    )
    parser.add_argument(
        "--servers",
        default="fenlei,naive",
        help="Comma list of fenlei, naive, pipeline (transformer runs).",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds per level.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Warm-up seconds per level.")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument(
        "--backend",
        default="auto",
        help="fenlei and naive servers: auto (ONNX Runtime if model.onnx) | torch | onnx.",
    )
    parser.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    parser.add_argument("--label", default="", help="A name for the run in the JSON.")
    parser.add_argument(
        "--scenario",
        choices=("levels", "noisy"),
        default="levels",
        help="levels: each server at each concurrency; noisy: fenlei's small clients "
        "alone, then beside one client sending maximum-size requests.",
    )
    parser.add_argument("--noisy-texts", type=int, default=256, help="Texts per noisy request.")
    parser.add_argument(
        "--noisy-chars", type=int, default=10_000, help="Characters per noisy text."
    )
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    run = _ensure_linear_run(args.run) if args.run.name == "bench-linear" else args.run
    rng = random.Random(0)
    texts = _texts()
    rng.shuffle(texts)
    bodies = [json.dumps({"texts": [t]}, ensure_ascii=False).encode() for t in texts]
    load_before = os.getloadavg()
    levels: list[Level] = []
    extra: dict[str, Any] = {}
    if args.scenario == "noisy":
        extra = bench_noisy(run, args, bodies)
        levels = extra.pop("levels")
    else:
        for kind in args.servers.split(","):
            levels += bench_server(kind, run, args, bodies)
    load_after = os.getloadavg()
    print(_markdown(levels))
    if extra:
        print(json.dumps(extra))
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(1 min); {os.cpu_count()} CPUs"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "run": str(run),
                    "scenario": args.scenario,
                    "label": args.label or args.scenario,
                    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "cpus": os.cpu_count(),
                    "load_before": load_before,
                    "load_after": load_after,
                    "levels": [asdict(lv) for lv in levels],
                    **extra,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
