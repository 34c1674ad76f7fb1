"""Label-preserving augmentation of token-id sequences, applied on the fly during training.

Random token deletion and adjacent swaps, drawn afresh for every batch from a seeded
generator, so each epoch sees a slightly different version of every text (a regulariser that
leaves the network unchanged). For CJK text a token is one character, so deletion works at
character level there. Special tokens at the ends (``[CLS]`` ... ``[SEP]``) can be protected.

For distillation (:mod:`fenlei.distil`) the teacher and the student tokenize differently, so
copies are made of the *text*: :func:`augment_text` deletes, masks and swaps words (a CJK
character counts as a word) and shuffles the order of n-gram blocks (Tang et al., 2019);
the teacher then labels each copy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from fenlei.config import AugmentConfig

__all__ = [
    "MASK",
    "augment_batch",
    "augment_text",
    "delete_tokens",
    "shuffle_ngrams",
    "swap_tokens",
    "text_units",
]

MASK = "[UNK]"  # every fenlei tokenizer keeps it as one special token: an unknown word
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_UNIT = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")


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


def text_units(text: str) -> list[str]:
    """The words of ``text``: runs of non-space characters, and each CJK character alone.

    Example:
        >>> text_units("很好 the film")
        ['很', '好', 'the', 'film']
    """
    return _UNIT.findall(text)


def _join(units: Sequence[str]) -> str:
    """Units back into text: a space between two units unless one is a CJK character."""
    out: list[str] = []
    for i, unit in enumerate(units):
        if i and not (_IS_CJK.fullmatch(unit) or _IS_CJK.fullmatch(units[i - 1])):
            out.append(" ")
        out.append(unit)
    return "".join(out)


def shuffle_ngrams(units: Sequence[str], rng: np.random.Generator, *, n: int) -> list[str]:
    """Cut ``units`` into blocks of ``n`` and shuffle the order of the blocks."""
    blocks = [list(units[i : i + n]) for i in range(0, len(units), max(1, n))]
    return [u for j in rng.permutation(len(blocks)) for u in blocks[j]]


def augment_text(
    text: str,
    rng: np.random.Generator,
    *,
    delete: float = 0.1,
    mask: float = 0.1,
    swap: float = 0.1,
    shuffle: float = 0.25,
) -> str:
    """A perturbed copy of ``text`` (word level; character level for CJK text).

    Each word is dropped with chance ``delete`` or replaced by :data:`MASK` with chance
    ``mask``; neighbours swap with chance ``swap``; with chance ``shuffle`` the text is cut
    into blocks of 2-4 words whose order is shuffled. At least one word is kept.

    Example:
        >>> augment_text("a b c", np.random.default_rng(0), delete=0, mask=0, swap=0, shuffle=0)
        'a b c'
    """
    units = text_units(text)
    if not units:
        return text
    kept = [MASK if rng.random() < mask else u for u in units if rng.random() >= delete]
    kept = kept or [units[int(rng.integers(len(units)))]]
    for i in range(len(kept) - 1):
        if rng.random() < swap:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
    if rng.random() < shuffle:
        kept = shuffle_ngrams(kept, rng, n=int(rng.integers(2, 5)))
    return _join(kept)
