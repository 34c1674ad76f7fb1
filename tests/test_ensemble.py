"""Ensembles: built from run folders, opened, served, exported and refused like one model.

Two tiny runs (linear and nbsvm) are trained once on the bundled data; every test works on
them or on copies.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import fenlei.combine
from fenlei.artifact import write_manifest
from fenlei.classifier import TextClassifier
from fenlei.cli import main
from fenlei.combine import build_ensemble, tune_weights
from fenlei.data import Dataset, bundled_dataset_path
from fenlei.ensemble import EnsemblePredictor, load_ensemble
from fenlei.errors import ArtifactError, ConfigError
from fenlei.loader import open_predictor
from fenlei.predict import Predictor
from fenlei.serve.app import create_app
from fenlei.serve.schemas import ServeSettings
from tests.conftest import family_overrides

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TEXTS = ["where is my parcel?", "我要退款", "the blender broke, I want my money back", "ok"]


def _train(family: str, folder: Path, data: Dataset, dev: Dataset) -> Path:
    preset, overrides = family_overrides(family)
    TextClassifier(preset, overrides=overrides, run_dir=folder).fit(
        data.texts,
        [lab[0] for lab in data.labels],
        X_dev=dev.texts,
        y_dev=[lab[0] for lab in dev.labels],
    )
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, bundled: dict[str, Dataset]) -> dict[str, Path]:
    """Tiny linear and nbsvm run folders, trained on the bundled train split."""
    root = tmp_path_factory.mktemp("members")
    return {
        "linear": _train("linear.v2", root / "linear", bundled["train"], bundled["dev"]),
        "nbsvm": _train("nbsvm.v1", root / "nbsvm", bundled["train"], bundled["dev"]),
    }


@pytest.fixture(scope="module")
def ens(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An equal-weight ensemble of the two runs, scored on the bundled dev and test files."""
    out = tmp_path_factory.mktemp("ens") / "ens"
    build_ensemble(
        [runs["linear"], runs["nbsvm"]],
        out,
        data=bundled_dataset_path("dev"),
        test=bundled_dataset_path("test"),
    )
    return out


def _cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, ANSI.sub("", captured.out), ANSI.sub("", captured.err)


