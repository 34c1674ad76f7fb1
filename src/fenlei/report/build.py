"""Gather what a report shows (:class:`ReportInputs`) and render it as one HTML file.

Two ways in: :func:`inputs_from_run` reads a finished run folder (its kept dev/test
probabilities and split rows, the tables they came from, or a table given with ``--data``),
and the pipeline's ``write_report`` step fills the same record from what training holds in
memory. :func:`render_html` turns it into the page with Jinja2 (autoescaped) and
:func:`write_html` writes it atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fenlei._version import __version__
from fenlei.artifact import MANIFEST, atomic_write_text
from fenlei.config import RunConfig
from fenlei.data import Dataset, load_table
from fenlei.ensemble import KIND as ENSEMBLE_KIND
from fenlei.ensemble import EnsemblePredictor, load_ensemble, read_json
from fenlei.errors import ArtifactError, ConfigError, DataError
from fenlei.evaluate import label_targets, score_probabilities
from fenlei.plotting import data_uri
from fenlei.predict import Predictor
from fenlei.records import EpochRecord, read_history
from fenlei.report import figures
from fenlei.report.card import DataCard, data_card, language_of, model_card, source_table
from fenlei.report.sections import (
    calibration_points,
    latency,
    mistakes,
    read_label_issues,
    top_confusions,
)

__all__ = [
    "REPORT_FILE",
    "TRAINING_LIMITS",
    "ReportInputs",
    "ReportLimits",
    "file_hashes",
    "inputs_from_run",
    "render_html",
    "training_inputs",
    "write_html",
]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"


@dataclass(frozen=True)
class ReportLimits:
    """How much work a report may do beyond reading what is there.

    Attributes:
        mistakes: confident mistakes shown.
        explain_seconds: time for their token highlights (the rest are shown plain).
        latency_seconds: time for measuring prediction latency.
    """

    mistakes: int = 10
    explain_seconds: float = 20.0
    latency_seconds: float = 1.5


# At the end of every training: few explanations and a short latency probe, so the report
# costs little next to training (tests train hundreds of tiny runs).
TRAINING_LIMITS = ReportLimits(mistakes=5, explain_seconds=3.0, latency_seconds=0.3)


@dataclass
class ReportInputs:
    """Everything a report reads.

    Attributes:
        cfg: the run's configuration.
        predictor: the model (its labels, rule, explanations, latency).
        history: one record per epoch (or solve).
        data: split name -> its labelled rows (``train``, ``dev``, ``test``, or a table given
            with ``--data``); any may be missing.
        probs: split name -> (N, C) probabilities of that split's rows (dev/test or the table).
        files: file name -> ``{"sha256", "bytes"}`` (the manifest, or what is written so far).
        files_note: what the file list is.
        model_bytes: size of the weights.
        calibration: ``metrics.json``'s calibration entry (temperature, ECE before/after).
        issues: a ``fenlei audit`` file to show.
        parameters: the model's parameter count (an ensemble's: all its members').
        members: an ensemble's member names and weights (empty for one model); ``cfg`` is
            then its first member's configuration.
        manifest: the verified manifest of the folder read (None while training writes it).
    """

    cfg: RunConfig
    predictor: Predictor | EnsemblePredictor
    history: list[EpochRecord]
    data: dict[str, Dataset]
    probs: dict[str, np.ndarray]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    files_note: str = ""
    model_bytes: int = 0
    calibration: dict[str, Any] | None = None
    issues: Path | None = None
    parameters: int = 0
    members: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    @property
    def shown(self) -> str | None:
        """The split the scores are of: a ``--data`` table, else test, else dev."""
        named = [k for k in self.probs if k not in ("dev", "test")]
        for name in (*named, "test", "dev"):
            if name in self.probs and name in self.data:
                return name
        return None


def file_hashes(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """sha256 and size of the files in ``root`` (hidden ones, the checkpoint and ``skip`` aside)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        hidden = any(part.startswith(".") for part in rel.split("/"))
        if not path.is_file() or rel in skip or hidden or rel.startswith("checkpoint/"):
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[rel] = {"sha256": digest, "bytes": path.stat().st_size}
    return out


def _kept_splits(run_dir: Path, cfg: RunConfig) -> dict[str, Dataset]:
    """The train/dev/test rows of ``splits.json``, read again from their tables (splits
    whose table is gone or changed are left out, with a warning)."""
    path = run_dir / "splits.json"
    if not path.is_file():
        return {}
    try:
        kept = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is unreadable ({exc})") from exc
    tables: dict[str, Dataset | None] = {}
    out = {}
    for name, entry in kept.items():
        table = source_table(str(entry.get("source", "")))
        if table not in tables:
            try:
                tables[table] = load_table(table, cfg.data)
            except DataError as exc:
                logger.warning("the report leaves out %s: %s", name, exc)
                tables[table] = None
        data = tables[table]
        if data is None:
            continue
        by_row = {ex.source_row: i for i, ex in enumerate(data.examples)}
        rows = [by_row.get(int(r)) for r in entry.get("rows", [])]
        if any(r is None for r in rows):
            logger.warning("the report leaves out %s: %s changed since training", name, table)
            continue
        out[name] = data.subset([r for r in rows if r is not None], source=str(entry["source"]))
    return out


