"""`fenlei serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fenlei.cli._app import (
    app,
)

__all__ = ["serve"]


def _named_runs(runs: list[str]) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for item in runs:
        name, sep, path = item.partition("=")
        folder = Path(path) if sep else Path(item)
        key = name if sep else folder.resolve().name
        if key in named:
            raise typer.BadParameter(f"two runs are named {key!r}; name them: NAME=RUN")
        named[key] = folder
    return named


@app.command()
def serve(
    runs: Annotated[list[str], typer.Argument(help="Run folders to serve (NAME=RUN to rename).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most texts per model call.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="Batching wait (ms).")] = 2.0,
    max_texts: Annotated[int, typer.Option(min=1, help="Most texts per request.")] = 256,
    max_chars: Annotated[int, typer.Option(min=1, help="Most characters per text.")] = 10_000,
    max_explain_texts: Annotated[
        int, typer.Option(min=1, help="Most texts per explain request.")
    ] = 8,
    max_batch_chars: Annotated[
        int, typer.Option(min=1, help="Most characters per model call (fairness budget).")
    ] = 8_192,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            min=0, help="Most request body bytes (0 = max-texts * max-chars * 6 + 64 KiB)."
        ),
    ] = 0,
    max_header_bytes: Annotated[
        int, typer.Option(min=1024, help="Most bytes of request line + headers.")
    ] = 16_384,
    body_timeout_s: Annotated[
        float, typer.Option(min=0.001, help="Seconds to send a whole body (else 408).")
    ] = 30.0,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FENLEI_TOKEN", help="Require this bearer token on /v1 and /v2/models."
        ),
    ] = None,
    backend: Annotated[
        Literal["auto", "torch", "onnx"],
        typer.Option(help="auto: ONNX Runtime when the run folder holds model.onnx (CPU)."),
    ] = "auto",
    device: Annotated[
        Literal["auto", "cpu", "cuda"],
        typer.Option(help="auto: the GPU when torch sees one."),
    ] = "auto",
    drift_window: Annotated[int, typer.Option(min=10, help="Texts in the drift window.")] = 1000,
    threads: Annotated[
        int, typer.Option(min=0, help="Inference threads (0 = library default).")
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=16,
            help="Batches per model that may run at once (0 = auto: one per free core for "
            "transformers, one for other models).",
        ),
    ] = 0,
) -> None:
    """Serve run folders over HTTP: predictions, /metrics, drift, a page at /.

    Example: fenlei serve runs/demo intents=runs/r1 --port 8000 --max-batch-size 64
    """
    try:
        from fenlei.serve.app import serve as run_server
        from fenlei.serve.schemas import serve_settings
    except ImportError as exc:
        from fenlei.errors import MissingExtraError

        raise MissingExtraError(exc.name or "fastapi", "serve", "fenlei serve") from exc
    settings = serve_settings(
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_texts=max_texts,
        max_chars=max_chars,
        max_explain_texts=max_explain_texts,
        max_batch_chars=max_batch_chars,
        max_body_bytes=max_body_bytes or None,
        max_header_bytes=max_header_bytes,
        body_timeout_s=body_timeout_s,
        token=token or None,
        backend=backend,
        device=device,
        drift_window=drift_window,
        threads=threads or None,
        workers=workers or None,
    )
    run_server(_named_runs(runs), settings, host=host, port=port)
