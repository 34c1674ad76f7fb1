"""The bag models' fused table step: torch's math on torch's optimizer state, and only where
it covers the model and the run."""

from __future__ import annotations

import pytest
import torch

from fenlei.config import load_config
from fenlei.models import ModelSpec, build_model, family_of
from fenlei.train import fit
from fenlei.train.loop import _optimizers
from fenlei.train.table_step import FusedTableStep, fused_table_step
from tests.train.test_fit import LINEAR, _Toy


@pytest.fixture(scope="module")
def toy() -> _Toy:
    return _Toy(load_config("linear", [*LINEAR, "train.epochs=3"]))


def _fit(toy: _Toy, fused: bool) -> torch.nn.Module:
    cfg = toy.cfg.train.model_copy(update={"fused_table": fused})
    return fit(toy.model(), toy.family, toy.data, toy.dev, cfg).model


def test_the_fused_step_trains_the_table_as_torch_does(toy: _Toy) -> None:
    # 3 epochs of 10 steps; only the order of float sums differs between the two paths
    fused, reference = _fit(toy, True), _fit(toy, False)
    start = toy.model().embed.weight
    moved = (reference.embed.weight - start).abs().max()
    assert moved > 0.1  # the table did train
    assert torch.allclose(fused.embed.weight, reference.embed.weight, atol=1e-5)
    assert torch.allclose(fused.head.weight, reference.head.weight, atol=1e-5)
    assert torch.allclose(fused.head.bias, reference.head.bias, atol=1e-5)


def test_the_fused_step_keeps_torchs_optimizer_state(toy: _Toy) -> None:
    """Checkpoints hold torch's Adagrad state; the fused step writes that state."""
    states = []
    for fused in (True, False):
        model = toy.model()
        cfg = toy.cfg.train.model_copy(update={"fused_table": fused, "epochs": 1})
        optimizers = _optimizers(model, cfg)
        step = fused_table_step(
            model,
            toy.family,
            cfg,
            optimizers,
            device=torch.device("cpu"),
            mixed_precision=False,
            distributed=False,
        )
        assert (step is not None) == fused
        ids, mask, target = toy.data.batch(list(range(32)), seed=(0,))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        logits = step.logits(ids, mask) if step is not None else model(ids, mask)
        toy_loss = torch.nn.functional.cross_entropy(logits, target.hard)
        toy_loss.backward()  # type: ignore[no-untyped-call]
        for opt in optimizers:
            opt.step()
        if step is not None:
            step.update()
        states.append(optimizers[1].state[model.embed.weight])
    fused_state, torch_state = states
    assert float(fused_state["step"]) == float(torch_state["step"]) == 1.0
    assert torch.count_nonzero(torch_state["sum"]) > 0
    assert torch.allclose(fused_state["sum"], torch_state["sum"], rtol=1e-5, atol=1e-9)


def _step_for(toy: _Toy, overrides: list[str], **context: bool) -> FusedTableStep | None:
    cfg = load_config("linear", [*LINEAR, *overrides])
    model = build_model(
        cfg.model,
        ModelSpec(vocab_size=toy.encoder.vocab_size, pad_id=toy.encoder.pad_id, n_outputs=2),
        vocab=toy.encoder.tokenizer.get_vocab(),
        train_ids=toy.ids,
    )
    family = family_of(cfg.model.architecture)
    return fused_table_step(
        model,
        family,
        cfg.train,
        _optimizers(model, cfg.train),
        device=torch.device("cpu"),
        mixed_precision=context.get("mixed_precision", False),
        distributed=context.get("distributed", False),
    )


def test_the_fused_step_applies_only_where_it_covers(toy: _Toy) -> None:
    assert isinstance(_step_for(toy, []), FusedTableStep)
    assert _step_for(toy, ["train.fused_table=false"]) is None
    assert _step_for(toy, ["model.char_ngram_min=3"]) is None  # a second, weighted bag
    assert _step_for(toy, ["train.sparse_optimizer=adam"]) is None
    assert _step_for(toy, ["train.sparse_optimizer=sgd"]) is None
    assert _step_for(toy, [], mixed_precision=True) is None
    assert _step_for(toy, [], distributed=True) is None  # DDP averages gradients it never gets
