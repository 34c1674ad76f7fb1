"""Resumable, size-capped, sha256-verified downloads of one published file.

:func:`download` keeps a verified local copy of a :class:`RemoteFile`: urllib with HTTP
``Range`` into a ``<file>.part`` file, stopped as soon as it passes the published size, then
checked against the published sha256 (or refused, without ``accept_unverified``, when none is
published). :mod:`fenlei.datasets` fetches its registry's files through it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fenlei.errors import DataError

__all__ = ["CHUNK", "DownloadError", "RemoteFile", "download", "file_sha256"]

logger = logging.getLogger(__name__)

CHUNK = 1 << 16


class DownloadError(DataError):
    """A download failed, was cut short, or does not match its published checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """One upstream file: where it is, its published sha256 (None when unknown) and size.

    ``size`` is the exact size in bytes; where no exact size is published, ``max_size`` is
    an upper bound. A download stops as soon as it passes either (see :attr:`byte_limit`).
    """

    name: str
    url: str
    sha256: str | None
    size: int | None = None
    max_size: int | None = None

    @property
    def byte_limit(self) -> int | None:
        """The most bytes a download of this file may write (None: no limit known)."""
        return self.size if self.size is not None else self.max_size


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks (hex digits)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_url(remote: RemoteFile, base_url: str | None) -> str:
    if base_url:
        return base_url.rstrip("/") + "/" + remote.name
    return remote.url


class _OverLimitError(Exception):
    """The server sends more bytes than the file may have (carries how many were kept)."""

    def __init__(self, kept: int, announced: int | None = None) -> None:
        super().__init__(kept)
        self.kept = kept
        self.announced = announced


def _over_limit(url: str, part: Path, limit: int, exc: _OverLimitError) -> DownloadError:
    part.unlink(missing_ok=True)
    if exc.announced is not None:
        what = f"announces {exc.announced:,} bytes, more than the {limit:,} this file has"
    else:
        what = f"sends more than the {limit:,} bytes this file has (stopped at {exc.kept:,})"
    return DownloadError(
        f"{url} {what}; the download was stopped and the partial file deleted. The server "
        "has a different file: retry later or from another mirror with --base-url"
    )


def _copy_capped(
    response: http.client.HTTPResponse, fh: IO[bytes], have: int, limit: int | None
) -> int:
    """Copy the body into ``fh`` (which holds ``have`` bytes); never let it pass ``limit``."""
    received = 0
    while block := response.read(CHUNK):
        if limit is not None and have + received + len(block) > limit:
            raise _OverLimitError(have + received)
        fh.write(block)
        received += len(block)
    return received


def _fetch(url: str, part: Path, *, timeout: float, limit: int | None = None) -> None:
    """Download ``url`` into ``part``, continuing from its current size with HTTP Range.

    A download that would pass ``limit`` bytes stops (before the first byte when the server
    announces the length), and the ``.part`` file is deleted.
    """
    have = part.stat().st_size if part.exists() else 0
    if limit is not None and have > limit:  # left by a server that sent too much before
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": "fenlei"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the .part is already whole
            return
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}; check the network, then retry") from exc
    with response:
        resumed = have > 0 and response.status == 206
        if have and not resumed:
            logger.info("%s ignored the Range request; downloading from the start", url)
        start = have if resumed else 0
        expected = response.headers.get("Content-Length")
        try:
            if limit is not None and expected is not None and start + int(expected) > limit:
                raise _OverLimitError(start, start + int(expected))
            with part.open("ab" if resumed else "wb") as fh:
                received = _copy_capped(response, fh, start, limit)
        except _OverLimitError as exc:
            assert limit is not None
            raise _over_limit(url, part, limit, exc) from None
        except (OSError, http.client.IncompleteRead) as exc:
            raise DownloadError(
                f"download of {url} stopped after {part.stat().st_size:,} bytes ({exc}); "
                f"run the same command again to resume from {part}"
            ) from exc
        if expected is not None and received < int(expected):
            raise DownloadError(
                f"download of {url} stopped after {part.stat().st_size:,} bytes "
                f"({received:,} of {int(expected):,} in this attempt); run the same command "
                f"again to resume from {part}"
            )


def download(
    remote: RemoteFile,
    folder: Path,
    *,
    base_url: str | None,
    accept_unverified: bool,
    timeout: float,
) -> Path:
    """A verified local copy of ``remote`` in ``folder`` (downloaded or resumed as needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / remote.name
    if final.is_file() and (remote.sha256 is None or file_sha256(final) == remote.sha256):
        if remote.sha256 is None and not accept_unverified:
            _refuse_unverified(remote, final)
        return final
    final.unlink(missing_ok=True)
    part = folder / (remote.name + ".part")
    url = _source_url(remote, base_url)
    _fetch(url, part, timeout=timeout, limit=remote.byte_limit)
    size = part.stat().st_size
    if remote.size is not None and size < remote.size:
        # the server finished its response, so its copy is short: resuming cannot help
        part.unlink()
        raise DownloadError(
            f"{url} is truncated: the server sent {size:,} of the {remote.size:,} published "
            "bytes; the file was deleted. Retry later or from another mirror with --base-url"
        )
    digest = file_sha256(part)
    if remote.sha256 is not None and digest != remote.sha256:
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: expected sha256 {remote.sha256}, got {digest} "
            f"({size:,} bytes); the file was deleted. The server sent different bytes than "
            "the published ones: retry later or from another mirror with --base-url"
        )
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise DownloadError(
            f"{url} has {size:,} bytes, expected {remote.size:,}; the file was deleted"
        )
    part.replace(final)
    if remote.sha256 is None and not accept_unverified:
        _refuse_unverified(remote, final)
    return final


def _refuse_unverified(remote: RemoteFile, path: Path) -> None:
    raise DownloadError(
        f"{remote.name} has no published sha256 in fenlei's registry, so it cannot be verified; "
        f"its sha256 is {file_sha256(path)} ({path.stat().st_size:,} bytes, kept in {path}). "
        "Compare it with a source you trust, then rerun with --accept-unverified"
    )
