"""The file-to-run-folder training pipeline.

:func:`prepare_splits` checks (and if needed makes) the train/dev/test splits.
:func:`train_run` is the whole job, in this order:

1. claim the run folder (:mod:`fenlei.run_folder`: lock it, refuse a folder of other files,
   clean up, decide between a fresh start, a resume and a run that is already complete);
2. fit the tokenizer (or reload the checkpointed one), build the model and train it
   (:func:`fenlei.train.fit`), with the run's own seeded random state;
3. predict dev and test once (logits, and probabilities from them);
4. run the :data:`AFTER_TRAINING` steps in order; each is a small function of one shared
   :class:`AfterTraining` (the predictor, the splits, the logits and probabilities, the
   history, the folder) and adds scores or files: the temperature and the tuned decision
   (``calibration.json``, :mod:`fenlei.calibrate`), scores, reference statistics, plots,
   kept predictions, the HTML report (``report.html``, :mod:`fenlei.report`);
5. save the run folder (:func:`fenlei.artifact.save_run`; the manifest comes last).

Under a data-parallel launcher every rank runs it; only rank 0 (:class:`fenlei.runtime.Dist`)
touches the run folder.

Example:
    >>> splits = prepare_splits(cfg.data, load_table("train.csv", cfg.data))  # doctest: +SKIP
    >>> train_run(cfg, splits, "runs/x").metrics.dev.accuracy  # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

from fenlei import run_folder
from fenlei.artifact import CHECKPOINT_DIR, atomic_write, atomic_write_text, save_run
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
from fenlei.config import DataConfig, RunConfig
from fenlei.data import Dataset, DataSummary, LabelSet, check_splits, split, summarize
from fenlei.decision import DecisionRule
from fenlei.errors import ArtifactError, DataError
from fenlei.evaluate import label_targets, score_probabilities, write_plots
from fenlei.models import ModelSpec, build_model, check, family_of, n_outputs
from fenlei.predict import Predictor, ServablePredictor
from fenlei.progress import ProgressReporter
from fenlei.records import (
    CalibrationScores,
    DecisionScores,
    EpochRecord,
    RunMetrics,
    Scores,
    SplitCounts,
    read_history,
)
from fenlei.reference import reference_stats
from fenlei.report import REPORT_FILE, TRAINING_LIMITS, training_inputs, write_html
from fenlei.runtime import Dist
from fenlei.tokenize import Encoder, load_pretrained_encoder, train_encoder
from fenlei.tracking import track_run
from fenlei.train import EpochHook, Run, SoftLabels, TrainData, fit, teacher_targets

__all__ = [
    "AFTER_TRAINING",
    "PREDICTIONS_FILE",
    "SPLITS_FILE",
    "AfterTraining",
    "Splits",
    "Step",
    "TrainResult",
    "calibrate_temperature",
    "draw_plots",
    "keep_predictions",
    "prepare_splits",
    "save_calibration",
    "score_splits",
    "train_run",
    "tune_decision",
    "write_reference",
    "write_report",
]

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
PREDICTIONS_FILE = "predictions.safetensors"


@dataclass(frozen=True)
class Splits:
    """Train, dev and (optional) test data, checked against each other."""

    train: Dataset
    dev: Dataset
    test: Dataset | None
    labels: LabelSet

    def summaries(self) -> list[DataSummary]:
        """One summary per split."""
        return [summarize(d) for d in (self.train, self.dev, self.test) if d is not None]


def prepare_splits(
    cfg: DataConfig, train: Dataset, dev: Dataset | None = None, test: Dataset | None = None
) -> Splits:
    """Split ``train`` when no dev set is given (stratified, seeded), then check the labels.

    Raises:
        DataError: one class only, or a dev/test label that never occurs in train.
    """
    if dev is None:
        check_splits(train)  # one class is reported before trying to split
        _check_enough_rows_to_split(train, 3 if test is None and cfg.test_fraction > 0 else 2)
        test_fraction = cfg.test_fraction if test is None else 0.0
        train, dev, made_test = split(
            train,
            dev_fraction=cfg.dev_fraction,
            test_fraction=test_fraction,
            seed=cfg.split_seed,
        )
        test = test if test is not None else made_test
    labels = check_splits(train, dev, test)
    return Splits(train, dev, test, labels)


def _check_enough_rows_to_split(dataset: Dataset, needed: int) -> None:
    if dataset.multi_label:
        return
    rows: dict[str, list[int]] = {}
    for ex in dataset.examples:
        rows.setdefault(ex.labels[0], []).append(ex.source_row)
    for label, where in sorted(rows.items()):
        if len(where) < needed:
            raise DataError(
                f"label {label!r} occurs in only {len(where)} row(s) (row {where[0]}); "
                f"splitting into train/dev{'/test' if needed == 3 else ''} needs at least "
                f"{needed} per label: add rows, merge the label, or give --dev",
                path=dataset.source,
            )


@dataclass
class TrainResult:
    """What :func:`train_run` produced: the run folder, a ready predictor, the metrics
    written to ``metrics.json`` and the epoch history (``metrics.jsonl``)."""

    run_dir: Path
    predictor: Predictor
    metrics: RunMetrics
    history: list[EpochRecord] = field(default_factory=list)


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


def _fit_encoder(cfg: RunConfig, texts: list[str]) -> Encoder:
    if cfg.encoder.kind == "pretrained":
        name = cfg.encoder.pretrained or cfg.model.pretrained
        assert name is not None  # checked by RunConfig
        return load_pretrained_encoder(name, cfg.encoder)
    return train_encoder(texts, cfg.encoder)


VOCABULARY_SAMPLE = 2000  # training texts read to measure the unknown-token share


def _check_vocabulary(cfg: RunConfig, splits: Splits) -> None:
    """Refuse a pretrained vocabulary that reads the training texts mostly as unknown."""
    if cfg.encoder.kind != "pretrained" or cfg.encoder.max_unknown_rate >= 1:
        return
    encoder = _fit_encoder(cfg, [])
    rate = encoder.unknown_rate(splits.train.texts[:VOCABULARY_SAMPLE])
    if rate > cfg.encoder.max_unknown_rate:
        raise DataError(
            f"the pretrained vocabulary reads {rate:.0%} of the training tokens as unknown "
            f"(more than encoder.max_unknown_rate={cfg.encoder.max_unknown_rate}; a language "
            "it was not trained on?), so the model would learn from [UNK]; use --preset linear, "
            "nbsvm or lstm (they learn their vocabulary from your data), or --set "
            "encoder.max_unknown_rate=1 to train anyway",
            path=splits.train.source,
        )


def _open(
    root: Path, cfg: RunConfig, labels: LabelSet, *, resume: bool, overwrite: bool, dist: Dist
) -> run_folder.Start:
    if not dist.is_main:  # rank 0 prepares the folder; the others only train
        return "resume" if resume else "fresh"
    return run_folder.open_for_training(root, cfg, labels, resume=resume, overwrite=overwrite)


def _encoder(cfg: RunConfig, splits: Splits, root: Path, *, resumed: bool, dist: Dist) -> Encoder:
    """The checkpointed tokenizer when resuming, else a fitted one (checkpointed too)."""
    path = root / CHECKPOINT_DIR / "tokenizer.json"
    if resumed and dist.is_main and path.is_file():
        return Encoder.load(path, cfg.encoder)
    encoder = _fit_encoder(cfg, splits.train.texts)  # deterministic: every rank gets the same
    if dist.is_main:
        atomic_write(path, encoder.save)
    return encoder


@contextmanager
def _own_random_state(seed: int) -> Iterator[None]:
    """Seed torch for this run only: in a fork of the global generator that is restored
    afterwards, so the caller's random state is left as it was and runs in one process do
    not disturb each other; results are those of seeding globally."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _fit_model(
    cfg: RunConfig,
    splits: Splits,
    root: Path,
    encoder: Encoder,
    *,
    resume: bool,
    progress: ProgressReporter | None,
    dist: Dist,
    on_epoch: EpochHook | None = None,
    soft: SoftLabels | None = None,
) -> tuple[Run, ModelSpec]:
    """Build the model for ``encoder`` and train it (on a teacher's ``soft`` labels too,
    when given); return the run and the model's spec."""
    spec = ModelSpec(
        vocab_size=encoder.vocab_size,
        pad_id=encoder.pad_id,
        n_outputs=n_outputs(
            len(splits.labels),
            multi_label=splits.labels.multi_label,
            single_logit=cfg.model.single_logit,
        ),
    )
    if soft is None:
        data = TrainData.from_dataset(
            splits.train, splits.labels, encoder, n_out=spec.n_outputs, augment=cfg.augment
        )
    else:  # distillation: the labelled texts, then the extra texts the teacher labelled
        data = TrainData(
            ids=encoder.encode_ids([*splits.train.texts, *soft.extra]),
            targets=teacher_targets(splits.train, splits.labels, spec.n_outputs, soft),
            pad_id=encoder.pad_id,
            augment=cfg.augment,
            protect=encoder.special_ends,
        )
    dev = TrainData.from_dataset(splits.dev, splits.labels, encoder, n_out=spec.n_outputs)
    model = build_model(cfg.model, spec, vocab=encoder.tokenizer.get_vocab(), train_ids=data.ids)
    run = fit(
        model,
        family_of(cfg.model.architecture),
        data,
        dev,
        cfg.train,
        rule=DecisionRule(multi_label=splits.labels.multi_label, threshold=cfg.eval.threshold),
        loss=None if soft is None else soft.loss(data.targets, class_weight=cfg.train.class_weight),
        run_dir=root,
        resume=resume,
        progress=progress,
        on_epoch=on_epoch,
        dist=dist,
    )
    return run, spec