def _kept_probs(run_dir: Path, data: Mapping[str, Dataset]) -> dict[str, np.ndarray]:
    """The dev/test probabilities of ``predictions.safetensors`` whose rows are known."""
    from safetensors.numpy import load_file

    path = run_dir / "predictions.safetensors"
    if not path.is_file():
        return {}
    kept = load_file(str(path))
    return {k: v for k, v in kept.items() if k in data and len(v) == len(data[k])}


def inputs_from_run(
    run_dir: str | Path, *, data: str | Path | None = None, issues: str | Path | None = None
) -> ReportInputs:
    """Read a finished one-model run folder (verified) for a report.

    Args:
        run_dir: the run folder.
        data: a labelled table to score and show (else the run's kept dev/test predictions
            and the tables they came from).
        issues: a ``fenlei audit`` output to show.

    An ensemble keeps no dev or test predictions of its own, so it needs ``data``; its
    report shows its members and weights, and its first member's configuration.

    Raises:
        ArtifactError: the folder is missing or altered.
        ConfigError: an ensemble without ``data``.
        DataError: ``data`` is unreadable or has labels the model does not know.
    """
    root = Path(run_dir)
    if (root / "ensemble.json").is_file():
        return _ensemble_inputs(root, data=data, issues=issues)
    predictor = Predictor.from_run(root, backend="torch")
    loaded = predictor.run
    assert loaded is not None
    splits = _kept_splits(root, loaded.config)
    probs = _kept_probs(root, splits)
    if data is not None:
        table = load_table(data, loaded.config.data)
        name = Path(data).name
        splits[name] = table
        label_targets(table, predictor.labels, predictor.rule.multi_label)  # unknown labels, early
        probs[name] = predictor.predict_proba(table.texts)
    jsonl = root / "metrics.jsonl"
    history = read_history(jsonl) if jsonl.is_file() else []
    return ReportInputs(
        cfg=loaded.config,
        predictor=predictor,
        history=history,
        data=splits,
        probs=probs,
        files=dict(loaded.manifest.get("files", {})),
        files_note=f"as {MANIFEST} lists them (verified when the report was made)",
        model_bytes=(root / "model.safetensors").stat().st_size,
        calibration=loaded.metrics.get("calibration"),
        issues=Path(issues) if issues is not None else None,
        parameters=_parameters(predictor),
        manifest=dict(loaded.manifest),
    )


def _parameters(predictor: Predictor) -> int:
    return sum(p.numel() for p in predictor.model.parameters())  # type: ignore[union-attr]


def _ensemble_inputs(
    root: Path, *, data: str | Path | None, issues: str | Path | None
) -> ReportInputs:
    """A verified ensemble folder's report inputs: ``data`` scored by the ensemble."""
    if data is None:
        raise ConfigError(
            f"{root} is an ensemble, which keeps no dev or test predictions of its own; "
            f"pass a labelled table to score: fenlei report {root} --data TABLE"
        )
    ensemble = load_ensemble(root, backend="torch")
    members = [m for m in ensemble.members if isinstance(m, Predictor)]  # each from its folder
    assert len(members) == len(ensemble.members)
    first = members[0].run
    assert first is not None
    table = load_table(data, first.config.data)
    label_targets(table, ensemble.labels, ensemble.rule.multi_label)  # unknown labels, early
    name = Path(data).name
    manifest = read_json(root / MANIFEST)  # verified by load_ensemble just now
    assert isinstance(manifest, dict) and manifest.get("kind") == ENSEMBLE_KIND
    return ReportInputs(
        cfg=first.config,
        predictor=ensemble,
        history=[],
        data={name: table},
        probs={name: ensemble.predict_proba(table.texts)},
        files=dict(manifest.get("files", {})),
        files_note=f"as {MANIFEST} lists them (verified when the report was made)",
        model_bytes=sum(
            (m.run.run_dir / "model.safetensors").stat().st_size for m in members if m.run
        ),
        issues=Path(issues) if issues is not None else None,
        parameters=sum(_parameters(m) for m in members),
        members=dict(zip(ensemble.names, map(float, ensemble.weights), strict=True)),
        manifest=manifest,
    )


