"""Known public text-classification datasets: download, verify, convert (``fenlei datasets``).

Owns the registry (:data:`REGISTRY`: name, source URLs, sha256, sizes, licence, parser), the
cache folder (``$FENLEI_CACHE/datasets`` or ``~/.cache/fenlei/datasets``) and conversion of the
upstream archive into fenlei's standard table: one ``<split>.csv`` per split with the header
``text,label``. The files come through :mod:`fenlei.download` (resumable, capped at the published
size, sha256-verified; :class:`RemoteFile` and :class:`DownloadError` are importable from here
too). Enter through :func:`get` and :func:`list_datasets`.

Layout of the cache::

    <cache>/downloads/<file>          verified upstream files (``<file>.part`` while downloading)
    <cache>/<name>/<split>.csv        converted tables, written to a staging folder and renamed
    <cache>/<name>/source.json        where they came from (URLs, sha256, row counts)
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fenlei.download import DownloadError, RemoteFile, download, file_sha256
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

Rows = Iterator[tuple[str, str]]
Parser = Callable[[dict[str, Path]], dict[str, Rows]]


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
                    "sha256": file_sha256(paths[f.name]),
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
        f.name: download(
            f,
            root / "downloads",
            base_url=base_url,
            accept_unverified=accept_unverified,
            timeout=timeout,
        )
        for f in spec.files
    }
    return _write_tables(spec, paths, target)