def _finished(root: Path) -> TrainResult:
    """The result of a run folder that is already complete."""
    predictor = Predictor.from_run(root)
    try:
        metrics = RunMetrics.from_json(json.loads((root / "metrics.json").read_text("utf-8")))
        jsonl = root / "metrics.jsonl"
        history = read_history(jsonl) if jsonl.is_file() else []
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{root}: metrics.json or metrics.jsonl is unreadable ({exc})") from exc
    logger.info("%s is complete: nothing to resume", root)
    return TrainResult(root, predictor, metrics, history)


def train_run(
    cfg: RunConfig,
    splits: Splits,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
    dist: Dist | None = None,
    on_epoch: EpochHook | None = None,
    soft: SoftLabels | None = None,
    track: str | None = None,
) -> TrainResult:
    """Train, evaluate and save one run folder.

    Args:
        cfg: the resolved configuration.
        splits: checked train/dev/test data (see :func:`prepare_splits`).
        run_dir: the run folder to write: new, empty, or a fenlei run folder.
        resume: continue from the checkpoint in ``run_dir`` if there is one; a run that is
            already complete (same settings) is returned as it is.
        overwrite: replace a finished run already in ``run_dir`` (only fenlei's own files
            are removed).
        progress: receives training progress (a progress bar).
        dist: this process's rank (default: from the environment); only rank 0 writes.
        on_epoch: called with each epoch's (or solve's) record; raising
            :class:`~fenlei.train.StopTraining` ends training cleanly after it, and the
            run is scored and saved as usual (a tuner's pruning, a time budget).
        soft: a teacher's probabilities of the training texts (and of extra texts) to
            learn from besides the labels (:mod:`fenlei.distil`).
        track: ``"mlflow"`` or ``"tensorboard"``: log the config, each epoch, the
            final metrics, the plots and the run folder there (:mod:`fenlei.tracking`).

    Returns:
        The run folder, a ready predictor, the metrics written to ``metrics.json`` and the
        history.

    Raises:
        ArtifactError: ``run_dir`` holds files fenlei did not write, holds a finished run and
            ``overwrite`` is False, or another training is writing it.
        ConfigError: the settings do not fit the model family (:func:`fenlei.models.check`),
            or ``resume`` meets a checkpoint of other settings.

    Example:
        >>> result = train_run(load_config("linear"), splits, "runs/x")  # doctest: +SKIP
    """
    check(cfg)  # the settings fit the model family, before anything is written
    _check_vocabulary(cfg, splits)
    root = Path(run_dir)
    dist = Dist.from_env() if dist is None else dist
    if dist.is_main:
        run_folder.check_writable(root)  # before the lock, so a refused folder is left as it was
    with (
        run_folder.lock(root) if dist.is_main else nullcontext(),
        track_run(track, cfg, root, enabled=dist.is_main) as tracking,
    ):
        on_epoch = tracking.chain(on_epoch)
        started = time.perf_counter()
        start = _open(root, cfg, splits.labels, resume=resume, overwrite=overwrite, dist=dist)
        if start == "complete":
            return _finished(root)
        encoder = _encoder(cfg, splits, root, resumed=start == "resume", dist=dist)
        with _own_random_state(cfg.train.seed):
            run, spec = _fit_model(
                cfg,
                splits,
                root,
                encoder,
                resume=resume,
                progress=progress,
                dist=dist,
                on_epoch=on_epoch,
                soft=soft,
            )
        train_seconds = time.perf_counter() - started
        result = _after_training(cfg, splits, root, encoder, run, spec, train_seconds, dist)
        tracking.finish(root, result.metrics.to_json())
    dist.barrier()  # the other ranks return once the run folder is complete
    return result


