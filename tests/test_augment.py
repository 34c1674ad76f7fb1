"""On-the-fly token augmentation: deletion, swaps, protection of special tokens, seeding."""

from __future__ import annotations

import numpy as np

from fenlei.augment import augment_batch, delete_tokens, swap_tokens
from fenlei.config import AugmentConfig, load_config


def test_delete_keeps_order_and_at_least_one_token() -> None:
    rng = np.random.default_rng(0)
    ids = list(range(100))
    kept = delete_tokens(ids, 0.3, rng)
    assert kept == sorted(kept) and 50 < len(kept) < 90
    assert len(delete_tokens([7, 8, 9], 0.999, rng)) >= 1


def test_protected_ends_survive() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        out = delete_tokens([101, 5, 6, 7, 8, 102], 0.9, rng, protect=1)
        assert out[0] == 101 and out[-1] == 102
        swapped = swap_tokens([101, 5, 6, 7, 8, 102], 0.9, rng, protect=1)
        assert (
            swapped[0] == 101
            and swapped[-1] == 102
            and sorted(swapped) == sorted([101, 5, 6, 7, 8, 102])
        )


def test_same_seed_same_batch() -> None:
    cfg = AugmentConfig(delete=0.2, swap=0.1)
    batch = [list(range(30)), list(range(50, 70))]
    assert augment_batch(batch, cfg, (13, 4)) == augment_batch(batch, cfg, (13, 4))
    assert augment_batch(batch, cfg, (13, 4)) != augment_batch(batch, cfg, (13, 5))
    assert augment_batch(batch, AugmentConfig(), (1,)) == batch


def test_training_with_augmentation(bundled, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fenlei.pipeline import prepare_splits, train_run

    cfg = load_config(
        "linear",
        ["augment.delete=0.1", "augment.swap=0.05", "train.epochs=2", "model.buckets=1000"],
    )
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    result = train_run(cfg, splits, tmp_path / "run")
    assert result.metrics.dev.accuracy > 0.2
