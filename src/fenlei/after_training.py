"""The steps that run once a model is trained, before the run folder is saved.

Each step is a small function of one shared :class:`AfterTraining` (the predictor, the splits,
the dev and test logits and probabilities computed once, the history, the folder) and adds
scores or files. :data:`AFTER_TRAINING` runs them in order: the temperature and the tuned
decision (``calibration.json``, :mod:`fenlei.calibrate`), scores, reference statistics, plots,
kept predictions, the HTML report (``report.html``, :mod:`fenlei.report`).
:func:`fenlei.pipeline.train_run` builds the context and runs them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from fenlei.artifact import atomic_write, atomic_write_text
from fenlei.calibrate import (
    CALIBRATION_FILE,
    ECE_BINS,
    Calibration,
    choose_reject,
    expected_calibration_error,
    fit_temperature,
    reject_point,
    tune_thresholds,
)
from fenlei.config import RunConfig
from fenlei.evaluate import label_targets, score_probabilities, write_plots
from fenlei.models import family_of
from fenlei.predict import Predictor, ServablePredictor
from fenlei.records import CalibrationScores, DecisionScores, EpochRecord, Scores
from fenlei.reference import reference_stats
from fenlei.report import REPORT_FILE, TRAINING_LIMITS, training_inputs, write_html
from fenlei.runtime import Dist
from fenlei.splits import Splits

__all__ = [
    "AFTER_TRAINING",
    "PREDICTIONS_FILE",
    "SPLITS_FILE",
    "AfterTraining",
    "Step",
    "calibrate_temperature",
    "draw_plots",
    "keep_predictions",
    "save_calibration",
    "score_splits",
    "tune_decision",
    "write_reference",
    "write_report",
]

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
PREDICTIONS_FILE = "predictions.safetensors"


@dataclass
class AfterTraining:
    """What the after-training steps share. Steps read it and add to ``scores``/``files``.

    Attributes:
        cfg: the run's configuration.
        splits: the data the run was trained and scored on.
        run_dir: the run folder.
        predictor: the trained model, ready to predict.
        history: one record per epoch (or solve).
        dev_probs: (N_dev, C) probabilities of the dev texts, in dev order.
        test_probs: (N_test, C) probabilities of the test texts; None without a test split.
        dist: this process's rank; only the main rank writes.
        dev_logits, test_logits: the model's raw outputs (N, n_outputs) the probabilities
            came from (None: not known, and nothing is calibrated).
        calibration: what was fitted on dev so far (the predictor applies it).
        scores: split name (``"dev"``, ``"test"``) -> its scores.
        calibration_scores, decision_scores: what calibrating and tuning did.
        files: files the steps wrote.
    """

    cfg: RunConfig
    splits: Splits
    run_dir: Path
    predictor: ServablePredictor
    history: list[EpochRecord]
    dev_probs: np.ndarray
    test_probs: np.ndarray | None
    dist: Dist = field(default_factory=Dist)
    dev_logits: np.ndarray | None = None
    test_logits: np.ndarray | None = None
    calibration: Calibration = field(default_factory=Calibration)
    scores: dict[str, Scores] = field(default_factory=dict)
    calibration_scores: CalibrationScores | None = None
    decision_scores: DecisionScores | None = None
    files: list[Path] = field(default_factory=list)

    def targets(self, split: str) -> np.ndarray:
        """The labels of ``"dev"`` or ``"test"`` as targets ((N,) indices or (N, C) 0/1)."""
        data = self.splits.dev if split == "dev" else self.splits.test
        assert data is not None
        return label_targets(data, self.predictor.labels, self.splits.labels.multi_label)

    def labelled_probs(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Split name -> (probabilities, targets), for dev and (when there is one) test."""
        out = {"dev": (self.dev_probs, self.targets("dev"))}
        if self.splits.test is not None and self.test_probs is not None:
            out["test"] = (self.test_probs, self.targets("test"))
        return out

    def apply(self, calibration: Calibration) -> None:
        """Use ``calibration`` from now on: a predictor with it, and the dev and test
        probabilities computed again from the logits."""
        assert isinstance(self.predictor, Predictor) and self.dev_logits is not None
        self.calibration = calibration
        self.predictor = self.predictor.calibrated(calibration)
        self.dev_probs = self.predictor.probabilities(self.dev_logits)
        if self.test_logits is not None:
            self.test_probs = self.predictor.probabilities(self.test_logits)

    def write_json(self, name: str, obj: Any, *, indent: int | None = 1) -> None:
        """Write ``run_dir/name`` atomically (on the main rank only)."""
        if self.dist.is_main:
            path = self.run_dir / name
            atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent))
            self.files.append(path)


