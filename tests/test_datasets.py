"""``fenlei.datasets``: registry, download with resume, checksum, conversion (no network).

Every test serves an archive it builds itself from a local HTTP server on 127.0.0.1 that
honours ``Range`` and can cut a response short, and points the registry at it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import http.server
import io
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fenlei import datasets, download
from fenlei.cli import main
from fenlei.errors import DataError


def _sst2_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            "SST-2/train.tsv",
            "sentence\tlabel\nit 's a charming journey \t1\na dull , lifeless film \t0\n"
            "warm and funny \t1\n",
        )
        zf.writestr("SST-2/dev.tsv", "sentence\tlabel\nbrilliant \t1\nboring \t0\n")
    return buf.getvalue()


class _Server:
    """A tiny HTTP file server: Range support, and an optional cut after N bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None
        self.send_length = True  # False: no Content-Length, the body ends when the socket closes
        self.sent: list[int] = []  # bytes each response managed to send before the client left
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                body = server.files.get(name)
                rng = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": rng})
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                if server.send_length:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(payload[: server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send_in_blocks(payload)

            def _send_in_blocks(self, payload: bytes) -> None:
                sent = 0
                try:
                    for at in range(0, len(payload), 4096):
                        self.wfile.write(payload[at : at + 4096])
                        self.wfile.flush()
                        sent += len(payload[at : at + 4096])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what the size cap is for
                server.sent.append(sent)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture
def sst2(monkeypatch: pytest.MonkeyPatch, server: _Server) -> bytes:
    """Serve a small SST-2.zip and make the registry publish its real sha256 and size."""
    data = _sst2_zip()
    server.files["SST-2.zip"] = data
    spec = datasets.REGISTRY["sst2"]
    remote = dataclasses.replace(
        spec.files[0], sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )
    monkeypatch.setitem(datasets.REGISTRY, "sst2", dataclasses.replace(spec, files=(remote,)))
    return data


def _rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def _leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))


def test_registry_entries_are_complete() -> None:
    names = [d.name for d in datasets.list_datasets()]
    assert {"imdb", "sst2", "ag_news", "banking77", "chnsenticorp"} <= set(names)
    for spec in datasets.list_datasets():
        for remote in spec.files:
            assert remote.url.startswith("https://")
            assert remote.sha256 is None or len(remote.sha256) == 64
    assert datasets.REGISTRY["imdb"].verified
    assert not datasets.REGISTRY["chnsenticorp"].verified


def test_get_downloads_verifies_and_converts(tmp_path: Path, server: _Server, sst2: bytes) -> None:
    ds = datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert ds.rows == {"train": 3, "dev": 2}
    assert _rows(ds.tables["train"])[:2] == [
        ["text", "label"],
        ["it 's a charming journey ", "positive"],
    ]
    assert _rows(ds.tables["dev"])[2] == ["boring ", "negative"]
    assert (tmp_path / "downloads" / "SST-2.zip").read_bytes() == sst2
    # a second call reuses the cache and does not touch the network
    server.requests.clear()
    again = datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert again.tables == ds.tables and server.requests == []


def test_resume_after_a_truncated_part(tmp_path: Path, server: _Server, sst2: bytes) -> None:
    server.cut_after = 100  # the connection drops after 100 bytes
    with pytest.raises(datasets.DownloadError, match="run the same command again to resume"):
        datasets.get("sst2", cache=tmp_path, base_url=server.url)
    part = tmp_path / "downloads" / "SST-2.zip.part"
    assert part.stat().st_size == 100
    assert not (tmp_path / "sst2").exists()
    server.cut_after = None
    ds = datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert server.requests[-1]["range"] == "bytes=100-"
    assert ds.rows["train"] == 3
    assert not part.exists()


