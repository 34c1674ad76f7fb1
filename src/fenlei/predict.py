"""Inference: :class:`Predictor` turns texts into labels and probabilities.

Built from a run folder with :meth:`Predictor.from_run` (manifest verified) or from objects.
Texts are encoded, grouped by length and run in batches on PyTorch, or on ONNX Runtime
when the run folder holds ``model.onnx`` (``backend="auto"``; see :mod:`fenlei.onnx`), with
the same outputs. The run's :class:`~fenlei.calibrate.Calibration` (``calibration.json``)
divides the logits by its temperature before the softmax/sigmoid, and labels are chosen by
the run's :class:`~fenlei.decision.DecisionRule` (its per-label thresholds or reject point).

:class:`ServablePredictor` is the public surface the service, evaluation and the reference
statistics use; any object with it (an ensemble, a calibrated predictor) can be served.
Never imports training code, and never sets process-wide torch state (entry points do, with
:func:`fenlei.runtime.configure_torch`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fenlei._version import __version__
from fenlei.artifact import LoadedRun, load_run
from fenlei.calibrate import Calibration, read_calibration
from fenlei.config import DataConfig
from fenlei.decision import DecisionRule, decide
from fenlei.errors import ArtifactError, ConfigError, DataError, MissingExtraError
from fenlei.explain import IG_STEPS, Explanation, explain, shadow_copy
from fenlei.models import batched_logits, family_of, to_probs
from fenlei.runtime import resolve_device
from fenlei.tokenize import Encoder, Windows

__all__ = [
    "BACKENDS",
    "HEADLINE_METRICS",
    "OnnxModule",
    "Prediction",
    "Predictor",
    "PredictorInfo",
    "Scored",
    "ServablePredictor",
    "TextStats",
    "headline_metrics",
]

BACKENDS = ("auto", "torch", "onnx")
ONNX_FILE = "model.onnx"
HEADLINE_METRICS = ("n", "accuracy", "macro_f1", "micro_f1", "roc_auc")


class OnnxModule(nn.Module):
    """Runs an exported ``model.onnx`` with ONNX Runtime behind the ``forward(ids, mask)``
    of a torch model, so batching, padding and heads stay the same code.

    Example:
        >>> module = OnnxModule(Path("runs/demo/model.onnx"))  # doctest: +SKIP
    """

    backend = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        super().__init__()
        self.path = path
        self.threads = threads
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingExtraError("onnxruntime", "serve", "the ONNX backend") from exc
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"{path} is not a loadable ONNX model: {exc}") from exc
        self.input_names = {i.name for i in self.session.get_inputs()}

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, n_outputs) logits, computed by ONNX Runtime."""
        feeds = {"ids": ids.numpy(), "mask": mask.numpy()}
        out = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})
        return torch.from_numpy(np.asarray(out[0]))


def _onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _backend_model(
    run: LoadedRun, backend: str, device: torch.device, *, threads: int | None = None
) -> nn.Module:
    """The module to run for ``backend``: the torch model, or ONNX Runtime over model.onnx.

    On a GPU ``auto`` means the torch model there: fenlei's ONNX Runtime session is CPU-only.
    """
    if backend not in BACKENDS:
        raise DataError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    path = run.run_dir / ONNX_FILE
    if backend == "onnx" and device.type != "cpu":
        raise ConfigError(
            "the ONNX backend runs on the CPU; use backend=torch (or auto) for the GPU, "
            "or device=cpu"
        )
    if backend == "onnx" and not path.is_file():
        raise ArtifactError(f"{path} is missing: run `fenlei export {run.run_dir}` first")
    on_cpu = device.type == "cpu"
    if backend == "onnx" or (backend == "auto" and on_cpu and path.is_file() and _onnx_available()):
        return OnnxModule(path, threads=threads)
    return run.model


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """The headline numbers of a run's ``metrics.json``: ``dev_accuracy``, ``test_macro_f1``,
    ..., ``best_epoch`` and ``train_seconds`` (those present).

    Example:
        >>> headline_metrics({"dev": {"accuracy": 0.9, "loss": 0.3}, "best_epoch": 2})
        {'dev_accuracy': 0.9, 'best_epoch': 2}
    """
    out: dict[str, float | int] = {}
    for split in ("dev", "test"):
        section = metrics.get(split)
        for key in HEADLINE_METRICS:
            value = section.get(key) if isinstance(section, Mapping) else None
            if isinstance(value, int | float):
                out[f"{split}_{key}"] = value
    for key in ("best_epoch", "train_seconds"):
        if isinstance(metrics.get(key), int | float):
            out[key] = metrics[key]
    return out


