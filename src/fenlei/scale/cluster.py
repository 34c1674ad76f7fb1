"""Reaching a Ray cluster: the options every ``--ray`` command shares, and the connection.

:class:`RayOptions` holds what the CLI's ``--ray*`` options say; :func:`connect` joins the
cluster at ``address`` (or starts a local one) for the length of a ``with`` block. An address
that does not answer is refused after a short TCP connect timeout, never a hung process; the
dashboard stays off unless asked (and then listens on 127.0.0.1). Ray is an optional extra:
without it :func:`require_ray` raises :class:`~fenlei.errors.MissingExtraError`.

Example:
    >>> with connect(RayOptions(workers=2)):  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

from fenlei.errors import ConfigError, FenleiError, MissingExtraError

__all__ = [
    "RayOptions",
    "connect",
    "require_ray",
    "storage_root",
    "user_error",
]

logger = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs on Ray.

    Attributes:
        address: a running cluster (``host:port``, ``ray://host:port`` or ``auto``); None
            starts a local Ray for the job (or uses ``RAY_ADDRESS`` when it is set).
        workers: training workers or prediction actors (at least 1).
        cpus_per_worker: CPUs each worker reserves.
        gpus_per_worker: GPUs each worker reserves (> 0: Ray Train uses CUDA and NCCL).
        storage: where Ray keeps checkpoints: a folder every node sees, or a URI pyarrow
            understands (``s3://``, ``gs://``); None: a hidden folder beside the run folder.
        dashboard: start Ray's dashboard (on 127.0.0.1) with a local Ray.
        max_failures: how often a training job restarts from its last checkpoint after a
            worker dies.
        connect_timeout: seconds to wait for ``address`` to answer.
    """

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    storage: str | None = None
    dashboard: bool = False
    max_failures: int = 1
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ConfigError(
                "--cpus-per-worker must be above 0 and --gpus-per-worker at least 0, not "
                f"{self.cpus_per_worker} and {self.gpus_per_worker}"
            )
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must be at least 0, not {self.max_failures}")


def require_ray(feature: str = "--ray") -> ModuleType:
    """Import ``ray``, or say in one line how to install it.

    Raises:
        MissingExtraError: ray is not installed.
    """
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError("ray", "ray", feature) from exc
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of an address that names one; None for ``auto`` and ``local``."""
    if address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"--ray-address {address!r} has no valid port; use host:port") from exc
    if not parsed.hostname or port is None:
        raise ConfigError(f"--ray-address {address!r} is not host:port or ray://host:port")
    return parsed.hostname, port


def _check_reachable(address: str, timeout: float) -> None:
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} within {timeout:g} s ({exc}); start one "
            "with `ray start --head` there, or leave out --ray-address to start a local Ray"
        ) from exc


def _init_kwargs(options: RayOptions, address: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
    kwargs["logging_level"] = logging.WARNING
    if address is None:  # a local Ray of our own: the dashboard on request, on loopback
        kwargs["include_dashboard"] = options.dashboard
        kwargs["dashboard_host"] = LOCAL_HOST
    return kwargs


@contextmanager
def connect(options: RayOptions) -> Iterator[ModuleType]:
    """Join (or start) the Ray cluster for the block; leave it afterwards.

    A Ray already initialised in this process (a test's, a notebook's) is used as it is
    and left running.

    Raises:
        MissingExtraError: ray is not installed.
        ConfigError: the address does not answer, or Ray refuses it.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _check_reachable(address, options.connect_timeout)
    try:
        ray.init(**_init_kwargs(options, address))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def storage_root(storage: str | None, run_dir: Path) -> tuple[str, str]:
    """``(storage_path, name)`` for Ray Train's checkpoints of ``run_dir``.

    A local folder must be creatable and writable here; on a multi-node cluster it must be
    a shared folder (every node sees it at the same path) or an object-store URI.

    Raises:
        ConfigError: the folder cannot be created or written, or pyarrow does not
            understand the URI.
    """
    name = f".{run_dir.name}.ray"
    if storage is None:
        return str(run_dir.resolve().parent), name
    if "://" in storage:
        try:
            from pyarrow import fs

            fs.FileSystem.from_uri(storage)
        except Exception as exc:  # pyarrow raises several types for a URI it cannot use
            raise ConfigError(f"--storage {storage!r}: pyarrow cannot open it ({exc})") from exc
        return storage, name
    folder = Path(storage).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fenlei-probe-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"--storage {storage}: cannot write there ({exc}); give a folder every Ray node "
            "can write (a shared mount) or an s3:// / gs:// URI"
        ) from exc
    return str(folder), name


def user_error(exc: BaseException) -> FenleiError | None:
    """The fenlei error a Ray failure carries (a worker's bad input), if it carries one.

    Ray wraps a worker's exception (``RayTaskError`` subclasses the original class, Ray
    Train's ``WorkerGroupError`` maps ranks to them); this finds a :class:`FenleiError` in
    that nest so the CLI can print its one line.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        cause = getattr(item, "cause", None)  # a RayTaskError: its str() is a traceback
        if isinstance(cause, BaseException):
            stack.append(cause)
            continue
        if isinstance(item, FenleiError):
            return item
        failures = getattr(item, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(e for e in failures.values() if isinstance(e, BaseException))
        for attr in ("controller_failure", "__cause__", "__context__"):
            inner = getattr(item, attr, None)
            if isinstance(inner, BaseException):
                stack.append(inner)
    return None
