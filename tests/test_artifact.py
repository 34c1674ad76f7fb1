"""The run folder: manifest, atomic writes, and refusal of missing, truncated or altered files."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch

from fenlei.artifact import load_run, update_manifest, verify_manifest, write_manifest
from fenlei.classifier import TextClassifier
from fenlei.cli import main
from fenlei.errors import ArtifactError
from fenlei.models import ModelSpec
from fenlei.run_schema import SpecFile
from tests.conftest import family_overrides

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


# Run-folder trust: links, and self-consistent files with odd contents. Each edit below
# rewrites the manifest, so the sha256 check passes and the field checks are what is tested.


def _refused(folder: Path, match: str) -> str:
    """load_run refuses ``folder`` with one ArtifactError line matching ``match``."""
    with pytest.raises(ArtifactError) as info:
        load_run(folder)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(match, message), message
    return message


def _rewrite(folder: Path, name: str, doc: Any) -> None:
    (folder / name).write_text(json.dumps(doc), encoding="utf-8")
    write_manifest(folder)


def _edit(folder: Path, name: str, dotted: str, value: Any) -> None:
    """Set ``dotted`` (``model.buckets``) in the JSON file ``name``; ``...`` deletes it."""
    doc = json.loads((folder / name).read_text(encoding="utf-8"))
    *parents, key = dotted.split(".")
    node = doc
    for part in parents:
        node = node[part]
    if value is ...:
        del node[key]
    else:
        node[key] = value
    _rewrite(folder, name, doc)


def _outside_copy(folder: Path, name: str, tmp_path: Path) -> Path:
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / name, target)
    return target


def test_a_linked_file_is_refused(copy: Path, tmp_path: Path) -> None:
    target = _outside_copy(copy, "labels.json", tmp_path)  # same bytes: the sha256 matches
    (copy / "labels.json").unlink()
    (copy / "labels.json").symlink_to(target)
    _refused(copy, r"labels\.json is a symbolic link")


def test_a_linked_folder_is_refused(copy: Path, tmp_path: Path) -> None:
    (copy / "plots").rename(tmp_path / "plots")
    (copy / "plots").symlink_to(tmp_path / "plots", target_is_directory=True)
    _refused(copy, r"plots is a symbolic link")


def test_an_unlisted_file_is_refused(copy: Path) -> None:
    (copy / "model.onnx").write_bytes(b"not a model")  # the ONNX backend would load it
    _refused(copy, r"model\.onnx is not in the manifest")


def test_the_manifest_never_lists_a_link(copy: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (copy / "notes.txt").symlink_to(secret)
    before = (copy / "manifest.json").read_text()
    with pytest.raises(ArtifactError, match=r"notes\.txt is a symbolic link"):
        write_manifest(copy)
    assert (copy / "manifest.json").read_text() == before


def test_export_refuses_a_folder_with_a_link(copy: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from fenlei.onnx import export_onnx

    (copy / "notes.txt").symlink_to(_outside_copy(copy, "metrics.json", tmp_path))
    before = (copy / "manifest.json").read_text()
    with pytest.raises(ArtifactError, match=r"notes\.txt is a symbolic link"):
        export_onnx(copy)
    assert (copy / "manifest.json").read_text() == before
    assert not (copy / "model.onnx").exists()


@pytest.mark.parametrize(
    ("dotted", "value", "match"),
    [
        ("files", ["labels.json"], r"manifest\.json: files: Input should be a valid dictionary"),
        ("files.labels\\.json.bytes", -5, r"files\.labels\.json\.bytes: .*greater than or equal"),
        ("files.labels\\.json.bytes", "120", r"files\.labels\.json\.bytes: .*valid integer"),
        ("files.labels\\.json.sha256", "xyz", r"files\.labels\.json\.sha256: .*pattern"),
        ("format_version", "1", r"format_version: Input should be a valid integer"),
        ("fenlei_version", ..., r"fenlei_version: Field required"),
    ],
)
def test_odd_manifest_fields_are_named(copy: Path, dotted: str, value: Any, match: str) -> None:
    doc = json.loads((copy / "manifest.json").read_text())
    if dotted.startswith("files.labels"):
        doc["files"]["labels.json"][dotted.rsplit(".", 1)[1]] = value
    elif value is ...:
        del doc[dotted]
    else:
        doc[dotted] = value
    (copy / "manifest.json").write_text(json.dumps(doc))
    _refused(copy, match)


@pytest.mark.parametrize("how", ["parent", "absolute"])
def test_manifest_paths_stay_inside_the_folder(copy: Path, tmp_path: Path, how: str) -> None:
    outside = _outside_copy(copy, "metrics.json", tmp_path)
    rel = os.path.relpath(outside, copy) if how == "parent" else str(outside)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["files"][rel] = doc["files"]["metrics.json"]  # the right sha256: only the path is wrong
    (copy / "manifest.json").write_text(json.dumps(doc))
    _refused(copy, r"manifest\.json: files: .* is not the path of a file inside the run folder")


def test_a_file_load_run_reads_must_be_listed(copy: Path) -> None:
    (copy / "metrics.json").unlink()
    write_manifest(copy)
    _refused(copy, r"manifest\.json: metrics\.json is not listed")


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (["a", "b"], r"labels\.json: the file: Input should be a valid dictionary"),
        ({"labels": "abcd", "multi_label": False}, r"labels: Input should be a valid list"),
        ({"labels": ["a", "a", "b", "c"]}, r"labels: label 'a' appears twice"),
        ({"labels": ["", "b", "c", "d"]}, r"labels\.0: String should have at least 1 character"),
        ({"labels": [1, 2, 3, 4]}, r"labels\.0: Input should be a valid string"),
        ({"labels": []}, r"labels: List should have at least 1 item"),
        ({"labels": ["a", "b", "c", "d"], "multi_label": "no"}, r"multi_label: .*valid boolean"),
        ({"labels": ["a", "b", "c", "d", "e"]}, r"model_config\.json: n_outputs is 4, but the 5"),
        ({"labels": ["a", "b", "c", "d"], "multi_label": True}, r"data\.multi_label is False"),
    ],
)
def test_odd_labels_are_refused(copy: Path, doc: Any, match: str) -> None:
    _rewrite(copy, "labels.json", doc)
    message = _refused(copy, match)
    assert "labels.json" in message or "model_config.json" in message
    assert message.endswith("retrain or restore the folder")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("vocab_size", 10**12, r"vocab_size: Input should be less than or equal to 10000000"),
        ("vocab_size", -5, r"vocab_size: Input should be greater than or equal to 1"),
        ("vocab_size", "600", r"vocab_size: Input should be a valid integer"),
        ("vocab_size", 10**6, r"tensor \S+ is I64 \[14, 1\], but .* describe I64 \[1000000, 1\]"),
        ("pad_id", 10**9, r"pad_id 1000000000 is not below vocab_size"),
        ("pad_id", 3, r"pad_id is 3, but tokenizer\.json pads with 0"),
        ("n_outputs", 5, r"n_outputs is 5, but the 4 labels of labels\.json need 4"),
        ("n_outputs", 10**9, r"n_outputs: Input should be less than or equal to 100000"),
        ("ngram_rows", 10**12, r"ngram_rows: Input should be less than or equal to 50000000"),
        ("ngram_rows", 10**6, r"ngram_rows is 1000000, more than config\.json model\.buckets"),
        ("ngram_rows", -1, r"ngram_rows: Input should be greater than or equal to 0"),
        ("surprise", 1, r"surprise: Extra inputs are not permitted"),
        ("transformer_config", {"model_type": "bert"}, r"transformer_config is set, but linear"),
    ],
)
def test_odd_model_config_is_refused(copy: Path, key: str, value: Any, match: str) -> None:
    _edit(copy, "model_config.json", key, value)
    message = _refused(copy, match)
    assert "model_config.json" in message or "model.safetensors" in message


def test_model_config_not_an_object(copy: Path) -> None:
    _rewrite(copy, "model_config.json", [14, 0, 4])
    _refused(copy, r"model_config\.json: the file: Input should be a valid dictionary")


@pytest.mark.parametrize(
    ("dotted", "value", "match"),
    [
        ("train.epochs", "many", r"config\.json: train\.epochs: Input should be a valid integer"),
        ("model.architecture", "nope.v9", r"model\.architecture 'nope\.v9' is no model family"),
        ("model.buckets", 10**11, r"tensor bucket_rows is I64 \[500\], but .* \[100000000000\]"),
        ("model.embedding_dim", 10**9, r"tensor embed\.weight is F32 \[\d+, 64\], but"),
        ("model.num_layers", 10**6, r"model\.num_layers is 1000000, beyond 1,000"),
        ("model", "linear", r"config\.json: model: Input should be a valid dictionary"),
    ],
)
def test_odd_config_is_refused(copy: Path, dotted: str, value: Any, match: str) -> None:
    _edit(copy, "config.json", dotted, value)
    _refused(copy, match)


def test_config_not_an_object(copy: Path) -> None:
    _rewrite(copy, "config.json", ["linear"])
    _refused(copy, r"config\.json: expected a JSON object, found list")


def test_metrics_must_be_an_object(copy: Path) -> None:
    _rewrite(copy, "metrics.json", [0.9, 0.8])
    _refused(copy, r"metrics\.json: expected a JSON object, found list")


def test_a_number_past_the_digit_cap_is_refused(copy: Path) -> None:
    (copy / "metrics.json").write_text('{"accuracy": ' + "9" * 5000 + "}")
    write_manifest(copy)
    _refused(copy, r"metrics\.json is not readable JSON")


def test_deep_nesting_is_refused(copy: Path) -> None:
    (copy / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    write_manifest(copy)
    _refused(copy, r"metrics\.json is not readable JSON")


def test_extra_tensor_in_the_weights_is_refused(copy: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(copy / "model.safetensors"))
    tensors["intruder"] = tensors["head.bias"].clone()
    save_file(tensors, str(copy / "model.safetensors"))
    write_manifest(copy)
    _refused(copy, r"model\.safetensors: tensor intruder is not part of the model")


def test_the_spec_schema_covers_model_spec() -> None:
    saved = {f.name for f in fields(ModelSpec)} - ModelSpec.UNSAVED
    assert set(SpecFile.model_fields) == saved


def test_update_manifest_vouches_for_one_file_only(copy: Path) -> None:
    manifest = verify_manifest(copy)
    (copy / "metrics.json").write_text("{}")  # changed after the check: must stay refused
    (copy / "model.onnx").write_bytes(b"onnx")
    updated = update_manifest(copy, manifest, "model.onnx")
    assert updated["files"]["model.onnx"]["bytes"] == 4
    assert updated["files"]["metrics.json"] == manifest["files"]["metrics.json"]
    _refused(copy, r"metrics\.json has 2 bytes")
    (copy / "model.onnx").unlink()
    assert "model.onnx" not in update_manifest(copy, updated, "model.onnx")["files"]


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory: pytest.TempPathFactory, tiny_transformer_dir: Path) -> Path:
    preset, overrides = family_overrides("transformer.v1", tiny_transformer_dir)
    folder = tmp_path_factory.mktemp("bert") / "run"
    clf = TextClassifier(preset, overrides=[*overrides, "train.epochs=1"], run_dir=folder)
    clf.fit(TEXTS, LABELS, X_dev=TEXTS, y_dev=LABELS)
    return folder


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        # a non-persistent buffer (HF position ids) would be 8 TB: built on meta, then refused
        ("max_position_embeddings", 10**12, r"transformer_config max_position_embeddings is"),
        ("max_position_embeddings", 5_000_000, r"position_embeddings\.weight is F32 \[256, 32\]"),
        ("num_hidden_layers", 100_000, r"num_hidden_layers is 100000, beyond 1,000"),
        ("num_hidden_layers", 3, r"tensor encoder\.encoder\.layer\.2\.\S+ of the model .* missing"),
        ("hidden_size", 10**9, r"hidden_size is 1000000000, beyond 10,000,000"),
        ("model_type", "no-such-model", r"describe no model"),
        ("model_type", ..., r"transformer_config needs its model_type"),
    ],
)
def test_odd_transformer_config_is_refused(
    transformer_run: Path, tmp_path: Path, key: str, value: Any, match: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(transformer_run, copy)
    _edit(copy, "model_config.json", f"transformer_config.{key}", value)
    _refused(copy, match)


def test_a_transformer_rebuilds_from_its_own_config_only(
    transformer_run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(transformer_run, copy)
    _edit(copy, "model_config.json", "transformer_config", None)  # would load model.pretrained
    _refused(copy, r"model_config\.json: transformer_config is missing")


def test_unsaved_buffers_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file
    from torch import nn

    from fenlei import run_schema
    from fenlei.config import ModelConfig

    class Cached(nn.Module):  # e.g. a rotary cache sized by the saved config, never saved
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("cache", torch.empty(10**9), persistent=False)

    monkeypatch.setattr(run_schema, "build_model", lambda cfg, spec: Cached())
    save_file({}, str(tmp_path / "model.safetensors"))
    spec = ModelSpec(vocab_size=10, pad_id=0, n_outputs=2)
    with pytest.raises(ArtifactError, match=r"4,000,000,000 bytes of unsaved buffers"):
        run_schema.check_weights(tmp_path / "model.safetensors", ModelConfig(), spec)
