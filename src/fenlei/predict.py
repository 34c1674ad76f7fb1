"""Inference: :class:`Predictor` turns texts into labels and probabilities.

Built from a run folder with :meth:`Predictor.from_run` (manifest verified) or from objects.
Texts are encoded, grouped by length and run in batches on PyTorch, or on ONNX Runtime
when the run folder holds ``model.onnx`` (``backend="auto"``; see :mod:`fenlei.onnx`), with
the same outputs. Never imports training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fenlei.artifact import LoadedRun, load_run
from fenlei.errors import ArtifactError, ConfigError, DataError, MissingExtraError
from fenlei.models import batched_logits, to_probs
from fenlei.tokenize import Encoder

__all__ = ["BACKENDS", "DEVICES", "OnnxModule", "Prediction", "Predictor", "inference_device"]

BACKENDS = ("auto", "torch", "onnx")
DEVICES = ("auto", "cpu", "cuda")
ONNX_FILE = "model.onnx"


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


def inference_device(name: str) -> torch.device:
    """``"auto"`` (a CUDA GPU when torch sees one, else the CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        ConfigError: an unknown name, or ``"cuda"`` without a GPU that torch can use.
    """
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but torch sees no CUDA GPU here; use device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _backend_model(run: LoadedRun, backend: str, device: torch.device) -> nn.Module:
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
        return OnnxModule(path)
    return run.model


@dataclass(frozen=True)
class Prediction:
    """One text's result: best label(s), its score and every label's probability."""

    label: str
    score: float
    probs: dict[str, float]
    labels: tuple[str, ...] = ()

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable labels with their probabilities."""
        return sorted(self.probs.items(), key=lambda kv: -kv[1])[:k]


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
        threshold: float = 0.5,
        batch_size: int = 256,
        run: LoadedRun | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.encoder = encoder
        self.device = torch.device(device)
        if isinstance(model, OnnxModule) and self.device.type != "cpu":
            raise ConfigError("the ONNX backend runs on the CPU; pass device='cpu'")
        self.model = model.eval() if isinstance(model, OnnxModule) else model.to(self.device).eval()
        self.labels = tuple(labels)
        self.multi_label = multi_label
        self.threshold = threshold
        self.batch_size = batch_size
        self.run = run
        self.backend: str = getattr(model, "backend", "torch")
        torch.set_flush_denormal(True)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, backend: str = "auto", device: str = "auto"
    ) -> Predictor:
        """Load a run folder (manifest checked).

        Args:
            run_dir: the run folder.
            backend: ``"torch"``, ``"onnx"`` (needs ``model.onnx``) or ``"auto"`` (ONNX
                Runtime when ``model.onnx`` exists and onnxruntime is installed, on the CPU).
            device: ``"auto"`` (a CUDA GPU when there is one), ``"cpu"`` or ``"cuda"``; a GPU
                runs the PyTorch model.

        Raises:
            ArtifactError: the run folder is missing, incomplete or altered.
            ConfigError: ``device="cuda"`` without a GPU, or the ONNX backend on a GPU.
        """
        where = inference_device(device)
        run = load_run(run_dir)
        return cls(
            run.encoder,
            _backend_model(run, backend, where),
            run.labels,
            multi_label=run.multi_label,
            threshold=run.config.eval.threshold,
            batch_size=run.config.eval.batch_size,
            run=run,
            device=where,
        )

    def _check(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise DataError("pass a list of texts, not a single string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text {i} is {type(text).__name__}, not a string")
        return list(texts)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw model outputs (N, n_outputs)."""
        ids = self.encoder.encode_ids(self._check(texts))
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = batched_logits(
            self.model,
            ids,
            pad_id=self.encoder.pad_id,
            batch_size=self.batch_size,
            device=self.device,
        )
        return out.numpy()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities (N, n_labels), columns in ``self.labels`` order.

        Each row sums to 1 for single-label tasks; for multi-label each entry is independent.
        """
        logits = torch.from_numpy(self.logits(texts))
        if logits.shape[0] == 0:
            return logits.numpy()
        return to_probs(logits, multi_label=self.multi_label).numpy()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Best label (or labels above the threshold, for multi-label) for every text."""
        probs = self.predict_proba(texts)
        results = []
        for row in probs:
            best = int(row.argmax())
            chosen = (
                tuple(self.labels[j] for j in np.flatnonzero(row >= self.threshold))
                if self.multi_label
                else (self.labels[best],)
            )
            results.append(
                Prediction(
                    label=self.labels[best],
                    score=float(row[best]),
                    probs={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
                    labels=chosen,
                )
            )
        return results
