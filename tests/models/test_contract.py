"""One contract suite over every registered model family (see STYLE.md, convention 15).

The checks every family passes run over :data:`~fenlei.models.REGISTRY`; the capability checks
read the family's :class:`~fenlei.models.Family` record and skip a family that does not declare
the capability, so a new family or hook needs no hand-kept list here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fenlei.artifact import load_run
from fenlei.classifier import TextClassifier
from fenlei.config import load_config
from fenlei.errors import NotFittedError
from fenlei.models import ModelSpec, build_model, family_of
from tests.conftest import FAMILIES, TINY

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


def test_every_family_has_tiny_settings() -> None:
    assert sorted(TINY) == FAMILIES


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 7) token ids below 800 and a mask with one shorter row."""
    ids = torch.randint(1, 800, (3, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return ids, mask


def _build(family: str, settings, **model_update: object) -> nn.Module:  # type: ignore[no-untyped-def]
    preset, overrides = settings(family)
    cfg = load_config(preset, overrides).model
    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=800, pad_id=0, n_outputs=5)
    return build_model(cfg.model_copy(update=model_update), spec).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shape(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    model = _build(family, family_settings)
    assert model(*_batch()).shape == (3, 5)


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


# ---------------------------------------------------------------- capabilities


@pytest.mark.parametrize("family", FAMILIES)
def test_token_embedding_is_the_table_the_model_uses(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    hook = family_of(family).token_embedding
    if hook is None:
        pytest.skip(f"{family} declares no token embedding")
    model = _build(family, family_settings)
    table = hook(model)
    assert isinstance(table, nn.Embedding | nn.EmbeddingBag)
    assert any(table is m for m in model.modules())
    before = model(*_batch())
    with torch.no_grad():
        table.weight.add_(torch.randn_like(table.weight))
    assert not torch.allclose(model(*_batch()), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_trainable_parameter_gets_a_gradient(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    # DistributedDataParallel (fenlei train --ray) refuses a trainable parameter that one
    # backward pass leaves without a gradient (transformer.v1's unused [CLS] pooler did)
    model = _build(family, family_settings)
    model.train()
    model(*_batch()).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("family", FAMILIES)
def test_freezing_stops_the_token_embedding(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    found = family_of(family)
    if "freeze_embeddings" not in found.reads:
        pytest.skip(f"{family} does not read model.freeze_embeddings")
    assert found.token_embedding is not None
    model = _build(family, family_settings, freeze_embeddings=True)
    table = found.token_embedding(model)
    assert table is not None and not table.weight.requires_grad
    assert any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_changes_no_result(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    hook = family_of(family).gradient_checkpointing
    if hook is None:
        pytest.skip(f"{family} does not support gradient checkpointing")
    model = _build(family, family_settings)
    ids, mask = _batch()

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)  # dropout draws the same masks, and replays them when recomputing
        loss = model.train()(ids, mask).logsumexp(dim=1).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eval_before = model.eval()(ids, mask)
    loss, grads = step()
    hook(model)
    torch.testing.assert_close(model.eval()(ids, mask), eval_before)
    loss_ckpt, grads_ckpt = step()
    torch.testing.assert_close(loss_ckpt, loss)
    assert len(grads_ckpt) == len(grads)
    for g_ckpt, g in zip(grads_ckpt, grads, strict=True):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_cpu_hook_restores_the_model(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    hook = family_of(family).bf16_cpu
    if hook is None:
        pytest.skip(f"{family} trains in fp32 on CPU")
    model = _build(family, family_settings)
    batch = _batch()
    before = model(*batch)
    with hook(model):
        torch.testing.assert_close(model(*batch), before, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(*batch).shape == before.shape
    torch.testing.assert_close(model(*batch), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_table_is_declared(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    model = _build(family, family_settings)
    sparse = any(getattr(m, "sparse", False) for m in model.modules())
    assert sparse == family_of(family).sparse_table


HEADS = ("head.", "model.classifier.")


@pytest.mark.parametrize("family", FAMILIES)
def test_soft_targets_train_head_and_embeddings(family: str, family_settings) -> None:  # type: ignore[no-untyped-def]
    found = family_of(family)
    if not found.soft_targets:
        pytest.skip(f"{family} learns from hard labels only")
    if found.trains_by == "solver":  # weighted examples, not gradients: tests/train/test_fit.py
        pytest.skip(f"{family} fits soft targets by solving, not by gradient steps")
    model = _build(family, family_settings).train()
    targets = torch.softmax(torch.randn(3, 5, generator=torch.Generator().manual_seed(2)), dim=1)
    loss = nn.functional.cross_entropy(model(*_batch()), targets)  # soft-target cross-entropy
    loss.backward()
    # the head: fenlei's own (head.*) or transformers' (transformer.v2: model.classifier.*)
    head = [p for name, p in model.named_parameters() if name.startswith(HEADS)]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    if found.token_embedding is not None:
        assert found.token_embedding(model).weight.grad is not None  # sparse for linear


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_extras_round_trip(family: str, fitted, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = load_run(fitted[family].save(tmp_path / "saved"))
    extras = family_of(family).spec_extras(run.model)
    if not extras:
        pytest.skip(f"{family} learns nothing of its shape while built")
    saved = json.loads(json.dumps(extras))  # as model_config.json holds them
    loaded = {key: getattr(run.spec, key) for key in extras}
    assert json.loads(json.dumps(loaded)) == saved  # (a tuple saves as a list)
    rebuilt = build_model(run.config.model, run.spec)
    assert json.loads(json.dumps(family_of(family).spec_extras(rebuilt))) == saved
    shapes = {k: v.shape for k, v in run.model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_keeps_the_argmax(family: str, fitted) -> None:  # type: ignore[no-untyped-def]
    from fenlei.calibrate import Calibration
    from fenlei.predict import Predictor

    predictor = Predictor.from_run(fitted[family].run_dir_, backend="torch")
    base = predictor.predict_proba(TEXTS)
    for temperature in (0.25, 1.7, 6.0):
        scaled = predictor.calibrated(Calibration(temperature=temperature)).predict_proba(TEXTS)
        np.testing.assert_array_equal(scaled.argmax(axis=1), base.argmax(axis=1))
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0, atol=1e-5)
        # a temperature below 1 sharpens the distribution, above 1 flattens it
        gain = scaled.max(axis=1) - base.max(axis=1)
        assert (gain >= -1e-6).all() if temperature < 1 else (gain <= 1e-6).all()
