"""The file-to-run-folder training pipeline.

:func:`train_run` is the whole job, in this order (the splits come from
:func:`~fenlei.splits.prepare_splits`):

1. claim the run folder (:mod:`fenlei.run_folder`: lock it, refuse a folder of other files,
   clean up, decide between a fresh start, a resume and a run that is already complete);
2. fit the tokenizer (or reload the checkpointed one), build the model and train it
   (:func:`fenlei.train.fit`), with the run's own seeded random state;
3. predict dev and test once (logits, and probabilities from them);
4. run the :data:`~fenlei.after_training.AFTER_TRAINING` steps in order
   (:mod:`fenlei.after_training`: calibration, scores, reference statistics, plots, kept
   predictions, the HTML report);
5. save the run folder (:func:`fenlei.artifact.save_run`; the manifest comes last).

Under a data-parallel launcher every rank runs it; only rank 0 (:class:`fenlei.runtime.Dist`)
touches the run folder. The names of :mod:`fenlei.splits` and :mod:`fenlei.after_training` are
importable from here too.

Example:
    >>> splits = prepare_splits(cfg.data, load_table("train.csv", cfg.data))  # doctest: +SKIP
    >>> train_run(cfg, splits, "runs/x").metrics.dev.accuracy  # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from fenlei import run_folder
from fenlei.after_training import (
    AFTER_TRAINING,
    PREDICTIONS_FILE,
    SPLITS_FILE,
    AfterTraining,
    Step,
    calibrate_temperature,
    draw_plots,
    keep_predictions,
    save_calibration,
    score_splits,
    tune_decision,
    write_reference,
    write_report,
)
from fenlei.artifact import CHECKPOINT_DIR, atomic_write, save_run
from fenlei.config import RunConfig
from fenlei.data import LabelSet
from fenlei.decision import DecisionRule
from fenlei.errors import ArtifactError, DataError
from fenlei.models import ModelSpec, build_model, check, family_of, n_outputs
from fenlei.predict import Predictor
from fenlei.progress import ProgressReporter
from fenlei.records import EpochRecord, RunMetrics, SplitCounts, read_history
from fenlei.runtime import Dist
from fenlei.splits import Splits, prepare_splits
from fenlei.tokenize import (
    Encoder,
    Windows,
    extend_vocabulary,
    load_pretrained_encoder,
    train_encoder,
)
from fenlei.tracking import track_run
from fenlei.train import EpochHook, Run, SoftLabels, TrainData, fit, teacher_targets

__all__ = [
    "AFTER_TRAINING",
    "PREDICTIONS_FILE",
    "SPLITS_FILE",
    "AfterTraining",
    "EncodingCache",
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
    "untrained_predictor",
    "write_reference",
    "write_report",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train_run` produced: the run folder, a ready predictor, the metrics
    written to ``metrics.json`` and the epoch history (``metrics.jsonl``)."""

    run_dir: Path
    predictor: Predictor
    metrics: RunMetrics
    history: list[EpochRecord] = field(default_factory=list)


def _fit_encoder(cfg: RunConfig, texts: list[str]) -> Encoder:
    if cfg.encoder.kind != "pretrained":
        return train_encoder(texts, cfg.encoder)
    name = cfg.encoder.pretrained or cfg.model.pretrained
    assert name is not None  # checked by RunConfig
    encoder = load_pretrained_encoder(name, cfg.encoder)
    if cfg.encoder.extend_vocab:
        added = extend_vocabulary(
            encoder, texts, most=cfg.encoder.extend_vocab, min_count=cfg.encoder.min_frequency
        )
        logger.info(
            "encoder.extend_vocab: %d tokens the pretrained vocabulary lacked were added "
            "(their embeddings start new)",
            added,
        )
    return encoder


@dataclass
class _Encoded:
    encoder: Encoder
    windows: dict[str, Windows] = field(default_factory=dict)


