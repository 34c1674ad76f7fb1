"""TextClassifier is a scikit-learn estimator: clone, cross-validation, grid search, Pipeline.

Tiny linear settings on the bundled support intents (12 labels), one or two epochs.
"""

from __future__ import annotations

import gc
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

from fenlei.classifier import TextClassifier, config_overrides
from fenlei.config import load_config
from fenlei.data import Dataset
from fenlei.errors import NotFittedError

TINY = (
    "train.threads=1",
    "eval.plots=false",
    "encoder.vocab_size=600",
    "model.buckets=2000",
    "model.embedding_dim=16",
    "train.lr=0.02",
)


@pytest.fixture(scope="module")
def texts_labels(bundled: dict[str, Dataset]) -> tuple[list[str], list[str]]:
    train = bundled["train"]
    return train.texts, [labels[0] for labels in train.labels]


def tiny(**settings: object) -> TextClassifier:
    return TextClassifier("linear", overrides=TINY, **{"epochs": 1, **settings})  # type: ignore[arg-type]


def _lower(texts: list[str]) -> list[str]:
    return [t.lower() for t in texts]


def test_settings_are_stored_untouched_and_cloned() -> None:
    overrides = ("train.lr=0.05",)
    clf = TextClassifier("lstm", overrides=overrides, epochs=3, seed=7)
    assert clf.overrides is overrides
    params = clf.get_params()
    assert params["preset"] == "lstm" and params["epochs"] == 3 and params["lr"] is None
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == params
    assert is_classifier(clf)
    tags = get_tags(clf)
    assert tags.input_tags.string and tags.input_tags.one_d_array
    assert not tags.input_tags.two_d_array


def test_shortcuts_come_after_overrides() -> None:
    clf = TextClassifier("linear", overrides=("train.epochs=9",), epochs=2, seed=5, max_length=64)
    cfg = clf.config()
    assert cfg.train.epochs == 2 and cfg.train.seed == 5 and cfg.data.split_seed == 5
    assert cfg.encoder.max_length == 64
    assert TextClassifier("linear").config() == load_config("linear")


def test_predict_before_fit_raises() -> None:
    clf = tiny()
    with pytest.raises(NotFittedError, match="not fitted"):
        clf.predict(["hello"])
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(clf)


def test_cross_val_score_three_folds(texts_labels: tuple[list[str], list[str]]) -> None:
    X, y = texts_labels
    scores = cross_val_score(tiny(epochs=5), X, y, cv=3)
    assert scores.shape == (3,)
    assert all(0.3 < s <= 1.0 for s in scores)  # 12 labels: chance is about 0.08


def test_grid_search_over_epochs(texts_labels: tuple[list[str], list[str]]) -> None:
    X, y = texts_labels
    search = GridSearchCV(tiny(), {"epochs": [1, 5]}, cv=2).fit(X, y)
    assert search.best_params_["epochs"] in (1, 5)
    assert search.best_estimator_.config().train.epochs == search.best_params_["epochs"]
    check_is_fitted(search.best_estimator_)
    assert len(search.predict(X[:5])) == 5


def test_pipeline_lowercases_then_classifies(texts_labels: tuple[list[str], list[str]]) -> None:
    X, y = texts_labels
    pipe = Pipeline([("lower", FunctionTransformer(_lower)), ("clf", tiny(epochs=5))])
    pipe.fit(X, y)
    assert pipe.predict(["WHERE IS MY PARCEL?"])[0] in set(y)
    assert pipe.predict_proba(X[:3]).shape == (3, 12)
    assert pipe.score(X, y) > 0.3
    clf = pipe.named_steps["clf"]
    assert list(clf.classes_) == sorted(set(y))


def test_temporary_run_folder_is_removed(
    texts_labels: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    X, y = texts_labels
    clf = tiny().fit(X, y)
    first = clf.run_dir_
    assert (first / "manifest.json").is_file()
    clf.fit(X, y)
    assert not first.exists()  # a refit removes the previous temporary folder
    second = clf.run_dir_
    old_umask = os.umask(0o022)
    try:
        saved = clf.save(tmp_path / "kept")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o755  # a mkdir's mode, not mkdtemp's 0700
    assert stat.S_IMODE((saved / "manifest.json").stat().st_mode) == 0o644
    del clf
    gc.collect()
    assert not second.exists()  # collected: its folder is gone, the saved copy stays
    again = TextClassifier.load(saved)
    assert again.predict(["where is my parcel?"])[0] in set(y)


def test_given_run_dir_is_kept(texts_labels: tuple[list[str], list[str]], tmp_path: Path) -> None:
    X, y = texts_labels
    clf = tiny(run_dir=tmp_path / "run").fit(X, y)
    del clf
    gc.collect()
    assert (tmp_path / "run" / "manifest.json").is_file()


def test_load_keeps_the_overrides(
    texts_labels: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    X, y = texts_labels
    clf = tiny(run_dir=tmp_path / "run", lr=0.03, seed=3).fit(X, y)
    loaded = TextClassifier.load(tmp_path / "run")
    assert loaded.preset == "linear"
    assert "train.lr=0.03" in loaded.overrides and "train.epochs=1" in loaded.overrides
    assert loaded.config() == clf.config()
    assert clone(loaded).config() == clf.config()
    np.testing.assert_allclose(loaded.predict_proba(X[:4]), clf.predict_proba(X[:4]), atol=1e-6)


def test_config_overrides_round_trip() -> None:
    cfg = load_config("lstm", ["train.epochs=2", 'data.text_cols=["title", "body"]'])
    overrides = config_overrides(cfg)
    assert set(overrides) == {"train.epochs=2", 'data.text_cols=["title", "body"]'}
    assert load_config("lstm", list(overrides)) == cfg
    assert config_overrides(load_config("nbsvm")) == ()
