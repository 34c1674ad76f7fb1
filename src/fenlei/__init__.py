"""fenlei (分类): from a labelled table of text to a trained, evaluated, served classifier.

The public API, imported lazily so ``import fenlei`` stays fast::

    from fenlei import TextClassifier
    clf = TextClassifier("linear").fit(texts, labels)

or step by step: ``load_table`` -> ``prepare_splits`` -> ``train_run`` -> ``Predictor`` ->
``evaluate``. ``build_ensemble`` combines run folders into one; ``distil`` trains a student
on a teacher's probabilities; ``open_predictor`` opens a run folder of any kind;
``export_hf`` writes a ``transformer.v2`` run as a Hugging Face folder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fenlei._version import __version__

if TYPE_CHECKING:
    from fenlei.audit import find_label_issues
    from fenlei.classifier import TextClassifier
    from fenlei.combine import build_ensemble
    from fenlei.compress import compress
    from fenlei.config import RunConfig, load_config
    from fenlei.data import Dataset, bundled_dataset_path, load_table
    from fenlei.distil import distil
    from fenlei.errors import ArtifactError, ConfigError, DataError, FenleiError
    from fenlei.evaluate import evaluate
    from fenlei.hf import export_hf
    from fenlei.loader import open_predictor
    from fenlei.pipeline import prepare_splits, train_run
    from fenlei.predict import Prediction, Predictor
    from fenlei.tuning import tune

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "Dataset",
    "FenleiError",
    "Prediction",
    "Predictor",
    "RunConfig",
    "TextClassifier",
    "__version__",
    "build_ensemble",
    "bundled_dataset_path",
    "compress",
    "distil",
    "evaluate",
    "export_hf",
    "find_label_issues",
    "load_config",
    "load_table",
    "open_predictor",
    "prepare_splits",
    "train_run",
    "tune",
]

_HOME = {
    "ArtifactError": "fenlei.errors",
    "ConfigError": "fenlei.errors",
    "DataError": "fenlei.errors",
    "FenleiError": "fenlei.errors",
    "Dataset": "fenlei.data",
    "bundled_dataset_path": "fenlei.data",
    "load_table": "fenlei.data",
    "RunConfig": "fenlei.config",
    "load_config": "fenlei.config",
    "Prediction": "fenlei.predict",
    "Predictor": "fenlei.predict",
    "TextClassifier": "fenlei.classifier",
    "prepare_splits": "fenlei.pipeline",
    "train_run": "fenlei.pipeline",
    "tune": "fenlei.tuning",
    "evaluate": "fenlei.evaluate",
    "export_hf": "fenlei.hf",
    "build_ensemble": "fenlei.combine",
    "compress": "fenlei.compress",
    "distil": "fenlei.distil",
    "open_predictor": "fenlei.loader",
    "find_label_issues": "fenlei.audit",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'fenlei' has no attribute {name!r}")
