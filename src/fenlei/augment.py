"""Label-preserving augmentation of token-id sequences, applied on the fly during training.

Random token deletion and adjacent swaps, drawn afresh for every batch from a seeded
generator, so each epoch sees a slightly different version of every text (a regulariser that
leaves the network unchanged). For CJK text a token is one character, so deletion works at
character level there. Special tokens at the ends (``[CLS]`` ... ``[SEP]``) can be protected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fenlei.config import AugmentConfig

__all__ = ["augment_batch", "delete_tokens", "swap_tokens"]


def delete_tokens(
    ids: Sequence[int], rate: float, rng: np.random.Generator, *, protect: int = 0
) -> list[int]:
    """Drop each token with probability ``rate`` (never all of them, never protected ends)."""
    ids = list(ids)
    if rate <= 0 or len(ids) <= 2 * protect + 1:
        return ids
    head, body, tail = ids[:protect], ids[protect : len(ids) - protect], ids[len(ids) - protect :]
    keep = rng.random(len(body)) >= rate
    if not keep.any():
        keep[rng.integers(len(body))] = True
    return head + [t for t, k in zip(body, keep, strict=True) if k] + tail


def swap_tokens(
    ids: Sequence[int], rate: float, rng: np.random.Generator, *, protect: int = 0
) -> list[int]:
    """Swap each token with its right neighbour with probability ``rate``."""
    ids = list(ids)
    if rate <= 0:
        return ids
    for i in range(protect, len(ids) - protect - 1):
        if rng.random() < rate:
            ids[i], ids[i + 1] = ids[i + 1], ids[i]
    return ids


def augment_batch(
    batch: Sequence[Sequence[int]],
    cfg: AugmentConfig,
    seed: tuple[int, ...],
    *,
    protect: int = 0,
) -> list[list[int]]:
    """Augmented copies of a batch of id lists; the same ``seed`` gives the same result.

    Example:
        >>> augment_batch([[5, 6, 7, 8]], AugmentConfig(delete=0.0), (1, 2))
        [[5, 6, 7, 8]]
    """
    rng = np.random.default_rng(seed)
    out = []
    for ids in batch:
        new = delete_tokens(ids, cfg.delete, rng, protect=protect)
        out.append(swap_tokens(new, cfg.swap, rng, protect=protect))
    return out
