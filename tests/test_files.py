"""Atomic files and staged folders get the modes the umask gives, never tempfile's 0600/0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenlei.errors import ArtifactError
from fenlei.files import atomic_write_text, staged_folder


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_get_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "{}")
    assert _mode(path) == 0o644  # mkstemp's 0600 kept other users from serving the run
    os.umask(0o077)
    atomic_write_text(path, "{}")
    assert _mode(path) == 0o600


def test_staged_folder_moves_into_place_with_a_mkdir_mode(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "runs" / "new"
    with staged_folder(target) as tmp:
        atomic_write_text(tmp / "config.json", "{}")
        assert not target.exists()
    assert (target / "config.json").read_text() == "{}"
    assert _mode(target) == 0o755
    assert [p.name for p in target.parent.iterdir()] == ["new"]


def test_staged_folder_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "new"
    with pytest.raises(RuntimeError), staged_folder(target) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_never_replaces_a_folder_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "new"
    with pytest.raises(ArtifactError, match="appeared"), staged_folder(target) as tmp:
        (tmp / "mine").write_text("x")
        target.mkdir()
        (target / "theirs").write_text("y")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["new"]