def _user_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code, _, err = _cli(capsys, args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- probabilities


def test_probabilities_are_the_weighted_mean_of_the_members(
    ens: Path, runs: dict[str, Path]
) -> None:
    predictor = open_predictor(ens)
    assert isinstance(predictor, EnsemblePredictor)
    assert predictor.info().members == {"linear": 0.5, "nbsvm": 0.5}
    a = Predictor.from_run(runs["linear"]).predict_proba(TEXTS)
    b = Predictor.from_run(runs["nbsvm"]).predict_proba(TEXTS)
    np.testing.assert_allclose(predictor.predict_proba(TEXTS), 0.5 * a + 0.5 * b, atol=1e-6)
    weighted = EnsemblePredictor(list(predictor.members), [0.2, 0.8])
    np.testing.assert_allclose(weighted.predict_proba(TEXTS), 0.2 * a + 0.8 * b, atol=1e-6)
    assert [p.label for p in predictor.predict(TEXTS)] == [
        predictor.labels[i] for i in (0.5 * a + 0.5 * b).argmax(axis=1)
    ]


def test_identical_members_equal_the_member(runs: dict[str, Path], tmp_path: Path) -> None:
    twin = _copy(runs["linear"], tmp_path / "twin")
    out = build_ensemble(
        [runs["linear"], twin], tmp_path / "same", data=bundled_dataset_path("dev")
    ).run_dir
    member = Predictor.from_run(runs["linear"])
    ensemble = open_predictor(out)
    np.testing.assert_allclose(
        ensemble.predict_proba(TEXTS), member.predict_proba(TEXTS), atol=1e-7
    )
    assert [p.label for p in ensemble.predict(TEXTS)] == [p.label for p in member.predict(TEXTS)]
    assert ensemble.info().members == {"linear": 0.5, "twin": 0.5}


def test_members_with_labels_in_another_order_are_aligned(ens: Path) -> None:
    predictor = load_ensemble(ens)
    first, second = predictor.members

    class Reordered:  # the second member with its columns reversed
        labels = tuple(reversed(second.labels))
        rule = second.rule

        def predict_proba(self, texts: list[str], *, batch_size: int | None = None) -> np.ndarray:
            return second.predict_proba(texts, batch_size=batch_size)[:, ::-1]

    mixed = EnsemblePredictor([first, Reordered()], [0.5, 0.5])  # type: ignore[list-item]
    np.testing.assert_allclose(
        mixed.predict_proba(TEXTS), predictor.predict_proba(TEXTS), atol=1e-6
    )


def test_explains_the_ensembles_label(ens: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictor = load_ensemble(ens)
    (explained,) = predictor.explain(TEXTS[:1])
    (prediction,) = predictor.predict(TEXTS[:1])
    assert explained.label == prediction.label  # both members are bag models: "exact"
    assert explained.probability == pytest.approx(prediction.score, abs=1e-6)
    code, stdout, err = _cli(capsys, ["explain", str(ens), TEXTS[0]])
    assert code == 0, err
    assert prediction.label in stdout


def test_tune_weights_prefers_the_better_member() -> None:
    truth = np.array([0, 1, 1, 0])
    good = np.eye(2)[truth] * 0.9 + 0.05
    noise = np.full((4, 2), 0.5)
    assert tune_weights([noise, good], truth).tolist() == [0.0, 1.0]
    multi_truth = np.array([[1, 0], [0, 1]])
    multi = tune_weights(
        [np.full((2, 2), 0.5), np.array([[0.9, 0.2], [0.1, 0.8]])], multi_truth, multi_label=True
    )
    assert multi[1] > 0.99


def test_tuned_weights_use_dev_only(
    runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bundled: dict[str, Dataset],
) -> None:
    seen: list[int] = []
    real = fenlei.combine.tune_weights

    def spy(probs, truth, *, multi_label=False):  # type: ignore[no-untyped-def]
        seen.append(len(truth))
        return real(probs, truth, multi_label=multi_label)

    monkeypatch.setattr(fenlei.combine, "tune_weights", spy)
    result = build_ensemble(
        [runs["linear"], runs["nbsvm"]],
        tmp_path / "tuned",
        weights="tuned",
        data=bundled["dev"],
        test=bundled["test"],
    )
    assert seen == [len(bundled["dev"])]
    spec = json.loads((result.run_dir / "ensemble.json").read_text())
    assert spec["weighting"] == "tuned" and spec["tuning"]["n"] == len(bundled["dev"])
    assert spec["tuning"]["log_loss"] <= spec["tuning"]["equal_log_loss"]
    assert sum(m["weight"] for m in spec["members"]) == pytest.approx(1.0)
    # another test set changes nothing
    again = build_ensemble(
        [runs["linear"], runs["nbsvm"]],
        tmp_path / "tuned2",
        weights="tuned",
        data=bundled["dev"],
        test=bundled["train"],
    )
    assert [m.weight for m in again.members] == [m.weight for m in result.members]


# ---------------------------------------------------------------- the folder and its users


def test_folder_holds_members_metrics_and_reference(ens: Path) -> None:
    manifest = json.loads((ens / "manifest.json").read_text())
    assert manifest["kind"] == "ensemble"
    assert set(manifest["files"]) == {
        "ensemble.json",
        "labels.json",
        "metrics.json",
        "reference.json",
        "members/linear/manifest.json",
        "members/nbsvm/manifest.json",
    }
    metrics = json.loads((ens / "metrics.json").read_text())
    assert set(metrics["members"]) == {"linear", "nbsvm"}
    assert metrics["dev"]["n"] == 215 and metrics["test"]["n"] == 215
    info = open_predictor(ens).info()
    assert info.kind == "ensemble" and info.preset == "ensemble"
    assert info.architecture == "linear.v2+nbsvm.v1"
    assert info.metrics["dev_accuracy"] == metrics["dev"]["accuracy"]


def test_cli_build_predict_evaluate(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli-ens"
    dev, test = str(bundled_dataset_path("dev")), str(bundled_dataset_path("test"))
    code, stdout, err = _cli(
        capsys,
        [
            "ensemble",
            str(runs["linear"]),
            str(runs["nbsvm"]),
            "--out",
            str(out),
            "--data",
            dev,
            "--test",
            test,
        ],
    )
    assert code == 0, err
    assert "linear" in stdout and "nbsvm" in stdout and "ensemble" in stdout
    assert "test macro-F1" in stdout
    code, stdout, err = _cli(capsys, ["predict", str(out), "--json", *TEXTS])
    assert code == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["label"] for r in rows] == [p.label for p in open_predictor(out).predict(TEXTS)]
    report = tmp_path / "eval.json"
    code, _, err = _cli(capsys, ["evaluate", str(out), dev, "--json", str(report)])
    assert code == 0, err
    saved = json.loads((out / "metrics.json").read_text())["dev"]["accuracy"]
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(saved)


def test_text_classifier_loads_an_ensemble(ens: Path) -> None:
    clf = TextClassifier.load(ens)
    predictor = open_predictor(ens)
    assert clf.predict(TEXTS) == [p.label for p in predictor.predict(TEXTS)]
    np.testing.assert_allclose(clf.predict_proba(TEXTS), predictor.predict_proba(TEXTS))
    assert (
        clf.metrics_.dev.accuracy
        == json.loads((ens / "metrics.json").read_text())["dev"]["accuracy"]
    )
    assert list(clf.classes_) == list(predictor.labels)


@pytest.fixture(scope="module")
def client(ens: Path) -> Iterator[TestClient]:
    app = create_app({"support": ens}, ServeSettings(drift_min_samples=10))
    with TestClient(app) as c:
        yield c


def test_served_under_one_name(client: TestClient, ens: Path) -> None:
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["support"]
    assert models[0]["kind"] == "ensemble"
    assert models[0]["members"] == {"linear": 0.5, "nbsvm": 0.5}
    r = client.post("/v1/models/support/predict", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels == [p.label for p in open_predictor(ens).predict(TEXTS)]


def test_drift_is_reported(client: TestClient) -> None:
    for _ in range(3):
        client.post("/v1/models/support/predict", json={"texts": TEXTS * 5})
    report = client.get("/v1/models/support/drift")
    assert report.status_code == 200, report.text
    body = report.json()
    assert set(body["statistics"]) == {"length", "unknown_rate", "label", "confidence"}


def test_export_exports_every_member(
    ens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    copy = _copy(ens, tmp_path / "exported")
    code, _, err = _cli(capsys, ["export", str(copy)])
    assert code == 0, err
    assert (copy / "members/linear/model.onnx").is_file()
    assert (copy / "members/nbsvm/model.onnx").is_file()
    onnx = open_predictor(copy, backend="onnx")
    assert onnx.info().backend == "onnx"
    torch_probs = open_predictor(copy, backend="torch").predict_proba(TEXTS)
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), torch_probs, atol=1e-4)


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "rel",
    [
        "members/nbsvm/model.safetensors",
        "members/linear/tokenizer.json",
        "members/linear/manifest.json",
        "ensemble.json",
    ],
)
def test_a_changed_file_anywhere_is_refused(ens: Path, tmp_path: Path, rel: str) -> None:
    copy = _copy(ens, tmp_path / "tampered")
    path = copy / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=re.escape(str(path))):
        open_predictor(copy)