@dataclass
class EncodingCache:
    """Fitted encoders and the encoded train and dev texts of recent ``encoder`` settings,
    kept between runs on the same ``splits`` (a tuner's trials: their searches rarely change
    the encoder). Fitting an encoder is deterministic, so a run whose settings match one kept
    here trains exactly what it would have trained from scratch, without fitting the
    vocabulary and encoding the texts again (on IMDB about half of a linear or nbsvm run).

    Attributes:
        splits: the splits every run that uses this cache trains on.
        keep: settings kept at once (the oldest goes first): a multi-family study
            alternates between its families' encoders.
    """

    splits: Splits
    keep: int = 2
    _entries: dict[str, _Encoded] = field(default_factory=dict, repr=False)

    @staticmethod
    def _key(cfg: RunConfig) -> str:
        # the encoder section and, for a pretrained vocabulary, the model it may come from
        return json.dumps([cfg.encoder.model_dump(mode="json"), cfg.model.pretrained])

    def encoder(self, cfg: RunConfig) -> Encoder:
        """The encoder of ``cfg``'s settings fitted on the training texts (fitted now if
        it is not kept)."""
        key = self._key(cfg)
        entry = self._entries.pop(key, None)
        if entry is None:
            entry = _Encoded(_fit_encoder(cfg, self.splits.train.texts))
        self._entries[key] = entry  # the most recent last
        while len(self._entries) > self.keep:
            del self._entries[next(iter(self._entries))]
        return entry.encoder

    def windows(self, encoder: Encoder, split: str) -> Windows | None:
        """``split``'s texts (``"train"`` or ``"dev"``) encoded by ``encoder`` when it is
        one of the kept encoders (encoded now if they are not kept yet); else None."""
        entry = next((e for e in self._entries.values() if e.encoder is encoder), None)
        if entry is None:
            return None
        if split not in entry.windows:
            dataset = self.splits.train if split == "train" else self.splits.dev
            entry.windows[split] = encoder.encode_windows(dataset.texts)
        return entry.windows[split]


VOCABULARY_SAMPLE = 2000  # training texts read to measure the unknown-token share


def _check_vocabulary(cfg: RunConfig, splits: Splits) -> None:
    """Refuse a pretrained vocabulary that reads the training texts mostly as unknown."""
    if cfg.encoder.kind != "pretrained" or cfg.encoder.max_unknown_rate >= 1:
        return
    # the vocabulary as training will use it: extended from all the training texts
    encoder = _fit_encoder(cfg, splits.train.texts if cfg.encoder.extend_vocab else [])
    rate = encoder.unknown_rate(splits.train.texts[:VOCABULARY_SAMPLE])
    if rate > cfg.encoder.max_unknown_rate:
        raise DataError(
            f"the pretrained vocabulary reads {rate:.0%} of the training tokens as unknown "
            f"(more than encoder.max_unknown_rate={cfg.encoder.max_unknown_rate}; a language "
            "it was not trained on?), so the model would learn from [UNK]; use --preset linear, "
            "nbsvm or lstm (they learn their vocabulary from your data), --set "
            "encoder.extend_vocab=5000 --set train.embedding_lr=5e-4 to add the missing tokens "
            "to the vocabulary and learn them, or --set encoder.max_unknown_rate=1 to train "
            "anyway",
            path=splits.train.source,
        )


def _open(
    root: Path, cfg: RunConfig, labels: LabelSet, *, resume: bool, overwrite: bool, dist: Dist
) -> run_folder.Start:
    if not dist.is_main:  # rank 0 prepares the folder; the others only train
        return "resume" if resume else "fresh"
    return run_folder.open_for_training(root, cfg, labels, resume=resume, overwrite=overwrite)


def _encoder(
    cfg: RunConfig,
    splits: Splits,
    root: Path,
    *,
    resumed: bool,
    dist: Dist,
    cache: EncodingCache | None = None,
) -> Encoder:
    """The checkpointed tokenizer when resuming, else a fitted (or cached) one, checkpointed
    too."""
    path = root / CHECKPOINT_DIR / "tokenizer.json"
    if resumed and dist.is_main and path.is_file():
        return Encoder.load(path, cfg.encoder)
    # deterministic: every rank gets the same, and a cached one is the one fitting gives
    encoder = _fit_encoder(cfg, splits.train.texts) if cache is None else cache.encoder(cfg)
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


