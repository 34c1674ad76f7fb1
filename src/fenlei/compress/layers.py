"""Transformer layer dropping: keep K of the encoder's layers, recover by distillation.

A transformer run is cut down by keeping ``K`` of its encoder's layers, evenly spread from the
first (:func:`fenlei.models.transformer.kept_layers`; for half, every other layer, as
DistilBERT initialises its student), and recovered with a short distillation from the unpruned
model (:func:`fenlei.distil.distil`): the source labels the training texts and augmented
copies of them, and the cut-down model — which starts from the source's *fine-tuned* weights,
not the pretrained ones — trains on those probabilities and the true labels for
``epochs`` epochs. Batch-1 time falls roughly in proportion to the layers dropped.

The fine-tuned encoder is handed to the student as a pretrained folder (its HF weights and
the run's tokenizer) in a temporary folder; the student's ``config.json`` then names the
source's own ``model.pretrained`` again with ``model.keep_layers=K``, so training from that
config reproduces the architecture (from the pretrained weights), and ``metrics.json``
records where the weights came from.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fenlei.artifact import update_manifest, verify_manifest
from fenlei.config import RunConfig, with_overrides
from fenlei.data import Dataset
from fenlei.distil import distil
from fenlei.errors import ConfigError
from fenlei.files import atomic_write_text
from fenlei.models.transformer import kept_layers
from fenlei.predict import Predictor
from fenlei.progress import ProgressReporter

__all__ = ["LayerDrop", "drop_and_recover", "encoder_layers"]

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class LayerDrop:
    """What :func:`drop_and_recover` did: the student's run folder, the layers kept (of how
    many) and the distillation's own record (teacher and student dev scores, transfer set)."""

    run_dir: Path
    kept: list[int]
    total: int
    recovery: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` form (under ``compress.layers``)."""
        return {"kept": self.kept, "of": self.total, "recovery": self.recovery}


def _hf_model(source: Predictor) -> Any:
    run = source.run
    assert run is not None
    model: Any = run.model  # a transformer family's module (checked by the caller)
    return model.hf_model()


def encoder_layers(source: Predictor) -> int:
    """How many encoder layers the source transformer has."""
    return int(_hf_model(source).config.num_hidden_layers)


def _write_pretrained(source: Predictor, source_dir: Path, folder: Path) -> None:
    """The source's fine-tuned HF model and its tokenizer, as a pretrained folder."""
    _hf_model(source).save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(source_dir / TOKENIZER_FILE, folder / TOKENIZER_FILE)


def _student_config(cfg: RunConfig, pretrained: Path, keep: int, epochs: int) -> RunConfig:
    overrides = [f"model.keep_layers={keep}", f"train.epochs={epochs}"]
    student = with_overrides(cfg, overrides)
    # a path is not an override value (it could parse as JSON): set it directly
    return student.model_copy(
        update={"model": student.model.model_copy(update={"pretrained": str(pretrained)})}
    )


def _name_the_real_encoder(student_dir: Path, pretrained: str | None) -> None:
    """The student's ``config.json`` names the source's pretrained encoder, not the
    temporary folder its weights came from (gone after this step)."""
    path = student_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model"]["pretrained"] = pretrained
    manifest = verify_manifest(student_dir)
    atomic_write_text(path, json.dumps(config, indent=1, ensure_ascii=False) + "\n")
    update_manifest(student_dir, manifest, "config.json")


def drop_and_recover(
    source_dir: Path,
    source: Predictor,
    keep: int,
    *,
    train: Dataset,
    dev: Dataset,
    work: Path,
    epochs: int = 1,
    progress: ProgressReporter | None = None,
) -> LayerDrop:
    """Train, in ``work``, the source transformer cut to ``keep`` encoder layers, distilled
    from the source on ``train`` (dev: ``dev``) for ``epochs`` epochs.

    Raises:
        ConfigError: ``keep`` is not in 1..(layers - 1), or the encoder is not BERT-style.
    """
    run = source.run
    assert run is not None
    total = encoder_layers(source)
    kept = kept_layers(total, keep)
    if keep == total:
        raise ConfigError(f"--prune layers={keep} keeps all {total} layers; keep fewer")
    pretrained = work / "fine-tuned"
    _write_pretrained(source, source_dir, pretrained)
    cfg = _student_config(run.config, pretrained, keep, epochs)
    logger.info("keeping layers %s of %d; recovering by distillation", kept, total)
    result = distil(
        [source_dir], data=train, dev=dev, out=work / "student", student=cfg, progress=progress
    )
    _name_the_real_encoder(result.run_dir, run.config.model.pretrained)
    metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    recovery = {"epochs": epochs, "initialised_from": str(source_dir), **metrics["distillation"]}
    return LayerDrop(result.run_dir, kept, total, recovery)
