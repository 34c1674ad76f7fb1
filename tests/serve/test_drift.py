"""Drift: in-distribution traffic raises no alarm, shifted traffic does (PSI > 0.2)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from fenlei.data import Dataset
from fenlei.predict import Predictor
from fenlei.reference import bin_shares, psi, psi_noise
from fenlei.serve.drift import DriftMonitor, load_reference

from .conftest import LiveServer, StartServer


def _send(server: LiveServer, texts: list[str]) -> None:
    with server.client() as c:
        for i in range(0, len(texts), 16):
            r = c.post("/v1/models/intents/predict", json={"texts": texts[i : i + 16]})
            assert r.status_code == 200


def _shifted(n: int) -> list[str]:
    rng = random.Random(0)
    alphabet = "ΩЖЯ☃★ЪЭ🙂ßØ"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(300, 900))) for _ in range(n)]


def test_in_distribution_traffic_raises_no_alarm(
    start_server: StartServer, serve_run: Path, bundled: dict[str, Dataset]
) -> None:
    server = start_server({"intents": serve_run}, drift_min_samples=100)
    texts = bundled["dev"].texts + bundled["test"].texts  # unseen, same distribution
    _send(server, texts)
    with server.client() as c:
        report = c.get("/v1/models/intents/drift").json()
        metrics = c.get("/metrics").text
    assert report["window"] == len(texts)
    assert report["thresholds"] == {"warn": 0.1, "drift": 0.2}
    assert report["drifted"] is False, report
    for stat in report["statistics"].values():
        assert stat["psi"] is not None and stat["psi"] < 0.2
        assert stat["noise"] is not None and stat["noise"] > 0
    assert 'fenlei_drift_psi{model="intents",statistic="length"}' in metrics


def test_shifted_traffic_raises_the_alarm(start_server: StartServer, serve_run: Path) -> None:
    server = start_server({"intents": serve_run}, drift_min_samples=100, max_chars=1000)
    _send(server, _shifted(150))
    with server.client() as c:
        report = c.get("/v1/models/intents/drift").json()
        metrics = c.get("/metrics").text
    assert report["drifted"] is True
    assert report["statistics"]["length"]["status"] == "drifted"
    assert report["statistics"]["length"]["psi"] > 0.2
    line = next(
        ln
        for ln in metrics.splitlines()
        if ln.startswith('fenlei_drift_psi{model="intents",statistic="length"}')
    )
    assert float(line.split()[-1]) > 0.2


def test_too_few_texts_is_insufficient_data(live: LiveServer) -> None:
    with live.client() as c:
        report = c.get("/v1/models/intents/drift").json()
    assert report["drifted"] is False
    assert {s["status"] for s in report["statistics"].values()} <= {
        "insufficient_data",
        "stable",
        "warn",
    }


def test_monitor_window_is_bounded(predictor: Predictor, serve_run: Path) -> None:
    reference = load_reference(serve_run)
    assert reference is not None
    monitor = DriftMonitor(
        reference,
        text_stats=predictor.text_stats,
        window=50,
        min_samples=10,
    )
    texts = ["where is my parcel"] * 80
    monitor.observe(texts, predictor.predict_proba(texts))
    assert monitor.size == 50
    values = monitor.psi_values()
    assert set(values) == {"length", "unknown_rate", "label", "confidence"}
    assert all(v is not None and np.isfinite(v) for v in values.values())
    monitor.reset()
    assert monitor.size == 0


def test_run_without_reference_has_no_drift_endpoint(
    start_server: StartServer, serve_run: Path, tmp_path: Path
) -> None:
    from fenlei.artifact import write_manifest

    from .conftest import copy_run

    run = copy_run(serve_run, tmp_path / "old")
    (run / "reference.json").unlink()
    write_manifest(run)
    server = start_server({"old": run})
    with server.client() as c:
        r = c.get("/v1/models/old/drift")
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_reference"


def test_psi_noise_matches_sampling_from_an_unchanged_distribution() -> None:
    rng = np.random.default_rng(0)
    shares = [0.1] * 10
    edges = [float(i) for i in range(11)]
    observed = [
        psi(
            bin_shares(rng.integers(0, 10, 300).tolist(), edges),
            bin_shares(rng.integers(0, 10, 200).tolist(), edges),
        )
        for _ in range(400)
    ]
    expected = psi_noise(shares, 300, 200)
    assert abs(float(np.mean(observed)) - expected) < 0.25 * expected


def test_monitor_reuses_the_statistics_of_a_scored_batch(
    predictor: Predictor, serve_run: Path
) -> None:
    reference = load_reference(serve_run)
    assert reference is not None
    measured: list[int] = []

    def text_stats(texts):  # type: ignore[no-untyped-def]
        measured.append(len(texts))
        return predictor.text_stats(texts)

    texts = ["where is my parcel", "ꙮꙮ ꙮ", "refund please"] * 20
    scored = predictor.score(texts)
    reused = DriftMonitor(reference, text_stats=text_stats, window=100, min_samples=10)
    reused.observe(texts, scored.probs, stats=scored.stats)
    assert measured == []  # not tokenized a second time
    again = DriftMonitor(reference, text_stats=text_stats, window=100, min_samples=10)
    again.observe(texts, scored.probs)
    assert measured == [len(texts)]
    assert reused.psi_values() == again.psi_values()


def _sample(metrics: str, name: str) -> float:
    line = next((ln for ln in metrics.splitlines() if ln.startswith(name)), None)
    return 0.0 if line is None else float(line.split()[-1])


def test_batches_of_unknown_tokens_are_counted_and_logged(
    start_server: StartServer, serve_run: Path, bundled: dict[str, Dataset], caplog
) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"intents": serve_run}, max_chars=1000)
    known = bundled["dev"].texts[:16]
    _send(server, known)
    with server.client() as c:
        before = c.get("/metrics").text
    assert _sample(before, 'fenlei_unknown_token_share_count{model="intents"}') == len(known)
    assert _sample(before, 'fenlei_unknown_token_batches_total{model="intents"}') == 0
    with caplog.at_level("WARNING", logger="fenlei.serve.loading"):
        _send(server, _shifted(32))  # two requests, each a batch of unreadable texts
    with server.client() as c:
        after = c.get("/metrics").text
    assert _sample(after, 'fenlei_unknown_token_batches_total{model="intents"}') >= 2
    assert _sample(after, 'fenlei_unknown_token_share_bucket{le="0.9",model="intents"}') == len(
        known
    )  # every shifted text is over 90% unknown tokens
    warnings = [r.getMessage() for r in caplog.records if "unknown to its vocabulary" in r.message]
    assert len(warnings) == 1  # one line per model and minute, however many batches
    assert warnings[0].startswith("model intents: ") and "max_unknown_rate is 50%" in warnings[0]