Step = Callable[[AfterTraining], None]


def _ece(ctx: AfterTraining) -> dict[str, float]:
    multi = ctx.splits.labels.multi_label
    return {
        name: expected_calibration_error(probs, y, multi_label=multi)
        for name, (probs, y) in ctx.labelled_probs().items()
    }


def calibrate_temperature(ctx: AfterTraining) -> None:
    """Temperature scaling on the dev logits (``eval.calibrate``, else the family's default);
    the calibration error before and after, on dev and test, goes into ``metrics.json``."""
    if ctx.dev_logits is None or not isinstance(ctx.predictor, Predictor):
        return
    before = _ece(ctx)
    multi = ctx.splits.labels.multi_label
    fit = fit_temperature(ctx.dev_logits, ctx.targets("dev"), multi_label=multi)
    note = fit.note
    wanted = ctx.cfg.eval.calibrate
    if wanted is None:
        wanted = family_of(ctx.cfg.model.architecture).calibrate
    if not wanted:
        note = "eval.calibrate is off"
    elif fit.temperature != 1.0:
        ctx.apply(replace(ctx.calibration, temperature=fit.temperature))
    temperature = ctx.calibration.temperature
    after = _ece(ctx) if temperature != 1.0 else before
    ctx.calibration_scores = CalibrationScores(
        temperature=temperature,
        bins=ECE_BINS,
        ece_before=before,
        ece_after=after,
        nll_before=fit.nll_before,
        nll_after=fit.nll_after if temperature != 1.0 else fit.nll_before,
        note=note,
    )
    logger.info("temperature %.3f; ECE %s -> %s", temperature, before, after)


def tune_decision(ctx: AfterTraining) -> None:
    """Per-label thresholds (multi-label, ``eval.per_label_thresholds``) or the reject point
    (single-label, ``eval.abstain_target_accuracy``), tuned on the calibrated dev
    probabilities."""
    if not isinstance(ctx.predictor, Predictor) or ctx.dev_logits is None:
        return
    if ctx.splits.labels.multi_label and ctx.cfg.eval.per_label_thresholds:
        _tune_thresholds(ctx)
    elif not ctx.splits.labels.multi_label and ctx.cfg.eval.abstain_target_accuracy is not None:
        _tune_reject(ctx, ctx.cfg.eval.abstain_target_accuracy)


def _tune_thresholds(ctx: AfterTraining) -> None:
    target = ctx.cfg.eval.min_precision
    fit = tune_thresholds(
        ctx.dev_probs, ctx.targets("dev"), min_precision=target, default=ctx.cfg.eval.threshold
    )
    names = ctx.predictor.labels
    unmet = {names[j]: p for j, p in zip(fit.unmet, fit.best_precision, strict=True)}
    if unmet:
        logger.warning(
            "no threshold reaches precision %s on dev for %s; they keep their best-F1 threshold",
            target,
            ", ".join(f"{k!r} (at best {v:.3f})" for k, v in unmet.items()),
        )
    ctx.apply(replace(ctx.calibration, thresholds=fit.thresholds))
    ctx.decision_scores = DecisionScores(
        thresholds=dict(zip(names, fit.thresholds, strict=True)),
        min_precision=target,
        unmet=unmet,
    )


def _tune_reject(ctx: AfterTraining, target: float) -> None:
    point = choose_reject(ctx.dev_probs, ctx.targets("dev"), target)
    if point is None:
        note = f"no confidence threshold reaches accuracy {target} on dev: never abstains"
        logger.warning("%s", note)
        ctx.decision_scores = DecisionScores(target_accuracy=target, note=note)
        return
    ctx.apply(replace(ctx.calibration, abstain_below=point.threshold))
    ctx.decision_scores = DecisionScores(
        abstain_below=point.threshold,
        target_accuracy=target,
        coverage={
            name: {
                k: v
                for k, v in reject_point(probs, y, point.threshold).to_json().items()
                if k != "threshold"
            }
            for name, (probs, y) in ctx.labelled_probs().items()
        },
    )