def _model_spec(cfg: RunConfig, splits: Splits, encoder: Encoder) -> ModelSpec:
    return ModelSpec(
        vocab_size=encoder.vocab_size,
        pad_id=encoder.pad_id,
        n_outputs=n_outputs(
            len(splits.labels),
            multi_label=splits.labels.multi_label,
            single_logit=cfg.model.single_logit,
        ),
    )


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
    cache: EncodingCache | None = None,
) -> tuple[Run, ModelSpec]:
    """Build the model for ``encoder`` and train it (on a teacher's ``soft`` labels too,
    when given); return the run and the model's spec."""
    spec = _model_spec(cfg, splits, encoder)

    def cached(split: str) -> Windows | None:
        return None if cache is None else cache.windows(encoder, split)

    if soft is None:
        data = TrainData.from_dataset(
            splits.train,
            splits.labels,
            encoder,
            n_out=spec.n_outputs,
            augment=cfg.augment,
            windows=cached("train"),
        )
    else:  # distillation: the labelled texts, then the extra texts the teacher labelled
        data = TrainData(
            ids=encoder.encode_ids([*splits.train.texts, *soft.extra]),
            targets=teacher_targets(splits.train, splits.labels, spec.n_outputs, soft),
            pad_id=encoder.pad_id,
            augment=cfg.augment,
            protect=encoder.special_ends,
        )
    dev = TrainData.from_dataset(
        splits.dev, splits.labels, encoder, n_out=spec.n_outputs, windows=cached("dev")
    )
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


PROBE_TEXTS = 5000  # training texts the probe fits its vocabulary (or a bag's table) on


def untrained_predictor(
    cfg: RunConfig,
    splits: Splits,
    *,
    sample: int = PROBE_TEXTS,
    cache: EncodingCache | None = None,
) -> Predictor:
    """A predictor of these settings before any training: the model built with its initial
    weights, the vocabulary fitted on the first ``sample`` training texts (a pretrained one
    loaded; with a ``cache``, the one training fits, kept there for it). What it costs to
    serve (batch-1 latency, size) is what the trained model will cost, within the difference
    of a vocabulary fitted on fewer texts; a tuner measures it to skip settings that cannot
    meet a latency budget before spending a training on them.

    Raises:
        ConfigError: the settings do not fit the model family.
    """
    check(cfg)
    texts = splits.train.texts[:sample]
    encoder = _fit_encoder(cfg, texts) if cache is None else cache.encoder(cfg)
    # the model is built as the whole training set would build it (e.g. nbsvm's character
    # n-grams depend on its size), from a sample's ids
    spec = replace(_model_spec(cfg, splits, encoder), train_texts=len(splits.train.texts))
    with _own_random_state(cfg.train.seed):
        model = build_model(
            cfg.model,
            spec,
            vocab=encoder.tokenizer.get_vocab(),
            train_ids=encoder.encode_ids(texts),
        )
    return Predictor(
        encoder,
        model,
        splits.labels.names,
        rule=DecisionRule(multi_label=splits.labels.multi_label, threshold=cfg.eval.threshold),
        batch_size=cfg.eval.batch_size,
        architecture=cfg.model.architecture,
    )


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
    cache: EncodingCache | None = None,
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
        cache: fitted encoders and encoded texts shared with other runs on these
            ``splits`` (:class:`EncodingCache`; made for exactly these splits).

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
    if cache is not None and cache.splits is not splits:
        raise ValueError("an EncodingCache serves the splits it was made for only")
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
        encoder = _encoder(cfg, splits, root, resumed=start == "resume", dist=dist, cache=cache)
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
                cache=cache,
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
