"""Training memory: gradients freed after each step; batch lengths rounded for oneDNN while
training under bf16 on CPU (fenlei.train.shapes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import fenlei.train.loop as loop_module
from fenlei.config import load_config
from fenlei.pipeline import prepare_splits, train_run
from fenlei.train.shapes import few_shapes, rounded_length


def test_rounded_length_steps() -> None:
    assert [rounded_length(n) for n in range(1, 9)] == list(range(1, 9))
    assert [rounded_length(n) for n in (9, 10, 11, 16, 17, 33, 100, 112, 113, 128, 129)] == [
        10, 10, 12, 16, 20, 40, 112, 112, 128, 128, 160,
    ]  # fmt: skip
    rounded = [rounded_length(n) for n in range(1, 513)]
    assert all(n <= r <= max(n, 1.25 * n) for n, r in zip(range(1, 513), rounded, strict=True))
    # 1-8, then four per doubling: 8 + 4 * 6 lengths up to 512 instead of 512
    assert len(set(rounded)) == 32


class _Echo(torch.nn.Module):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids, mask


def test_few_shapes_pads_ids_and_mask_up_to_the_limit() -> None:
    model = _Echo()
    ids, mask = torch.ones((2, 100), dtype=torch.long), torch.ones((2, 100), dtype=torch.long)
    with few_shapes(model, pad_id=7, limit=120, active=True):
        out_ids, out_mask = model(ids, mask)
        longer = torch.ones((2, 115), dtype=torch.long)
        assert model(longer, longer)[0].shape == (2, 120)  # 128, capped at the limit
        assert model(ids[:, :5], mask[:, :5])[0].shape == (2, 5)
    assert out_ids.shape == out_mask.shape == (2, 112)
    assert (out_ids[:, 100:] == 7).all() and (out_mask[:, 100:] == 0).all()
    assert torch.equal(out_ids[:, :100], ids) and torch.equal(out_mask[:, :100], mask)
    assert model(ids, mask)[0].shape == (2, 100)  # the hook is gone
    with few_shapes(model, pad_id=7, limit=120, active=False):
        assert model(ids, mask)[0].shape == (2, 100)


def test_rounded_batches_give_the_same_logits(tiny_transformer_dir: Path) -> None:
    from fenlei.models.transformer import TransformerClassifier

    torch.manual_seed(0)
    model = TransformerClassifier.from_pretrained(
        str(tiny_transformer_dir), n_outputs=3, dropout=0.0
    ).eval()
    ids = torch.randint(5, 300, (4, 37))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0  # a shorter text, already padded
    ids[1, 20:] = 0
    with torch.no_grad():
        exact = model(ids, mask)
        with few_shapes(model, pad_id=0, limit=64, active=True):
            rounded = model(ids, mask)  # runs as (4, 40)
    torch.testing.assert_close(rounded, exact, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("amx", "round_lengths", "rounded"),
    [(True, True, True), (True, False, False), (False, True, False)],
)
def test_loop_rounds_lengths_only_under_cpu_bf16(  # type: ignore[no-untyped-def]
    monkeypatch, bundled, tiny_transformer_dir: Path, tmp_path: Path, amx, round_lengths, rounded
) -> None:
    from fenlei.models.transformer import TransformerClassifier
    from tests.conftest import family_overrides

    monkeypatch.setattr(loop_module, "_cpu_has_native_bf16", lambda: amx)
    preset, overrides = family_overrides("transformer.v1", tiny_transformer_dir)
    flag = f"train.round_lengths={str(round_lengths).lower()}"
    # without the report, whose explanations and latency run the model after training
    cfg = load_config(preset, [*overrides, "train.epochs=1", flag, "eval.report=false"])
    rows = bundled["train"].examples  # a share of the bundled data keeps bf16 emulation quick
    train, dev = (replace(bundled["train"], examples=rows[i::6]) for i in (0, 1))
    splits = prepare_splits(cfg.data, train, dev)
    seen: list[int] = []
    forward = TransformerClassifier.forward

    def spy(self: TransformerClassifier, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen.append(int(ids.shape[1]))  # training and dev batches, as the model gets them
        return forward(self, ids, mask)

    monkeypatch.setattr(TransformerClassifier, "forward", spy)
    train_run(cfg, splits, tmp_path / "r")
    kept = [t for t in seen if t == rounded_length(t) or t == max(seen)]  # max: the cap
    assert (kept == seen) is rounded  # the bundled texts have lengths of every kind


def test_gradients_are_freed_after_each_step(  # type: ignore[no-untyped-def]
    monkeypatch, bundled, family_settings, tmp_path: Path
) -> None:
    from fenlei.models.lstm import LSTMClassifier

    held: list[int] = []  # parameters holding a gradient when dev is scored
    forward = LSTMClassifier.forward

    def spy(self: LSTMClassifier, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            held.append(sum(p.grad is not None for p in self.parameters()))
        return forward(self, ids, mask)

    monkeypatch.setattr(LSTMClassifier, "forward", spy)
    preset, overrides = family_settings("lstm.v1")
    cfg = load_config(preset, [*overrides, "train.epochs=2", "train.patience=none"])
    result = train_run(cfg, prepare_splits(cfg.data, bundled["train"], bundled["dev"]), tmp_path)
    assert held and not any(held)
    assert all(p.grad is None for p in result.predictor.model.parameters())


def test_inference_batches_hold_at_most_max_tokens() -> None:
    from fenlei.models import length_sorted_batches

    lengths = [128, 3, 128, 60, 7, 128, 64, 1]
    batches = length_sorted_batches(lengths, batch_size=4, max_tokens=256)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 256 for b in batches)
    assert [len(b) for b in batches] == [2, 2, 4]  # 128,128 | 128,64 | 60,7,3,1
    assert length_sorted_batches([500], batch_size=4, max_tokens=100) == [[0]]  # one at least
    assert [len(b) for b in length_sorted_batches(lengths, 4)] == [4, 4]  # no cap


def test_capped_scoring_gives_the_same_logits_and_stays_under_the_cap(
    tiny_transformer_dir: Path,
) -> None:
    from fenlei.models import batched_logits
    from fenlei.models.transformer import TransformerClassifier

    torch.manual_seed(0)
    model = TransformerClassifier.from_pretrained(
        str(tiny_transformer_dir), n_outputs=3, dropout=0.0
    ).eval()
    id_lists = [torch.randint(5, 300, (n,)).tolist() for n in (40, 3, 17, 40, 9, 25)]
    shapes: list[tuple[int, int]] = []
    forward = model.forward

    def spy(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(ids.shape))  # type: ignore[arg-type]
        return forward(ids, mask)

    whole = batched_logits(model, id_lists, pad_id=0)
    model.forward = spy  # type: ignore[method-assign]
    capped = batched_logits(model, id_lists, pad_id=0, max_tokens=64)
    torch.testing.assert_close(capped, whole, atol=1e-5, rtol=1e-5)
    assert len(shapes) > 1 and all(b * n <= 64 or b == 1 for b, n in shapes)


def test_transformer_families_cap_their_scoring_batches() -> None:
    from fenlei.models import REGISTRY

    capped = {name for name, family in REGISTRY.items() if family.batch_tokens is not None}
    assert capped == {"transformer.v1", "transformer.v2"}


@pytest.mark.parametrize("seed", range(5))
def test_dev_metrics_agree_with_scikit_learn(seed: int) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    from fenlei.train.state import accuracy_and_macro_f1

    rng = np.random.default_rng(seed)
    true = rng.integers(0, 5, 40)
    pred = np.where(rng.random(40) < 0.6, true, rng.integers(0, 7, 40))  # labels 5, 6: never true
    cases = [(true, pred), (true, np.zeros_like(true))]
    multi_true, multi_pred = rng.integers(0, 2, (30, 4)), rng.integers(0, 2, (30, 4))
    multi_true[:, 3] = 0  # a label nobody has
    cases += [(multi_true, multi_pred), (multi_true, np.zeros_like(multi_true))]
    for y, p in cases:
        accuracy, macro_f1 = accuracy_and_macro_f1(y, p)
        assert accuracy == pytest.approx(accuracy_score(y, p))
        assert macro_f1 == pytest.approx(f1_score(y, p, average="macro", zero_division=0))


def test_training_loads_neither_scikit_learn_nor_scipy() -> None:
    # they held 140 MB of a MiniLM run's peak memory (docs/benchmarks.md, "Training memory");
    # scoring, calibration and the report import them after training; numba (which imports
    # scipy, ~65 MB) only when a linear model's fused table step is built
    import subprocess
    import sys

    code = (
        "import sys, fenlei.pipeline, fenlei.cli, fenlei.train\n"
        "print(sorted(m for m in ('sklearn', 'scipy', 'pandas', 'numba') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
