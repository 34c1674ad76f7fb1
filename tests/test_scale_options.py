"""`--ray` without a cluster: options, missing Ray, bad input (each one error line, exit 2).

These never start Ray, so they run whether or not the extra is installed.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from fenlei.cli import main
from fenlei.errors import ArtifactError, ConfigError, MissingExtraError
from fenlei.scale import RayOptions, connect, predict_on_ray, require_ray
from fenlei.scale.cluster import storage_root, user_error


def test_workers_below_one_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "t.csv"
    table.write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    code = main(["train", str(table), "--ray", "--workers", "0", "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == ["error: --workers must be at least 1, not 0"]


def test_options_refuse_nonsense() -> None:
    with pytest.raises(ConfigError, match="cpus-per-worker"):
        RayOptions(cpus_per_worker=0)
    with pytest.raises(ConfigError, match="max-failures"):
        RayOptions(max_failures=-1)


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'fenlei\[ray\]'"):
        require_ray()


def test_missing_ray_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    table = tmp_path / "t.csv"
    table.write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    code = main(["train", str(table), "--ray", "-o", str(tmp_path / "r")])
    assert code == 2
    assert "pip install 'fenlei[ray]'" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as sock:  # bound then closed: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_address_fails_fast_without_starting_ray() -> None:
    pytest.importorskip("ray")
    options = RayOptions(address=f"127.0.0.1:{_closed_port()}", connect_timeout=1.0)
    with pytest.raises(ConfigError, match="no Ray cluster answers"), connect(options):
        pass


def test_address_without_port_is_refused() -> None:
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="host:port"), connect(RayOptions(address="somehost")):
        pass


def test_storage_that_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="--storage"):
        storage_root(str(blocker / "sub"), tmp_path / "run")


def test_default_storage_is_hidden_beside_the_run(tmp_path: Path) -> None:
    assert storage_root(None, tmp_path / "run") == (str(tmp_path.resolve()), ".run.ray")


def test_user_error_is_found_inside_ray_wrappers() -> None:
    inner = ConfigError("bad setting")

    class Wrapped(Exception):
        def __init__(self) -> None:
            super().__init__("traceback ...")
            self.worker_failures = {1: _Cause(inner)}

    assert user_error(Wrapped()) is inner
    assert user_error(RuntimeError("boom")) is None


class _Cause(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__("a RayTaskError's traceback")
        self.cause = cause


def test_batch_prediction_checks_its_arguments_before_starting_ray(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\.parquet or \.csv"):
        predict_on_ray(tmp_path, table, tmp_path / "out.txt", options=RayOptions())
    with pytest.raises(ArtifactError, match="not a run folder"):
        predict_on_ray(tmp_path / "nope", table, tmp_path / "out.parquet", options=RayOptions())