def _after_training(
    cfg: RunConfig,
    splits: Splits,
    root: Path,
    encoder: Encoder,
    run: Run,
    spec: ModelSpec,
    train_seconds: float,
    dist: Dist,
) -> TrainResult:
    """Predict dev and test once, run :data:`AFTER_TRAINING`, save the run folder."""
    rule = DecisionRule(multi_label=splits.labels.multi_label, threshold=cfg.eval.threshold)
    predictor = Predictor(
        encoder,
        run.model,
        splits.labels.names,
        rule=rule,
        batch_size=cfg.eval.batch_size,
        architecture=cfg.model.architecture,
    )
    dev_logits = predictor.logits(splits.dev.texts)
    test_logits = None if splits.test is None else predictor.logits(splits.test.texts)
    ctx = AfterTraining(
        cfg,
        splits,
        root,
        predictor,
        run.history,
        dev_probs=predictor.probabilities(dev_logits),
        test_probs=None if test_logits is None else predictor.probabilities(test_logits),
        dist=dist,
        dev_logits=dev_logits,
        test_logits=test_logits,
    )
    for step in AFTER_TRAINING:
        step(ctx)
    metrics = RunMetrics(
        best_epoch=run.best_epoch,
        epochs_run=len(run.history),
        stopped_early=run.stopped_early,
        train_seconds=train_seconds,
        data={s.source: SplitCounts(s.rows, s.label_counts) for s in splits.summaries()},
        dev=ctx.scores["dev"],
        test=ctx.scores.get("test"),
        calibration=ctx.calibration_scores,
        decision=ctx.decision_scores,
    )
    if dist.is_main:
        save_run(root, cfg, splits.labels.names, encoder, run.model, spec, metrics.to_json())
    assert isinstance(ctx.predictor, Predictor)  # the steps only ever calibrate it
    return TrainResult(root, ctx.predictor, metrics, run.history)