@dataclass(frozen=True)
class Prediction:
    """One text's result: best label(s), its score and every label's probability.

    ``label`` is the most probable label; ``labels`` those the decision rule chose (none
    when it abstained: ``abstained`` is then True).
    """

    label: str
    score: float
    probs: dict[str, float]
    labels: tuple[str, ...] = ()
    abstained: bool = False

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable labels with their probabilities."""
        return sorted(self.probs.items(), key=lambda kv: -kv[1])[:k]


@dataclass(frozen=True)
class TextStats:
    """Per-text input statistics (what the drift monitor watches besides the outputs).

    Attributes:
        length: (N,) characters per text.
        unknown_rate: (N,) share of a text's tokens that are the unknown token (0 for an
            encoder without one).
    """

    length: np.ndarray
    unknown_rate: np.ndarray


@dataclass(frozen=True)
class Scored:
    """Probabilities and input statistics of the same texts, from one tokenization."""

    probs: np.ndarray  # (N, C)
    stats: TextStats


@dataclass(frozen=True)
class PredictorInfo:
    """What a predictor is, for callers that describe, serve or evaluate it.

    Attributes:
        labels: the label names, in the column order of the probabilities.
        multi_label: each label is decided on its own.
        version: ``"<fenlei version>+<first 12 hex of the weights' sha256>"`` from the
            manifest (``+unknown`` when not loaded from a run folder).
        preset: the preset the run started from (``"unknown"`` without a run folder).
        architecture: the registered model family, or the module's class name.
        backend: ``"torch"`` or ``"onnx"``.
        device: where the model runs (``"cpu"``, ``"cuda"``).
        metrics: headline training metrics (:func:`headline_metrics`).
        serve_chunk: texts per model call the family prefers when served on a CPU (None:
            ``batch_size``).
        batch_size: texts per model call by default (the run's ``eval.batch_size``).
        kind: what the run folder holds: ``"single"`` (one model) or ``"ensemble"``.
        run_dir: the run folder (None when built from objects).
        data: how the run's tables are read (columns, label separator); None without a run.
        members: an ensemble's member names and their weights (empty for one model).
        max_unknown_rate: the run's ``encoder.max_unknown_rate``: a served batch whose texts
            are on average more unknown tokens than this is counted and logged as a warning.
    """

    labels: tuple[str, ...]
    multi_label: bool
    architecture: str
    backend: str
    device: str
    version: str = f"{__version__}+unknown"
    preset: str = "unknown"
    metrics: dict[str, float | int] = field(default_factory=dict)
    serve_chunk: int | None = None
    batch_size: int = 256
    kind: str = "single"
    run_dir: Path | None = None
    data: DataConfig | None = None
    members: dict[str, float] = field(default_factory=dict)
    max_unknown_rate: float = 0.5


class ServablePredictor(Protocol):
    """The public surface of a predictor: what the service, evaluation and the reference
    statistics use. :class:`Predictor` has it; an ensemble or a calibrated predictor can too.
    """

    @property
    def labels(self) -> tuple[str, ...]:
        """Label names, in the column order of the probabilities."""
        ...

    @property
    def rule(self) -> DecisionRule:
        """How probabilities become chosen labels."""
        ...

    def predict_proba(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Probabilities (N, C); ``batch_size`` texts per model call (None: the default)."""
        ...

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The decision for every text."""
        ...

    def score(self, texts: Sequence[str], *, batch_size: int | None = None) -> Scored:
        """Probabilities and input statistics, from one pass over the texts."""
        ...

    def text_stats(self, texts: Sequence[str]) -> TextStats:
        """Input statistics of the texts, without running the model."""
        ...

    def info(self) -> PredictorInfo:
        """What this predictor is (labels, version, architecture, metrics, ...)."""
        ...


def _about_run(run: LoadedRun) -> dict[str, Any]:
    """The fields of :class:`PredictorInfo` that a run folder tells."""
    architecture = run.config.model.architecture
    return {
        "architecture": architecture,
        "version": _version(run.manifest),
        "preset": run.config.preset,
        "metrics": headline_metrics(run.metrics),
        "serve_chunk": family_of(architecture).serve_chunk,
        "kind": str(run.manifest.get("kind", "single")),
        "run_dir": run.run_dir,
        "data": run.config.data,
        "max_unknown_rate": run.config.encoder.max_unknown_rate,
    }


def _version(manifest: Mapping[str, Any]) -> str:
    try:
        sha = str(manifest["files"]["model.safetensors"]["sha256"])[:12]
    except (KeyError, TypeError):
        return f"{__version__}+unknown"
    return f"{manifest.get('fenlei_version', __version__)}+{sha}"


def _family_batch_tokens(architecture: str | None) -> int | None:
    """The family's cap on padded tokens per model call (None: unknown family, no cap)."""
    if architecture is None:
        return None
    try:
        return family_of(architecture).batch_tokens
    except ConfigError:  # a module built outside the registry
        return None


class Predictor:
    """Batched inference over a trained model.

    Example:
        >>> p = Predictor.from_run("runs/demo")  # doctest: +SKIP
        >>> p.predict(["where is my parcel?"])[0].label  # doctest: +SKIP
        'delivery_status'
    """

    def __init__(
        self,
        encoder: Encoder,
        model: nn.Module,
        labels: Sequence[str],
        *,
        multi_label: bool = False,
        threshold: float | tuple[float, ...] = 0.5,
        rule: DecisionRule | None = None,
        calibration: Calibration | None = None,
        batch_size: int = 256,
        run: LoadedRun | None = None,
        device: torch.device | str = "cpu",
        architecture: str | None = None,
    ) -> None:
        """
        Args:
            encoder: turns texts into token ids.
            model: ``forward(ids, mask) -> logits``; an :class:`OnnxModule` runs on the CPU.
            labels: label names, one per probability column.
            multi_label, threshold: the decision rule, when ``rule`` is not given.
            rule: how probabilities become labels (overrides ``multi_label`` and
                ``threshold``; default: the one ``calibration`` makes of them).
            calibration: the temperature that divides the logits (and the tuned
                thresholds or reject point, when ``rule`` is not given).
            batch_size: texts per model call unless a call says otherwise.
            run: the run folder it was loaded from, if any (for :meth:`info`).
            device: where the torch model runs.
            architecture: the model's registered family (``"lstm.v1"``), which
                :meth:`explain` needs; default: the run's.
        """
        self.encoder = encoder
        self.device = torch.device(device)
        if isinstance(model, OnnxModule) and self.device.type != "cpu":
            raise ConfigError("the ONNX backend runs on the CPU; pass device='cpu'")
        self.model = model.eval() if isinstance(model, OnnxModule) else model.to(self.device).eval()
        self.labels = tuple(labels)
        self.calibration = Calibration() if calibration is None else calibration
        if rule is None:
            rule = self.calibration.rule(multi_label=multi_label, threshold=threshold)
        self.rule = rule
        self.batch_size = batch_size
        self.run = run
        self.architecture = architecture or (run.config.model.architecture if run else None)
        self.backend: str = getattr(model, "backend", "torch")
        self._batch_tokens = _family_batch_tokens(self.architecture)
        self._explainer: nn.Module | None = None  # a shadow of the torch model, made once
        self._explain_lock = threading.Lock()

    @property
    def multi_label(self) -> bool:
        """Whether each label is decided on its own (from :attr:`rule`)."""
        return self.rule.multi_label

    @property
    def threshold(self) -> float | tuple[float, ...]:
        """The multi-label threshold(s) (from :attr:`rule`)."""
        return self.rule.threshold

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        backend: str = "auto",
        device: str = "auto",
        threads: int | None = None,
    ) -> Predictor:
        """Load a run folder (manifest checked).

        Args:
            run_dir: the run folder.
            backend: ``"torch"``, ``"onnx"`` (needs ``model.onnx``) or ``"auto"`` (ONNX
                Runtime when ``model.onnx`` exists and onnxruntime is installed, on the CPU).
            device: ``"auto"`` (a CUDA GPU when there is one), ``"cpu"`` or ``"cuda"``; a GPU
                runs the PyTorch model.
            threads: intra-op threads of the ONNX Runtime session (None: its default). The
                PyTorch backend uses torch's process-wide setting, which entry points set
                (:func:`fenlei.runtime.configure_torch`).

        Raises:
            ArtifactError: the run folder is missing, incomplete or altered.
            ConfigError: ``device="cuda"`` without a GPU, or the ONNX backend on a GPU.

        Example:
            >>> Predictor.from_run("runs/demo", backend="onnx", threads=1)  # doctest: +SKIP
        """
        where = resolve_device(device)
        run = load_run(run_dir)
        calibration = read_calibration(run.run_dir, len(run.labels))  # verified by load_run
        return cls(
            run.encoder,
            _backend_model(run, backend, where, threads=threads),
            run.labels,
            rule=calibration.rule(multi_label=run.multi_label, threshold=run.config.eval.threshold),
            calibration=calibration,
            batch_size=run.config.eval.batch_size,
            run=run,
            device=where,
        )

    def info(self) -> PredictorInfo:
        """What this predictor is: labels, version, preset, architecture, metrics, ...

        Example:
            >>> Predictor.from_run("runs/demo").info().version  # doctest: +SKIP
            '0.1.0+3f2a9c81d0e4'
        """
        named = self.architecture or type(self.model).__name__
        about = _about_run(self.run) if self.run else {"architecture": named}
        return PredictorInfo(
            labels=self.labels,
            multi_label=self.multi_label,
            backend=self.backend,
            device=str(self.device),
            batch_size=self.batch_size,
            **about,
        )

    def calibrated(self, calibration: Calibration) -> Predictor:
        """The same model with ``calibration``: its temperature, and a rule with its
        thresholds and reject point (this rule's threshold where it has none).

        Example:
            >>> sharper = predictor.calibrated(Calibration(temperature=0.8))  # doctest: +SKIP
        """
        return Predictor(
            self.encoder,
            self.model,
            self.labels,
            rule=calibration.rule(multi_label=self.multi_label, threshold=self.rule.threshold),
            calibration=calibration,
            batch_size=self.batch_size,
            run=self.run,
            device=self.device,
            architecture=self.architecture,
        )

    def _check(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise DataError("pass a list of texts, not a single string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text {i} is {type(text).__name__}, not a string")
        return list(texts)

    def _logits(self, ids: list[list[int]], batch_size: int | None) -> np.ndarray:
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = batched_logits(
            self.model,
            ids,
            pad_id=self.encoder.pad_id,
            batch_size=batch_size or self.batch_size,
            max_tokens=self._batch_tokens,
            device=self.device,
        )
        return out.numpy()

    def _text_logits(self, windows: Windows, batch_size: int | None) -> np.ndarray:
        # every window of every text in one batched pass (a served micro-batch too), then
        # pooled per text outside the model, so the ONNX backend needs nothing new
        return windows.per_text(self._logits(windows.ids, batch_size))

    def _probs(self, windows: Windows, batch_size: int | None) -> np.ndarray:
        return self.probabilities(self._text_logits(windows, batch_size))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities (N, n_labels) from this model's logits (:meth:`logits`): divided by
        the calibration's temperature, then softmax, sigmoid per label, or ``[1-p, p]``.

        Example:
            >>> p = predictor.probabilities(predictor.logits(["hi"]))  # doctest: +SKIP
        """
        if logits.shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        scaled = torch.from_numpy(np.ascontiguousarray(self.calibration.scale(logits)))
        return to_probs(scaled, multi_label=self.multi_label).numpy()

    def _stats(self, texts: list[str], windows: Windows) -> TextStats:
        unk = self.encoder.unk_id
        length = np.array([len(t) for t in texts], dtype=np.float64)
        if unk is None:
            return TextStats(length, np.zeros(len(texts)))
        n = len(texts)
        unknown = [seq.count(unk) for seq in windows.ids]
        tokens = np.bincount(windows.owners, [len(seq) for seq in windows.ids], minlength=n)
        found = np.bincount(windows.owners, unknown, minlength=n)
        rates = np.divide(found, tokens, out=np.zeros(n), where=tokens > 0)
        return TextStats(length, rates.astype(np.float64))

    def logits(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Raw model outputs (N, n_outputs); a text read as several windows
        (``encoder.long_text=chunks``) gets its windows' pooled logits."""
        return self._text_logits(self.encoder.encode_windows(self._check(texts)), batch_size)

    def predict_proba(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Probabilities (N, n_labels), columns in ``self.labels`` order.

        Each row sums to 1 for single-label tasks; for multi-label each entry is independent.
        ``batch_size`` texts go through the model per call (None: ``self.batch_size``); the
        results do not depend on it.
        """
        return self._probs(self.encoder.encode_windows(self._check(texts)), batch_size)

    def score(self, texts: Sequence[str], *, batch_size: int | None = None) -> Scored:
        """Probabilities and input statistics of ``texts``, tokenizing them once.

        Example:
            >>> scored = predictor.score(["where is my parcel?"])  # doctest: +SKIP
            >>> scored.probs.shape, scored.stats.unknown_rate  # doctest: +SKIP
        """
        texts = self._check(texts)
        windows = self.encoder.encode_windows(texts)
        return Scored(self._probs(windows, batch_size), self._stats(texts, windows))

    def text_stats(self, texts: Sequence[str]) -> TextStats:
        """Length and unknown-token rate of every text (tokenizes; runs no model)."""
        texts = self._check(texts)
        return self._stats(texts, self.encoder.encode_windows(texts))

    def predict(self, texts: Sequence[str], *, batch_size: int | None = None) -> list[Prediction]:
        """The decision of :attr:`rule` for every text: the best label, its score, the chosen
        labels (for multi-label those whose probability reaches the threshold; none where a
        single-label rule abstains) and every label's probability."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        return [
            Prediction(
                label=d.label,
                score=d.score,
                probs={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
                labels=d.labels,
                abstained=d.abstained,
            )
            for d, row in zip(decide(probs, self.labels, self.rule), probs, strict=True)
        ]

    def explain(
        self, texts: Sequence[str], *, target: str | None = None, n_steps: int = IG_STEPS
    ) -> list[Explanation]:
        """A score per word of each text towards its predicted label, or ``target``.

        Exact for bag models (linear, nbsvm), integrated gradients otherwise (see
        :mod:`fenlei.explain`). Runs the PyTorch model of the run folder, also when
        predictions run on ONNX Runtime. Explanations of one predictor run one at a time;
        predictions meanwhile go on.

        Raises:
            DataError: a text has no tokens, or ``target`` is not one of :attr:`labels`.
            ConfigError: the model's family is unknown (built without ``architecture``
                or a run folder).
            MissingExtraError: integrated gradients need ``pip install 'fenlei[explain]'``.

        Example:
            >>> best = predictor.explain(["where is my parcel?"])[0].top(3)  # doctest: +SKIP
        """
        texts = self._check(texts)
        if self.architecture is None:
            raise ConfigError(
                "explain needs the model's family: load the predictor with "
                "Predictor.from_run, or pass architecture= (e.g. 'lstm.v1')"
            )
        family = family_of(self.architecture)
        with self._explain_lock:
            if self._explainer is None:
                torch_model = self.run.model if self.run and self.backend == "onnx" else self.model
                if isinstance(torch_model, OnnxModule):
                    raise ConfigError("explain needs the PyTorch model, not only model.onnx")
                self._explainer = shadow_copy(torch_model)
            explanations = explain(
                self._explainer,
                self.encoder,
                family,
                self.labels,
                texts,
                multi_label=self.multi_label,
                target=target,
                n_steps=n_steps,
            )
        # the probability this predictor reports (calibrated), not the raw model's
        probs = self.predict_proba(texts)
        return [
            replace(e, probability=float(row[self.labels.index(e.label)]))
            for e, row in zip(explanations, probs, strict=True)
        ]