def test_a_member_with_a_rewritten_manifest_is_refused(ens: Path, tmp_path: Path) -> None:
    copy = _copy(ens, tmp_path / "rewritten")
    labels = copy / "members/linear/metrics.json"
    labels.write_text("{}", encoding="utf-8")
    write_manifest(copy / "members/linear")  # the member now verifies on its own ...
    with pytest.raises(ArtifactError, match=re.escape("members/linear/manifest.json")):
        open_predictor(copy)  # ... but the ensemble's manifest pins the old one


def test_an_added_file_is_refused(ens: Path, tmp_path: Path) -> None:
    copy = _copy(ens, tmp_path / "added")
    (copy / "members/nbsvm/extra.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ArtifactError, match=re.escape("extra.txt")):
        open_predictor(copy)
    (copy / "members/nbsvm/extra.txt").unlink()
    (copy / "members/extra.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ArtifactError, match=re.escape("extra.txt")):
        open_predictor(copy)


def test_onnx_backend_before_export_names_the_ensemble_export(ens: Path) -> None:
    with pytest.raises(ArtifactError, match=re.escape(f"fenlei export {ens}`")):
        open_predictor(ens, backend="onnx")


def test_load_run_names_the_way_to_open_an_ensemble(ens: Path) -> None:
    with pytest.raises(ArtifactError, match="open_predictor"):
        Predictor.from_run(ens)


# ---------------------------------------------------------------- bad input


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_bad_requests_are_one_error_line_and_leave_nothing(
    runs: dict[str, Path],
    ens: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bundled: dict[str, Dataset],
) -> None:
    dev = str(bundled_dataset_path("dev"))
    linear, nbsvm = str(runs["linear"]), str(runs["nbsvm"])
    out = tmp_path / "out" / "new"
    out.parent.mkdir()

    def refused(*args: str) -> str:
        line = _user_error(capsys, ["ensemble", *args, "--out", str(out), "--data", dev])
        assert not out.exists() and _leftovers(out.parent) == []
        return line

    assert "at least two run folders, got 1" in refused(linear)
    assert "itself an ensemble" in refused(linear, str(ens))
    missing = _copy(runs["nbsvm"], tmp_path / "missing")
    (missing / "tokenizer.json").unlink()
    assert str(missing / "tokenizer.json") in refused(linear, str(missing))
    altered = _copy(runs["nbsvm"], tmp_path / "altered")
    (altered / "labels.json").write_text('{"labels": ["a", "b"]}', encoding="utf-8")
    assert str(altered / "labels.json") in refused(linear, str(altered))
    line = _user_error(capsys, ["ensemble", linear, nbsvm, "--out", str(out)])
    assert "--data" in line and not out.exists()
    out.mkdir()
    line = _user_error(capsys, ["ensemble", linear, nbsvm, "--out", str(out), "--data", dev])
    assert "already exists" in line and not any(out.iterdir())
    inside = runs["linear"] / "ens"
    line = _user_error(capsys, ["ensemble", linear, nbsvm, "--out", str(inside), "--data", dev])
    assert "inside the member" in line and not inside.exists()


def test_label_mismatch_names_both_runs(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bundled: dict[str, Dataset],
) -> None:
    keep = {"refund", "praise", "billing"}
    subset = Dataset(
        tuple(ex for ex in bundled["train"].examples if ex.labels[0] in keep), "subset"
    )
    dev = Dataset(tuple(ex for ex in bundled["dev"].examples if ex.labels[0] in keep), "subset dev")
    other = _train("nbsvm.v1", tmp_path / "three-labels", subset, dev)
    out = tmp_path / "mixed"
    line = _user_error(
        capsys,
        [
            "ensemble",
            str(runs["linear"]),
            str(other),
            "--out",
            str(out),
            "--data",
            str(bundled_dataset_path("dev")),
        ],
    )
    assert str(runs["linear"]) in line and str(other) in line and "labels" in line
    assert not out.exists() and _leftovers(tmp_path) == []
    with pytest.raises(ConfigError, match="share one label set"):
        build_ensemble([runs["linear"], other], out, data=bundled["dev"])


# ---------------------------------------------------------------- report


def test_report_of_an_ensemble_scores_the_table_and_lists_its_members(
    ens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fenlei.data import load_table

    folder = _copy(ens, tmp_path / "ens")
    message = _user_error(capsys, ["report", str(folder), "--out", str(tmp_path / "r.html")])
    assert "is an ensemble" in message and "--data TABLE" in message
    assert not (tmp_path / "r.html").exists()
    test = bundled_dataset_path("test")
    args = ["report", str(folder), "--data", str(test), "--out", str(folder / "report.html")]
    code, _, err = _cli(capsys, args)
    assert code == 0, err
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "ensemble of 2 members" in html
    assert "<code>linear</code>" in html and "<code>nbsvm</code>" in html  # members, weights
    scored = open_predictor(folder)  # the report is in the manifest: the folder still verifies
    table = load_table(test)
    predicted = [p.label for p in scored.predict(table.texts)]
    accuracy = np.mean([p == ex.labels[0] for p, ex in zip(predicted, table.examples, strict=True)])
    assert f"accuracy {accuracy:.4f}" in html  # the ensemble's own score on the table