def training_inputs(
    cfg: RunConfig,
    predictor: Predictor,
    history: list[EpochRecord],
    data: Mapping[str, Dataset | None],
    probs: Mapping[str, np.ndarray | None],
    run_dir: Path,
    calibration: dict[str, Any] | None,
) -> ReportInputs:
    """A report's inputs from what training holds in memory (the pipeline's step), before
    the model's own files and the manifest are written."""
    weights = sum(t.numel() * t.element_size() for t in predictor.model.state_dict().values())  # type: ignore[union-attr]
    return ReportInputs(
        cfg=cfg,
        predictor=predictor,
        history=history,
        data={k: v for k, v in data.items() if v is not None},
        probs={k: v for k, v in probs.items() if v is not None},
        files=file_hashes(run_dir, skip=(REPORT_FILE,)),
        files_note=f"written before this report; the model's files come next, and {MANIFEST} "
        "lists every file of the run with its sha256, this report included",
        model_bytes=int(weights),
        calibration=calibration,
        parameters=_parameters(predictor),
    )


def _scores_section(inputs: ReportInputs, split: str, card: DataCard | None) -> dict[str, Any]:
    predictor = inputs.predictor
    labels = predictor.labels
    probs, dataset = inputs.probs[split], inputs.data[split]
    scores = score_probabilities(probs, dataset, labels, predictor.rule)
    multi_label = predictor.rule.multi_label
    targets = label_targets(dataset, labels, multi_label)
    onehot = targets if multi_label else np.eye(len(labels), dtype=int)[targets]
    confidence, correct, ece = calibration_points(probs, targets, multi_label=multi_label)
    out: dict[str, Any] = {
        "split": split,
        "scores": scores,
        "per_class": sorted(scores.per_class.items(), key=lambda kv: -kv[1].support),
        "ece": ece,
        "reliability": data_uri(figures.reliability_diagram(confidence, correct, split)),
        "pr": data_uri(figures.pr_curves(probs, onehot, labels, split)),
        "confusions": [],
        "heatmap": None,
    }
    if scores.confusion_matrix is not None:
        matrix = np.asarray(scores.confusion_matrix)
        out["confusions"] = top_confusions(matrix, labels)
        out["heatmap"] = data_uri(figures.confusion_heatmap(matrix, labels, split))
    return out


def _mistakes_section(inputs: ReportInputs, split: str, limits: ReportLimits) -> list[Any]:
    dataset = inputs.data[split]
    predictor = inputs.predictor
    targets = label_targets(dataset, predictor.labels, predictor.rule.multi_label)
    return mistakes(
        predictor,
        dataset.texts,
        [", ".join(ex.labels) for ex in dataset.examples],
        inputs.probs[split],
        targets,
        k=limits.mistakes,
        explain_seconds=limits.explain_seconds,
        lang_of=language_of,
    )


def _context(inputs: ReportInputs, limits: ReportLimits) -> dict[str, Any]:
    """Every value the template shows, computed once."""
    started = time.perf_counter()
    card = data_card(inputs.data) if inputs.data else None
    split = inputs.shown
    some = inputs.data[split] if split else next(iter(inputs.data.values()), None)
    texts = some.texts if some is not None else []
    issues = read_label_issues(inputs.issues) if inputs.issues is not None else None
    context = {
        "version": __version__,
        "made": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cfg": inputs.cfg,
        "labels": inputs.predictor.labels,
        "lang": card.languages.lang if card else "en",
        "card": card,
        "label_table": card.label_table() if card else None,
        "lengths": data_uri(figures.length_histogram(card.lengths)) if card else None,
        "model_card": model_card(inputs.cfg, inputs.predictor.labels, card),
        "section": _scores_section(inputs, split, card) if split else None,
        "mistakes": _mistakes_section(inputs, split, limits) if split else [],
        "limits": limits,
        "history": inputs.history,
        "curves": data_uri(figures.training_curves(inputs.history)) if inputs.history else None,
        "calibration": inputs.calibration,
        "latency": latency(inputs.predictor, texts, limits.latency_seconds),
        "model_bytes": inputs.model_bytes,
        "parameters": inputs.parameters,
        "members": inputs.members,
        "config_json": json.dumps(inputs.cfg.model_dump(mode="json"), indent=2, ensure_ascii=False),
        "files": inputs.files,
        "files_note": inputs.files_note,
        "issues": issues,
        "issues_file": inputs.issues.name if inputs.issues is not None else None,
    }
    logger.info("report sections took %.1f s", time.perf_counter() - started)
    return context


def render_html(inputs: ReportInputs, limits: ReportLimits | None = None) -> str:
    """The report as one self-contained HTML page (every text escaped by Jinja2)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("fenlei.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**_context(inputs, limits or ReportLimits()))


def write_html(inputs: ReportInputs, out: str | Path, limits: ReportLimits | None = None) -> Path:
    """Render the report and write it atomically to ``out``; return the path."""
    path = Path(out)
    atomic_write_text(path, render_html(inputs, limits))
    return path
