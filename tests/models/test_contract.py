"""One contract suite over every registered model family (see STYLE.md, convention 15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fenlei.classifier import TextClassifier
from fenlei.config import load_config
from fenlei.errors import NotFittedError
from fenlei.models import REGISTRY, ModelSpec, build_model
from tests.conftest import FAMILIES

TWENTY = [
    ("where is my parcel", "delivery_status"),
    ("my package has not arrived yet", "delivery_status"),
    ("track my order please", "delivery_status"),
    ("快递到哪里了", "delivery_status"),
    ("物流一直没更新", "delivery_status"),
    ("I want a refund", "refund"),
    ("give me my money back", "refund"),
    ("refund the broken kettle", "refund"),
    ("我要退款", "refund"),
    ("钱什么时候退回来", "refund"),
    ("you are great, thanks", "praise"),
    ("amazing service, love it", "praise"),
    ("best shop ever", "praise"),
    ("客服态度很好，点赞", "praise"),
    ("非常满意，谢谢", "praise"),
    ("when do you open", "opening_hours"),
    ("are you open on sunday", "opening_hours"),
    ("closing time today?", "opening_hours"),
    ("你们几点开门", "opening_hours"),
    ("周末营业吗", "opening_hours"),
]
TEXTS = [t for t, _ in TWENTY]
LABELS = [lab for _, lab in TWENTY]


def test_every_family_is_covered() -> None:
    assert sorted(REGISTRY) == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shape(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    preset, overrides = family_settings(family)
    cfg = load_config(preset, overrides)
    model = build_model(cfg.model, ModelSpec(vocab_size=800, pad_id=0, n_outputs=5)).eval()
    ids = torch.randint(1, 800, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    assert model(ids, mask).shape == (3, 5)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_transformer_dir):  # type: ignore[no-untyped-def]
    from tests.conftest import family_overrides

    models = {}
    for family in FAMILIES:
        preset, overrides = family_overrides(family, tiny_transformer_dir)
        overrides += ["train.epochs=40", "train.patience=none", "encoder.min_frequency=1"]
        run_dir = tmp_path_factory.mktemp(family.replace(".", "_"))
        clf = TextClassifier(preset, overrides=overrides, run_dir=run_dir)
        models[family] = clf.fit(TEXTS, LABELS, X_dev=TEXTS, y_dev=LABELS)
    return models


@pytest.mark.parametrize("family", FAMILIES)
def test_overfits_twenty_examples(family: str, fitted) -> None:  # type: ignore[no-untyped-def]
    assert fitted[family].score(TEXTS, LABELS) >= 0.95


@pytest.mark.parametrize("family", FAMILIES)
def test_probabilities_identical_after_save_and_load(family: str, fitted, tmp_path) -> None:  # type: ignore[no-untyped-def]
    clf = fitted[family]
    saved = clf.save(tmp_path / "saved")
    loaded = TextClassifier.load(saved)
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS), clf.predict_proba(TEXTS))
    assert list(loaded.classes_) == list(clf.classes_)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_one_by_one(family: str, fitted) -> None:  # type: ignore[no-untyped-def]
    clf = fitted[family]
    batch = clf.predict_proba(TEXTS)
    single = np.vstack([clf.predict_proba([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, single, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_sum_to_one(family: str, fitted) -> None:  # type: ignore[no-untyped-def]
    probs = fitted[family].predict_proba(TEXTS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs.shape == (20, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_before_fit_raises(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    preset, overrides = family_settings(family)
    with pytest.raises(NotFittedError, match="not fitted"):
        TextClassifier(preset, overrides=overrides).predict(["hello"])