def test_checksum_mismatch_leaves_nothing(
    tmp_path: Path, server: _Server, sst2: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = datasets.REGISTRY["sst2"]
    bad = dataclasses.replace(spec.files[0], sha256="0" * 64)
    monkeypatch.setitem(datasets.REGISTRY, "sst2", dataclasses.replace(spec, files=(bad,)))
    with pytest.raises(datasets.DownloadError, match="checksum mismatch") as info:
        datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert hashlib.sha256(sst2).hexdigest() in str(info.value)
    assert _leftovers(tmp_path) == ["downloads"]


def test_truncated_file_on_the_server_is_an_error(
    tmp_path: Path, server: _Server, sst2: bytes
) -> None:
    server.files["SST-2.zip"] = sst2[:-50]  # the server's copy is short but complete
    with pytest.raises(datasets.DownloadError, match="truncated"):
        datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert _leftovers(tmp_path) == ["downloads"]


def test_oversized_file_is_refused_before_it_is_written(
    tmp_path: Path, server: _Server, sst2: bytes
) -> None:
    server.files["SST-2.zip"] = sst2 * 60  # a mirror serving something 60x the published size
    with pytest.raises(datasets.DownloadError, match="more than the") as info:
        datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert f"announces {len(sst2) * 60:,} bytes, more than the {len(sst2):,}" in str(info.value)
    assert "--base-url" in str(info.value)
    assert _leftovers(tmp_path) == ["downloads"]


def test_oversized_file_without_a_length_is_cut_at_the_published_size(
    tmp_path: Path, server: _Server, sst2: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.send_length = False  # the client learns the size only by reading
    server.files["SST-2.zip"] = sst2 + bytes(32 << 20)  # more than any socket buffers hold
    written: list[int] = []
    real_copy = download._copy_capped

    def spy(*args: Any) -> int:
        try:
            return real_copy(*args)
        finally:
            written.append(args[1].tell())

    monkeypatch.setattr(download, "_copy_capped", spy)
    with pytest.raises(datasets.DownloadError, match=f"sends more than the {len(sst2):,} bytes"):
        datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert written and written[0] <= len(sst2)  # never wrote past the published size
    assert _leftovers(tmp_path) == ["downloads"]
    # the client hung up instead of reading the rest: the server could not send it all
    for _ in range(1000):
        if server.sent:
            break
        time.sleep(0.01)
    assert server.sent and server.sent[0] < len(server.files["SST-2.zip"])


def test_a_part_file_longer_than_the_published_size_is_restarted(
    tmp_path: Path, server: _Server, sst2: bytes
) -> None:
    part = tmp_path / "downloads" / "SST-2.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * (len(sst2) + 10))
    ds = datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert ds.rows["train"] == 3
    assert server.requests[-1]["range"] is None


def test_every_registry_file_has_a_byte_limit() -> None:
    for spec in datasets.list_datasets():
        for remote in spec.files:
            assert remote.byte_limit is not None, remote.name


def test_unverified_file_is_refused_until_accepted(
    tmp_path: Path, server: _Server, sst2: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = datasets.REGISTRY["sst2"]
    unknown = dataclasses.replace(spec.files[0], sha256=None, size=None)
    monkeypatch.setitem(datasets.REGISTRY, "sst2", dataclasses.replace(spec, files=(unknown,)))
    with pytest.raises(datasets.DownloadError, match="--accept-unverified") as info:
        datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert hashlib.sha256(sst2).hexdigest() in str(info.value)
    assert not (tmp_path / "sst2").exists()
    ds = datasets.get("sst2", cache=tmp_path, base_url=server.url, accept_unverified=True)
    assert ds.rows["dev"] == 2


def test_corrupt_archive_leaves_no_dataset(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    junk = b"not a zip file at all" * 10
    server.files["SST-2.zip"] = junk
    spec = datasets.REGISTRY["sst2"]
    remote = dataclasses.replace(
        spec.files[0], sha256=hashlib.sha256(junk).hexdigest(), size=len(junk)
    )
    monkeypatch.setitem(datasets.REGISTRY, "sst2", dataclasses.replace(spec, files=(remote,)))
    with pytest.raises(DataError, match="not in the expected format"):
        datasets.get("sst2", cache=tmp_path, base_url=server.url)
    assert _leftovers(tmp_path) == ["downloads", "downloads/SST-2.zip"]


def test_unknown_dataset_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"known datasets are: .*imdb"):
        datasets.get("imbd", cache=tmp_path)


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FENLEI_CACHE", str(tmp_path))
    assert datasets.cache_dir() == tmp_path / "datasets"
    assert datasets.cache_dir(tmp_path / "x") == tmp_path / "x"


def test_cli_list_and_get(
    tmp_path: Path, server: _Server, sst2: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datasets", "list"]) == 0
    listed = capsys.readouterr().out
    assert "banking77" in listed and "chnsenticorp" in listed
    code = main(["datasets", "get", "sst2", "--cache", str(tmp_path), "--base-url", server.url])
    assert code == 0
    assert "train.csv" in capsys.readouterr().out
    assert main(["datasets", "get", "nope", "--cache", str(tmp_path)]) == 2
    assert "error: unknown dataset" in capsys.readouterr().err