def save_calibration(ctx: AfterTraining) -> None:
    """``calibration.json``: the temperature, thresholds and reject point the predictor
    applies (none when nothing was fitted, so the folder reads like an older one)."""
    if ctx.calibration.is_identity:
        return
    details: dict[str, Any] = {}
    if ctx.calibration_scores is not None:
        details["calibration"] = ctx.calibration_scores.to_json()
    if ctx.decision_scores is not None:
        details["decision"] = ctx.decision_scores.to_json()
    ctx.write_json(CALIBRATION_FILE, replace(ctx.calibration, details=details).to_json())


def score_splits(ctx: AfterTraining) -> None:
    """Score dev (and test) from the probabilities predicted once."""
    labels, rule = ctx.predictor.labels, ctx.predictor.rule
    ctx.scores["dev"] = score_probabilities(ctx.dev_probs, ctx.splits.dev, labels, rule)
    if ctx.splits.test is not None and ctx.test_probs is not None:
        ctx.scores["test"] = score_probabilities(ctx.test_probs, ctx.splits.test, labels, rule)


def write_reference(ctx: AfterTraining) -> None:
    """``reference.json``: the dev distributions the server's drift monitor compares with."""
    stats = reference_stats(ctx.predictor, ctx.splits.dev.texts, probs=ctx.dev_probs)
    ctx.write_json("reference.json", stats)


def draw_plots(ctx: AfterTraining) -> None:
    """``plots/``: training curves and the confusion matrix (test, else dev)."""
    if not ctx.cfg.eval.plots or not ctx.dist.is_main:
        return
    split = "test" if "test" in ctx.scores else "dev"
    shown = ctx.scores.get(split)
    ctx.files.extend(
        write_plots(
            ctx.run_dir,
            ctx.predictor.labels,
            ctx.history,
            shown.to_json() if shown else None,
            split=split,
        )
    )


def keep_predictions(ctx: AfterTraining) -> None:
    """Keep which source rows went to which split (``splits.json``: source and row numbers
    per split, in split order) and the dev and test probabilities (``predictions.safetensors``:
    tensors ``dev`` and ``test``, rows in split order, columns in label order), so a report can
    show the worst errors without predicting again."""
    sets = {"train": ctx.splits.train, "dev": ctx.splits.dev, "test": ctx.splits.test}
    ctx.write_json(
        SPLITS_FILE,
        {
            name: {"source": data.source, "rows": [ex.source_row for ex in data.examples]}
            for name, data in sets.items()
            if data is not None
        },
        indent=None,  # one row number per line would make it several times larger
    )
    if not ctx.dist.is_main:
        return
    probs = {"dev": ctx.dev_probs, "test": ctx.test_probs}
    tensors = {
        k: np.ascontiguousarray(v, dtype=np.float32) for k, v in probs.items() if v is not None
    }
    meta = {"labels": json.dumps(list(ctx.predictor.labels), ensure_ascii=False)}
    path = ctx.run_dir / PREDICTIONS_FILE
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    ctx.files.append(path)


def write_report(ctx: AfterTraining) -> None:
    """``report.html`` (``eval.report``): the run's HTML report from the data, probabilities
    and history in memory (:mod:`fenlei.report`); last, so it lists the files written."""
    if not ctx.cfg.eval.report or not ctx.dist.is_main or not isinstance(ctx.predictor, Predictor):
        return
    splits = ctx.splits
    inputs = training_inputs(
        ctx.cfg,
        ctx.predictor,
        ctx.history,
        {"train": splits.train, "dev": splits.dev, "test": splits.test},
        {"dev": ctx.dev_probs, "test": ctx.test_probs},
        ctx.run_dir,
        ctx.calibration_scores.to_json() if ctx.calibration_scores else None,
    )
    ctx.files.append(write_html(inputs, ctx.run_dir / REPORT_FILE, TRAINING_LIMITS))


# In order: later steps read what earlier ones added (plots show the scores). The steps that
# change probabilities or decisions come first, so the scores, reference.json (which the
# drift monitor compares served, calibrated confidences with) and the kept predictions all
# describe the model as it is served.
AFTER_TRAINING: tuple[Step, ...] = (
    calibrate_temperature,
    tune_decision,
    save_calibration,
    score_splits,
    write_reference,
    draw_plots,
    keep_predictions,
    write_report,
)
