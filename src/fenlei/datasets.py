"""Known public text-classification datasets: download, verify, convert (``fenlei datasets``).

Owns the registry (:data:`REGISTRY`: name, source URLs, sha256, sizes, licence, parser), the
cache folder (``$FENLEI_CACHE/datasets`` or ``~/.cache/fenlei/datasets``), resumable downloads
(urllib with HTTP ``Range`` into a ``.part`` file), sha256 verification, and conversion of the
upstream archive into fenlei's standard table: one ``<split>.csv`` per split with the header
``text,label``. Enter through :func:`get` and :func:`list_datasets`.

Layout of the cache::

    <cache>/downloads/<file>          verified upstream files (``<file>.part`` while downloading)
    <cache>/<name>/<split>.csv        converted tables, written to a staging folder and renamed
    <cache>/<name>/source.json        where they came from (URLs, sha256, row counts)
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fenlei.errors import DataError

__all__ = [
    "REGISTRY",
    "DownloadError",
    "KnownDataset",
    "LocalDataset",
    "RemoteFile",
    "cache_dir",
    "get",
    "list_datasets",
]

logger = logging.getLogger(__name__)

CHUNK = 1 << 16
Rows = Iterator[tuple[str, str]]
Parser = Callable[[dict[str, Path]], dict[str, Rows]]


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


@dataclass(frozen=True)
class KnownDataset:
    """A public dataset fenlei can fetch and convert."""

    name: str
    title: str
    language: str
    n_classes: int
    splits: tuple[str, ...]
    licence: str
    homepage: str
    files: tuple[RemoteFile, ...]
    parser: Parser = field(repr=False)
    note: str = ""

    @property
    def verified(self) -> bool:
        """Whether every file has a published sha256 in the registry."""
        return all(f.sha256 for f in self.files)


@dataclass(frozen=True)
class LocalDataset:
    """A converted dataset in the cache: one ``text,label`` CSV per split."""

    name: str
    folder: Path
    tables: dict[str, Path]
    rows: dict[str, int]


# ---------------------------------------------------------------------------------------------
# parsers: upstream files -> (text, label) rows per split


def _open_text(data: bytes) -> io.StringIO:
    return io.StringIO(data.decode("utf-8"), newline="")


def _tsv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(_open_text(data), delimiter="\t", quoting=csv.QUOTE_NONE))


def _parse_imdb(paths: dict[str, Path]) -> dict[str, Rows]:
    grouped: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    with tarfile.open(paths["aclImdb_v1.tar.gz"], "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            # aclImdb/<split>/<pos|neg>/<id>_<rating>.txt (unsup/ has no labels)
            if len(parts) != 4 or parts[1] not in grouped or parts[2] not in ("pos", "neg"):
                continue
            if not member.isfile() or not parts[3].endswith(".txt"):
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            label = "positive" if parts[2] == "pos" else "negative"
            grouped[parts[1]].append((fh.read().decode("utf-8"), label))
    return {k: iter(v) for k, v in grouped.items()}


def _parse_sst2(paths: dict[str, Path]) -> dict[str, Rows]:
    names = {"0": "negative", "1": "positive"}
    out: dict[str, Rows] = {}
    with zipfile.ZipFile(paths["SST-2.zip"]) as zf:
        for split in ("train", "dev"):
            rows = _tsv_rows(zf.read(f"SST-2/{split}.tsv"))
            out[split] = iter([(r[0], names[r[1]]) for r in rows[1:] if r])
    return out


AG_NEWS_CLASSES = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}


def _parse_ag_news(paths: dict[str, Path]) -> dict[str, Rows]:
    out: dict[str, Rows] = {}
    for split in ("train", "test"):
        reader = csv.reader(_open_text(paths[f"ag_news_{split}.csv"].read_bytes()))
        # the upstream CSV writes line breaks inside a description as a literal backslash
        out[split] = iter(
            [
                (
                    f"{title} {desc}".replace("\\n", " ").replace("\\", " ").strip(),
                    AG_NEWS_CLASSES[cls],
                )
                for cls, title, desc in reader
            ]
        )
    return out


def _parse_banking77(paths: dict[str, Path]) -> dict[str, Rows]:
    out: dict[str, Rows] = {}
    for split in ("train", "test"):
        reader = csv.DictReader(_open_text(paths[f"banking77_{split}.csv"].read_bytes()))
        out[split] = iter([(row["text"], row["category"]) for row in reader])
    return out


def _parse_chnsenticorp(paths: dict[str, Path]) -> dict[str, Rows]:
    names = {"0": "negative", "1": "positive"}
    out: dict[str, Rows] = {}
    with zipfile.ZipFile(paths["ChnSentiCorp.zip"]) as zf:
        train = _tsv_rows(zf.read("ChnSentiCorp/train.tsv"))  # label, text_a
        dev = _tsv_rows(zf.read("ChnSentiCorp/dev.tsv"))  # qid, label, text_a
    out["train"] = iter([(r[1], names[r[0]]) for r in train[1:] if r])
    out["dev"] = iter([(r[2], names[r[1]]) for r in dev[1:] if r])
    return out


def _parse_sms_spam(paths: dict[str, Path]) -> dict[str, Rows]:
    with zipfile.ZipFile(paths["sms_spam_collection.zip"]) as zf:
        rows = _tsv_rows(zf.read("SMSSpamCollection"))
    return {"all": iter([(r[1], r[0]) for r in rows if len(r) == 2])}


def _parse_waimai(paths: dict[str, Path]) -> dict[str, Rows]:
    names = {"0": "negative", "1": "positive"}
    reader = csv.DictReader(_open_text(paths["waimai_10k.csv"].read_bytes()))
    return {"all": iter([(row["review"], names[row["label"]]) for row in reader])}


_AG = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/555590db4219b1243abb1918effd6a7425a2d75f/data/ag_news_csv"
_BANK = "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/57ec275d8078af65b7731c2a98be812d844a6d6b/banking_data"

REGISTRY: dict[str, KnownDataset] = {
    d.name: d
    for d in [
        KnownDataset(
            "imdb",
            "IMDB movie reviews (aclImdb v1, Maas et al. 2011)",
            "en",
            2,
            ("train", "test"),
            "research use; cite Maas et al. 2011",
            "https://ai.stanford.edu/~amaas/data/sentiment/",
            (
                RemoteFile(
                    "aclImdb_v1.tar.gz",
                    "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                    "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
                    84125825,
                ),
            ),
            _parse_imdb,
            "25,000 + 25,000 reviews; the 50,000 unlabelled ones are skipped",
        ),
        KnownDataset(
            "sst2",
            "SST-2 (GLUE): sentence sentiment",
            "en",
            2,
            ("train", "dev"),
            "research use; cite GLUE and Socher et al. 2013",
            "https://gluebenchmark.com/tasks",
            (
                RemoteFile(
                    "SST-2.zip",
                    "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
                    "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa",
                    7439277,
                ),
            ),
            _parse_sst2,
            "GLUE's test labels are hidden: use dev as the test set",
        ),
        KnownDataset(
            "ag_news",
            "AG News: news topic (4 classes, Zhang et al. 2015)",
            "en",
            4,
            ("train", "test"),
            "non-commercial research use (AG's corpus)",
            "http://groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html",
            (
                RemoteFile(
                    "ag_news_train.csv",
                    f"{_AG}/train.csv",
                    "76a0a2d2f92b286371fe4d4044640910a04a803fdd2538e0f3f29a5c6f6b672e",
                    29470338,
                ),
                RemoteFile(
                    "ag_news_test.csv",
                    f"{_AG}/test.csv",
                    "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
                    1857427,
                ),
            ),
            _parse_ag_news,
            "text = title + description",
        ),
        KnownDataset(
            "banking77",
            "BANKING77: banking intents (77 classes, PolyAI)",
            "en",
            77,
            ("train", "test"),
            "CC-BY-4.0",
            "https://github.com/PolyAI-LDN/task-specific-datasets",
            (
                RemoteFile(
                    "banking77_train.csv",
                    f"{_BANK}/train.csv",
                    "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b",
                    839073,
                ),
                RemoteFile(
                    "banking77_test.csv",
                    f"{_BANK}/test.csv",
                    "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d",
                    239961,
                ),
            ),
            _parse_banking77,
        ),
        KnownDataset(
            "chnsenticorp",
            "ChnSentiCorp: Chinese review sentiment (LUGE 9,600/1,200 release)",
            "zh",
            2,
            ("train", "dev"),
            "non-commercial research or teaching only (Baidu LUGE agreement)",
            "https://www.luge.ai/",
            (
                RemoteFile(
                    "ChnSentiCorp.zip",
                    "https://raw.githubusercontent.com/zejunwang1/bertorch/"
                    "cd2075223142ad3d21dc4221e8a12ed8c730b052/data/ChnSentiCorp/ChnSentiCorp.zip",
                    None,
                    1954058,  # the blob's size in that commit's git tree
                ),
            ),
            _parse_chnsenticorp,
            "no published sha256 for the archive (members: train.tsv md5 "
            "689360c4a4a9ce8d8719ed500ae80907); the test split has no labels",
        ),
        KnownDataset(
            "sms_spam",
            "SMS Spam Collection v.1 (UCI)",
            "en",
            2,
            ("all",),
            "free with attribution (Almeida & Gómez Hidalgo 2011)",
            "https://archive.ics.uci.edu/dataset/228/sms+spam+collection",
            (
                RemoteFile(
                    "sms_spam_collection.zip",
                    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
                    None,
                    # no size is published: 5,574 short messages (about 480 KB of text) zip
                    # to far less than this bound
                    max_size=2_000_000,
                ),
            ),
            _parse_sms_spam,
            "no published sha256; one file, split it yourself (fenlei train splits it)",
        ),
        KnownDataset(
            "waimai_10k",
            "waimai_10k: Chinese food-delivery review sentiment",
            "zh",
            2,
            ("all",),
            "unclear origin: internal research only",
            "https://github.com/SophonPlus/ChineseNlpCorpus",
            (
                RemoteFile(
                    "waimai_10k.csv",
                    "https://raw.githubusercontent.com/SophonPlus/ChineseNlpCorpus/"
                    "a0b781d72158bde242c0626c9e354d2b328865ff/datasets/waimai_10k/waimai_10k.csv",
                    None,
                    919380,
                ),
            ),
            _parse_waimai,
            "no published sha256 (file md5 d2500508a949d0788fab988794937be5); one file",
        ),
    ]
}


def list_datasets() -> list[KnownDataset]:
    """Every dataset in the registry, by name.

    Example:
        >>> "imdb" in [d.name for d in list_datasets()]
        True
    """
    return [REGISTRY[name] for name in sorted(REGISTRY)]


def cache_dir(override: str | Path | None = None) -> Path:
    """The dataset cache: ``override``, else ``$FENLEI_CACHE/datasets``, else ``~/.cache/...``."""
    if override is not None:
        return Path(override).expanduser()
    root = os.environ.get("FENLEI_CACHE")
    if root:
        return Path(root).expanduser() / "datasets"
    return Path.home() / ".cache" / "fenlei" / "datasets"


# ---------------------------------------------------------------------------------------------
# download


def _sha256(path: Path) -> str:
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


def _download(
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
    if final.is_file() and (remote.sha256 is None or _sha256(final) == remote.sha256):
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
    digest = _sha256(part)
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
        f"its sha256 is {_sha256(path)} ({path.stat().st_size:,} bytes, kept in {path}). "
        "Compare it with a source you trust, then rerun with --accept-unverified"
    )


# ---------------------------------------------------------------------------------------------
# conversion


def _write_tables(spec: KnownDataset, paths: dict[str, Path], target: Path) -> LocalDataset:
    """Convert into a staging folder next to ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=target.parent))
    rows: dict[str, int] = {}
    try:
        try:
            splits = spec.parser(paths)
            for split, items in splits.items():
                count = 0
                with (staging / f"{split}.csv").open("w", encoding="utf-8", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(["text", "label"])
                    for text, label in items:
                        if text.strip():
                            writer.writerow([text, label])
                            count += 1
                rows[split] = count
        except (
            KeyError,
            IndexError,
            ValueError,
            UnicodeDecodeError,
            EOFError,
            OSError,
            tarfile.TarError,
            zipfile.BadZipFile,
            csv.Error,
        ) as exc:
            raise DataError(
                f"cannot convert {spec.name}: the downloaded file is not in the expected "
                f"format ({type(exc).__name__}: {exc}); delete "
                f"{', '.join(str(p) for p in paths.values())} and download it again"
            ) from exc
        source = {
            "name": spec.name,
            "files": [
                {
                    "name": f.name,
                    "url": f.url,
                    "sha256": _sha256(paths[f.name]),
                    "published_sha256": f.sha256,
                }
                for f in spec.files
            ],
            "rows": rows,
            "licence": spec.licence,
        }
        (staging / "source.json").write_text(json.dumps(source, indent=1), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tables = {split: target / f"{split}.csv" for split in rows}
    return LocalDataset(spec.name, target, tables, rows)


def get(
    name: str,
    *,
    cache: str | Path | None = None,
    base_url: str | None = None,
    accept_unverified: bool = False,
    timeout: float = 60.0,
) -> LocalDataset:
    """Download (or resume), verify and convert a known dataset; reuse it when already there.

    Args:
        name: a registry name (see :func:`list_datasets`).
        cache: the cache folder (default :func:`cache_dir`).
        base_url: fetch every file from ``<base_url>/<file name>`` instead (a mirror).
        accept_unverified: allow files with no published sha256 (their hash is logged).
        timeout: seconds to wait for the server.

    Returns:
        The converted tables, one ``text,label`` CSV per split.

    Raises:
        DataError: unknown name, or a file that cannot be converted.
        DownloadError: a failed or cut-short download (rerun to resume), a checksum mismatch
            (the file is deleted), or a file with no published sha256 without
            ``accept_unverified``.

    Example:
        >>> ds = get("sst2")  # doctest: +SKIP
        >>> ds.tables["train"]  # doctest: +SKIP
        PosixPath('/home/me/.cache/fenlei/datasets/sst2/train.csv')
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise DataError(
            f"unknown dataset {name!r}; known datasets are: {', '.join(sorted(REGISTRY))}"
        )
    root = cache_dir(cache)
    target = root / spec.name
    done = target / "source.json"
    if done.is_file():
        source = json.loads(done.read_text(encoding="utf-8"))
        rows = {k: int(v) for k, v in source["rows"].items()}
        return LocalDataset(spec.name, target, {s: target / f"{s}.csv" for s in rows}, rows)
    paths = {
        f.name: _download(
            f,
            root / "downloads",
            base_url=base_url,
            accept_unverified=accept_unverified,
            timeout=timeout,
        )
        for f in spec.files
    }
    return _write_tables(spec, paths, target)
