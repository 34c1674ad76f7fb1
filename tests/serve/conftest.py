"""Fixtures of the service tests: one small trained run folder and live loopback servers.

Servers are real uvicorn servers on a free 127.0.0.1 port, run in a background thread;
nothing but loopback is ever contacted.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fenlei.classifier import TextClassifier
from fenlei.data import Dataset
from fenlei.predict import Predictor
from fenlei.serve.app import ServeState, create_app
from fenlei.serve.guard import uvicorn_options
from fenlei.serve.schemas import ServeSettings


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory: pytest.TempPathFactory, bundled: dict[str, Dataset]) -> Path:
    """A small linear run folder trained on the bundled data (with reference.json)."""
    run_dir = tmp_path_factory.mktemp("serve") / "intents"
    train = bundled["train"]
    TextClassifier(
        "linear",
        overrides=[
            "train.epochs=4",
            "model.buckets=2000",
            "eval.plots=false",
            "train.lr=0.02",
            "data.dev_fraction=0.3",  # a bigger reference sample: steadier PSI
        ],
        run_dir=run_dir,
    ).fit(train.texts, [labels[0] for labels in train.labels])
    return run_dir


@pytest.fixture(scope="session")
def predictor(serve_run: Path) -> Predictor:
    """The run folder's predictor (torch backend)."""
    return Predictor.from_run(serve_run, backend="torch")


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder (tests that alter one work on a copy)."""
    shutil.copytree(src, dst)
    return dst


class LiveServer:
    """A uvicorn server in a thread on a free loopback port, configured as `fenlei serve`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options = uvicorn_options(app.state.fenlei.settings)  # the HTTP limits of serve()
        config = uvicorn.Config(app, log_level="warning", lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def state(self) -> ServeState:
        """The app's state (loaded models, batchers, metrics)."""
        state: ServeState = self.app.state.fenlei
        return state

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        with contextlib.suppress(OSError):
            self.sock.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


StartServer = Callable[..., LiveServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """A function (models, **settings) -> started :class:`LiveServer`, stopped after the test."""
    servers: list[LiveServer] = []

    def start(models: Any, **settings: Any) -> LiveServer:
        server = LiveServer(create_app(models, ServeSettings(**settings))).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def live(serve_run: Path) -> Iterator[LiveServer]:
    """One server over the run folder with small limits, shared by a module's tests."""
    app = create_app([serve_run], ServeSettings(max_texts=8, max_chars=500, max_wait_ms=1))
    server = LiveServer(app).start()
    yield server
    server.stop()


# ------------------------------------------------------------ headless chromium (offline)
# the `browser` fixture is in tests/conftest.py


def offline_page(
    browser: Any, server: LiveServer, outside: list[str], timeout_ms: int = 10_000
) -> Any:
    """A new page whose requests outside ``server`` are blocked and listed in ``outside``."""
    page = browser.new_page()
    page.set_default_timeout(timeout_ms)

    def route(r: Any) -> None:
        if r.request.url.startswith(server.url):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page
