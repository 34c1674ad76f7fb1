"""The run folder: manifest, atomic writes, and refusal of missing, truncated or altered files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fenlei.artifact import load_run, verify_manifest
from fenlei.classifier import TextClassifier
from fenlei.cli import main
from fenlei.errors import ArtifactError

TEXTS = ["where is my parcel", "refund please", "great service", "open on sunday?"] * 5
LABELS = ["delivery_status", "refund", "praise", "opening_hours"] * 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    clf = TextClassifier(
        "linear",
        overrides=["train.epochs=2", "model.buckets=500", "encoder.min_frequency=1"],
        run_dir=folder,
    )
    clf.fit(TEXTS, LABELS, X_dev=TEXTS, y_dev=LABELS)
    return folder


@pytest.fixture
def copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def test_manifest_lists_every_file_with_sha256(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert "model.safetensors" in manifest["files"]
    assert all(len(meta["sha256"]) == 64 for meta in manifest["files"].values())
    assert verify_manifest(run_dir) == manifest


def test_no_pickle_anywhere(run_dir: Path) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks pickled"


def test_tampered_model_is_refused(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = copy / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors does not match its sha256"):
        load_run(copy)
    assert main(["predict", str(copy), "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "model.safetensors" in err and "\n" not in err


def test_truncated_file_is_refused(copy: Path) -> None:
    tok = copy / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"tokenizer\.json has 100 bytes.*truncated"):
        load_run(copy)


def test_missing_file_is_refused(copy: Path) -> None:
    (copy / "labels.json").unlink()
    with pytest.raises(ArtifactError, match=r"labels\.json is listed in the manifest but missing"):
        load_run(copy)


def test_missing_manifest_means_unfinished(copy: Path) -> None:
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json is missing"):
        load_run(copy)


def test_corrupt_manifest(copy: Path) -> None:
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a valid manifest"):
        load_run(copy)


def test_other_format_version(copy: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format 99"):
        load_run(copy)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_save_refuses_non_empty_target(run_dir: Path, tmp_path: Path) -> None:
    clf = TextClassifier.load(run_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ArtifactError, match="not empty"):
        clf.save(tmp_path / "busy")
    assert clf.save(tmp_path / "fresh").joinpath("manifest.json").is_file()
