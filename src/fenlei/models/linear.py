"""``linear.v2`` (and ``linear.v1``): a fastText-like bag of word, word-n-gram and character-n-gram
embeddings.

A text's vector is the mean, over its tokens and hashed token n-grams, of their embeddings;
a token's embedding is its own vector plus the mean of its character n-grams' vectors
(``<wo``, ``wor``, ``ord>`` ...), which is how fastText copes with typos and rare words.
Tokens are words or WordPiece pieces (one per CJK character). N-grams share one hash table.

The two versions differ only in the n-gram hash. v1 hashed token ids as ``a * P + b`` modulo a
prime: with ids below a few thousand (Chinese characters) and P close to a multiple of the
bucket count, distinct bigrams crowded into few buckets (ChnSentiCorp's 142k distinct
bigrams filled 29k of 200k buckets, where a random hash fills about 103k). v2 multiplies
the result by a second constant modulo the prime, which scatters them (kept for loading v1
run folders).

Built with the training texts' ids (:func:`occupied_buckets`), the table keeps a row only for
the hash buckets those texts use (``rows``); a buffer maps each bucket to its row, and a
bucket no training text uses maps to padding, so an n-gram never seen in training is left
out of the mean rather than adding an untrained vector. With the preset's 2M buckets,
sms_spam keeps 35k rows and IMDB 841k, and the smaller table is quicker to initialise, copy
and write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fenlei.models.compact import FeatureMap, Int8EmbeddingBag
from fenlei.models.family import BagTable, Builder, Family, TrainIds

if TYPE_CHECKING:
    from fenlei.config import ModelConfig
    from fenlei.models import ModelSpec

__all__ = [
    "LINEAR_V1",
    "LINEAR_V2",
    "BagOfNgrams",
    "bucket_row_map",
    "char_buckets",
    "char_ngram_table",
    "flat_ids",
    "fnv1a",
    "ngram_buckets",
    "occupied_buckets",
    "plain_bag",
    "point_char_table_at_rows",
    "renumber_char_table",
    "sorted_unique",
    "spread_over_tokens",
    "table_features",
    "token_blocks",
    "token_contributions",
    "token_ngram_features",
    "used_buckets",
]

_PRIME = 1_000_003
_MOD = 2_147_483_647  # 2**31 - 1: every product below stays under 2**62
_MIX = 1_597_334_677  # linear.v2's scrambling multiplier (any large value coprime to _MOD)


def fnv1a(text: str) -> int:
    """32-bit FNV-1a hash of the UTF-8 bytes (fastText's; stable across processes)."""
    h = 2166136261
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


def _char_ngrams(token: str, lo: int, hi: int) -> list[str]:
    word = token[2:] + ">" if token.startswith("##") else "<" + token + ">"
    if len(word) <= 3 or not any(c.isalpha() and c.isascii() for c in word):
        return []  # CJK characters and very short pieces are their own features
    return [word[i : i + n] for n in range(lo, hi + 1) for i in range(len(word) - n + 1)]


def char_ngram_table(
    vocab: dict[str, int], *, lo: int, hi: int, width: int, offset: int, buckets: int, pad: int
) -> torch.Tensor:
    """(V, width) feature ids of each vocabulary entry's character n-grams, padded with ``pad``."""
    table = torch.full((max(vocab.values()) + 1, width), pad, dtype=torch.long)
    for token, index in vocab.items():
        grams = _char_ngrams(token, lo, hi)[:width]
        if grams:
            table[index, : len(grams)] = torch.tensor(
                [offset + fnv1a(g) % buckets for g in grams], dtype=torch.long
            )
    return table


CHAR_WIDTH = 24  # character n-grams kept per vocabulary entry


def char_buckets(vocab: dict[str, int], *, lo: int, hi: int, buckets: int) -> torch.Tensor:
    """Sorted distinct hash buckets of the vocabulary's character n-grams (1-D, int64)."""
    table = char_ngram_table(
        vocab, lo=lo, hi=hi, width=CHAR_WIDTH, offset=0, buckets=buckets, pad=-1
    )
    used: torch.Tensor = torch.unique(table[table >= 0])
    return used


def renumber_char_table(
    table: torch.Tensor, old_rows: np.ndarray, *, old_pad: int, new_pad: int
) -> torch.Tensor:
    """A character n-gram table (int64) pointed at a pruned table's rows: row ``old_rows[i]``
    becomes ``i``, a dropped row (and padding) ``new_pad``."""
    where = torch.full((old_pad + 1,), new_pad, dtype=torch.long)
    where[torch.from_numpy(old_rows)] = torch.arange(len(old_rows))
    return where[table.long()]


def point_char_table_at_rows(
    table: torch.Tensor, bucket_rows: torch.Tensor, *, offset: int, pad: int
) -> None:
    """In place: each entry ``offset + bucket`` of a character n-gram table becomes the
    bucket's table row (``bucket_rows``); padding stays."""
    grams = table != pad
    table[grams] = bucket_rows[table[grams].long() - offset].to(table.dtype)


def ngram_buckets(
    ids: torch.Tensor, valid: torch.Tensor, n: int, buckets: int, *, mix: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hash buckets (B, T-n+1) of the token n-grams starting at each position, and which exist.

    An n-gram exists when all its tokens are valid (not padding). ``mix=False`` is linear.v1's
    weaker hash.
    """
    width = ids.shape[1] - n + 1
    h = ids[:, :width].clone()
    ok = valid[:, :width].clone()
    for k in range(1, n):
        h = (h * _PRIME + ids[:, k : width + k] + n) % _MOD
        ok &= valid[:, k : width + k]
    if mix:
        h = h * _MIX % _MOD
    return h % buckets, ok


def flat_ids(id_lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """The texts' ids end to end (1-D, int64), each text followed by one invalid position
    (-1), so that no n-gram spans two texts and no padding is hashed."""
    total = sum(len(r) + 1 for r in id_lists)
    rows = chain.from_iterable(chain(r, (-1,)) for r in id_lists)
    return torch.from_numpy(np.fromiter(rows, dtype=np.int64, count=total))


def token_blocks(
    id_lists: Sequence[Sequence[int]], block_tokens: int = 1 << 20
) -> Iterator[Sequence[Sequence[int]]]:
    """Consecutive slices of ``id_lists`` of about ``block_tokens`` tokens each (at least one
    text), so that work on the texts laid end to end has bounded memory."""
    start, tokens = 0, 0
    for end, ids in enumerate(id_lists, start=1):
        tokens += len(ids) + 1
        if tokens >= block_tokens or end == len(id_lists):
            yield id_lists[start:end]
            start, tokens = end, 0


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Distinct values, sorted (NumPy 2's ``np.unique`` hashes first, 10x slower on these)."""
    ordered = np.sort(values)
    return (
        ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if len(ordered) else ordered
    )


def occupied_buckets(
    id_lists: Sequence[Sequence[int]],
    *,
    ngram: int,
    buckets: int,
    mix: bool = True,
    block_tokens: int = 1 << 20,
) -> torch.Tensor:
    """Sorted distinct hash buckets of the 2..``ngram``-grams in ``id_lists`` (1-D, int64)."""
    found = [np.zeros(0, dtype=np.int64)]
    for block in token_blocks(id_lists, block_tokens):
        flat = flat_ids(block)[None, :]
        valid = flat >= 0
        for n in range(2, ngram + 1):
            if flat.shape[1] >= n:
                bucket, ok = ngram_buckets(flat, valid, n, buckets, mix=mix)
                found.append(bucket[ok].numpy())
    return torch.from_numpy(sorted_unique(np.concatenate(found)))


def used_buckets(
    cfg: ModelConfig, spec: ModelSpec, train_ids: TrainIds, *, mix: bool = True
) -> torch.Tensor | None:
    """The n-gram buckets a new hashed table keeps rows for (linear, nbsvm).

    None for a saved model (its bucket map comes with its weights) or without training ids
    (then the table has one row per bucket).
    """
    if spec.ngram_rows is not None or train_ids is None:
        return None
    return occupied_buckets(train_ids, ngram=cfg.ngram, buckets=cfg.buckets, mix=mix)


def bucket_row_map(occupied: torch.Tensor, *, buckets: int, offset: int, pad: int) -> torch.Tensor:
    """(buckets,) table row per bucket: ``offset + i`` for the i-th occupied one, else ``pad``."""
    rows = torch.full((buckets,), pad, dtype=torch.long)
    rows[occupied] = offset + torch.arange(len(occupied))
    return rows


def token_ngram_features(
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    vocab_size: int,
    ngram: int,
    buckets: int,
    pad_index: int,
    bucket_rows: torch.Tensor | None = None,
    mix: bool = True,
) -> torch.Tensor:
    """Feature ids (B, T') of tokens and hashed token 2..``ngram``-grams; padding -> ``pad_index``.

    A token is its own id; an n-gram is ``vocab_size + bucket``, or ``bucket_rows[bucket]`` when
    the table keeps rows only for some buckets.
    """
    valid = mask.bool()
    parts = [torch.where(valid, ids, pad_index)]
    for n in range(2, ngram + 1):
        if ids.shape[1] < n:
            break
        bucket, ok = ngram_buckets(ids, valid, n, buckets, mix=mix)
        row = vocab_size + bucket if bucket_rows is None else bucket_rows[bucket]
        parts.append(torch.where(ok, row, pad_index))
    return torch.cat(parts, dim=1)


def table_features(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Feature ids (B, T') of a bag model's table (``linear``'s :class:`BagOfNgrams` or
    ``nbsvm``'s ``NBLogistic``): its tokens and hashed n-grams, through a pruned table's
    feature map when it kept only some rows; padding -> ``model.pad_index``."""
    pruned = model.kept is not None
    features = token_ngram_features(
        ids,
        mask,
        vocab_size=model.vocab_size,
        ngram=model.ngram,
        buckets=model.buckets,
        pad_index=-1 if pruned else model.pad_index,
        bucket_rows=getattr(model, "bucket_rows", None),
        mix=getattr(model, "mix_hash", True),
    )
    if pruned:  # keys (token id, or vocab_size + bucket) -> kept rows
        return model.feature_map(features, model.pad_index)  # type: ignore[no-any-return]
    return features


def spread_over_tokens(values: torch.Tensor, length: int, ngram: int) -> torch.Tensor:
    """Per-token sums (T, C) of per-feature values (T', C) laid out as
    :func:`token_ngram_features` lays out one text's features: each token's own value, plus
    an equal share of every n-gram that covers it."""
    out = values[:length].clone()
    start = length
    for n in range(2, ngram + 1):
        if length < n:
            break
        width = length - n + 1
        share = values[start : start + width] / n  # the n-grams starting at 0 .. width-1
        for k in range(n):
            out[k : k + width] += share
        start += width
    return out


class BagOfNgrams(nn.Module):
    """Mean of token, token-n-gram and character-n-gram embeddings -> dropout -> head."""

    def __init__(
        self,
        *,
        vocab_size: int,
        n_outputs: int,
        dim: int = 64,
        ngram: int = 2,
        buckets: int = 200_000,
        char_ngrams: tuple[int, int] = (3, 5),
        char_width: int = CHAR_WIDTH,
        dropout: float = 0.0,
        vocab: dict[str, int] | None = None,
        rows: int | None = None,
        mix_hash: bool = True,
        kept: int | None = None,
        int8: bool = False,
    ) -> None:
        super().__init__()
        self.mix_hash = mix_hash
        lo, hi = char_ngrams
        use_chars = hi >= lo > 0
        self.vocab_size = vocab_size
        self.ngram = ngram
        self.buckets = buckets
        self.ngram_rows = rows  # None: one row per bucket
        self.pad_index = vocab_size + (buckets if rows is None else rows)  # excluded from means
        self.kept = kept  # a pruned table (fenlei.compress): its rows, found by feature_map
        if kept is not None:
            self.pad_index = kept
            self.feature_map = FeatureMap(kept)
        # Sparse gradients: a step touches only the rows its batch uses (see train.py).
        self.embed = (
            Int8EmbeddingBag(self.pad_index + 1, dim, padding_idx=self.pad_index)
            if int8
            else nn.EmbeddingBag(
                self.pad_index + 1, dim, mode="sum", sparse=True, padding_idx=self.pad_index
            )
        )
        if rows is not None and kept is None:  # bucket -> table row; by keep_buckets or loaded
            self.register_buffer("bucket_rows", torch.full((buckets,), self.pad_index))
        shape = (vocab_size if use_chars or kept is None else 1, char_width if use_chars else 1)
        table = torch.full(shape, self.pad_index)
        if vocab is not None and use_chars:
            table = char_ngram_table(
                vocab,
                lo=lo,
                hi=hi,
                width=char_width,
                offset=vocab_size,
                buckets=buckets,
                pad=self.pad_index,
            )
        self.register_buffer("char_table", table)  # (V, K): saved with the weights
        self.use_chars = use_chars
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_outputs)
        if isinstance(self.embed, nn.EmbeddingBag):
            nn.init.uniform_(self.embed.weight, -1.0 / dim, 1.0 / dim)
            with torch.no_grad():
                self.embed.weight[self.pad_index].zero_()

    @property
    def bag_table(self) -> nn.EmbeddingBag | Int8EmbeddingBag:
        """The embedding table (:class:`~fenlei.models.compact.CompactBag`)."""
        return self.embed

    def row_logits(self, weight: torch.Tensor) -> torch.Tensor:
        """(rows, C): a row's change to the logits through the head."""
        return weight @ self.head.weight.float().T

    @torch.no_grad()
    def copy_outputs(self, source: nn.Module, old_rows: np.ndarray) -> None:
        """The head, and the character n-gram table pointed at the new rows (a dropped row
        -> padding)."""
        assert isinstance(source, BagOfNgrams)
        self.head.load_state_dict(source.head.state_dict())
        if not source.use_chars:
            return
        old: torch.Tensor = source.char_table  # type: ignore[assignment]
        self.char_table.copy_(  # type: ignore[operator]
            renumber_char_table(old, old_rows, old_pad=source.pad_index, new_pad=self.pad_index)
        )

    def keep_buckets(self, occupied: torch.Tensor) -> None:
        """Give each bucket in ``occupied`` (sorted, from :func:`occupied_buckets`) its row.

        Called once, when the model is built (it also rewrites the character n-gram table).
        """
        if self.ngram_rows != len(occupied):
            raise ValueError(f"the table has {self.ngram_rows} n-gram rows, not {len(occupied)}")
        bucket_rows: torch.Tensor = self.bucket_rows  # type: ignore[assignment]
        bucket_rows.copy_(
            bucket_row_map(
                occupied, buckets=self.buckets, offset=self.vocab_size, pad=self.pad_index
            )
        )
        if self.use_chars:  # character n-grams share the buckets: point them at rows too
            table: torch.Tensor = self.char_table  # type: ignore[assignment]
            point_char_table_at_rows(table, bucket_rows, offset=self.vocab_size, pad=self.pad_index)

    def token_ngrams(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Feature ids (B, T') of tokens and hashed token n-grams; padding -> ``pad_index``."""
        return table_features(self, ids, mask)

    def _feature_sums(self, features: torch.Tensor) -> torch.Tensor:
        """Per-text sum of the feature vectors: (B, T') ids -> (B, D)."""
        if not (self.training and torch.is_grad_enabled()):
            return self.embed(features)  # type: ignore[no-any-return]
        # Training: look each distinct feature of the batch up once. The table's gradient then
        # has one row per distinct feature instead of one per occurrence, which halves the
        # step on long texts (a batch of ChnSentiCorp reviews repeats most of its features);
        # the sums are the same.
        uniq, inverse = torch.unique(features, return_inverse=True)
        rows = F.embedding(uniq, self.embed.weight, padding_idx=self.pad_index, sparse=True)
        return F.embedding_bag(inverse, rows, mode="sum")

    def _char_vectors(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Sum over valid tokens of the mean of their character-n-gram vectors: (B, D)."""
        char_table: torch.Tensor = self.char_table  # type: ignore[assignment]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        grams = char_table[uniq]  # (U, K)
        counts = (grams != self.pad_index).sum(dim=1, keepdim=True).clamp(min=1)  # (U, 1)
        per_token = self.embed(grams) / counts  # (U, D)
        summed: torch.Tensor = (per_token[inverse] * valid[:, :, None]).sum(dim=1)
        return summed  # (B, T, D) -> (B, D)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, n_outputs) logits."""
        features = self.token_ngrams(ids, mask)  # (B, T')
        total = self._feature_sums(features)  # (B, D), sum over non-padding features
        valid = mask.bool()
        if self.use_chars:
            total = total + self._char_vectors(ids, valid)
        count = (features != self.pad_index).sum(dim=1, keepdim=True).clamp(min=1)
        return self.head(self.dropout(total / count))  # type: ignore[no-any-return]


def _build(
    cfg: ModelConfig,
    spec: ModelSpec,
    vocab: dict[str, int] | None,
    train_ids: TrainIds,
    *,
    mix: bool,
) -> BagOfNgrams:
    chars = (cfg.char_ngram_min, cfg.char_ngram_max)
    keep = used_buckets(cfg, spec, train_ids, mix=mix)
    if keep is not None and 0 < chars[0] <= chars[1] and vocab is not None:
        used = char_buckets(vocab, lo=chars[0], hi=chars[1], buckets=cfg.buckets)
        keep = torch.unique(torch.cat([keep, used]))
    model = BagOfNgrams(
        vocab_size=spec.vocab_size,
        n_outputs=spec.n_outputs,
        dim=cfg.embedding_dim,
        ngram=cfg.ngram,
        buckets=cfg.buckets,
        char_ngrams=chars,
        dropout=cfg.dropout,
        vocab=vocab,
        rows=spec.ngram_rows if keep is None else len(keep),
        mix_hash=mix,
        kept=spec.kept_rows,
        int8=spec.int8_table,
    )
    if keep is not None:
        model.keep_buckets(keep)
    return model


def build_v1(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    """A ``linear.v1`` model: v1's weaker n-gram hash, kept for its run folders."""
    return _build(cfg, spec, vocab, train_ids, mix=False)


def build_v2(
    cfg: ModelConfig, spec: ModelSpec, vocab: dict[str, int] | None, train_ids: TrainIds
) -> nn.Module:
    """A ``linear.v2`` model (see the module docstring)."""
    return _build(cfg, spec, vocab, train_ids, mix=True)


def token_embedding(model: nn.Module) -> nn.Module:
    """The shared table of token, n-gram and character n-gram vectors."""
    assert isinstance(model, BagOfNgrams)
    return model.embed


@torch.no_grad()
def token_contributions(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's exact share (T, n_outputs) of the logits of one text's ids (T,), and the
    bias (n_outputs,); together they sum to the eval-mode logits.

    The logit is ``head(sum of feature vectors / count)``, linear in each feature: a token
    gets its own vector's and its character n-grams' part, and an equal share of each token
    n-gram covering it.
    """
    assert isinstance(model, BagOfNgrams)
    pad = model.pad_index
    weight = model.embed.weight
    head = model.head.weight  # (C, D)
    features = model.token_ngrams(ids[None], torch.ones_like(ids)[None])[0]  # (T',)
    valid = (features != pad)[:, None]
    count = valid.sum().clamp(min=1)
    per_feature = (weight[features] @ head.T) * valid / count  # (T', C)
    per_token = spread_over_tokens(per_feature, len(ids), model.ngram)
    if model.use_chars:
        char_table: torch.Tensor = model.char_table  # type: ignore[assignment]
        grams = char_table[ids]  # (T, K)
        kept = (grams != pad)[:, :, None]
        chars = (weight[grams] * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1)  # (T, D)
        per_token = per_token + chars @ head.T / count
    return per_token, model.head.bias.detach().clone()


def plain_bag(model: nn.Module) -> BagTable | None:
    """The table as a plain bag (the fused training step), or None for a model with
    character n-grams (a second, weighted bag) or a compressed table."""
    assert isinstance(model, BagOfNgrams)
    if model.use_chars or model.kept is not None or not isinstance(model.embed, nn.EmbeddingBag):
        return None

    def head(means: torch.Tensor) -> torch.Tensor:
        return model.head(model.dropout(means))  # type: ignore[no-any-return]

    return BagTable(
        features=model.token_ngrams, weight=model.embed.weight, pad=model.pad_index, head=head
    )


def spec_extras(model: nn.Module) -> dict[str, Any]:
    """``ngram_rows``: the n-gram rows the table kept (absent: one row per bucket)."""
    assert isinstance(model, BagOfNgrams)
    return {} if model.ngram_rows is None else {"ngram_rows": model.ngram_rows}


_READS = frozenset(
    {"embedding_dim", "ngram", "buckets", "char_ngram_min", "char_ngram_max", "dropout"}
)
_SEARCH_SPACE = {
    "train.lr": (3e-3, 1e-2, 3e-2),
    "train.sparse_lr": (0.05, 0.1, 0.2),
    "train.epochs": (3, 5, 10),
    "model.embedding_dim": (32, 64, 128),
    "model.ngram": (1, 2, 3),
}


def _family(name: str, build: Builder) -> Family:
    return Family(
        name=name,
        build=build,
        reads=_READS,
        sparse_table=True,  # the table trains with a sparse optimizer
        windows=False,  # a bag of n-grams: a longer encoder.max_length reads the whole text
        token_embedding=token_embedding,
        attribution=token_contributions,
        spec_extras=spec_extras,
        plain_bag=plain_bag,
        search_space=_SEARCH_SPACE,
    )


LINEAR_V1 = _family("linear.v1", build_v1)
LINEAR_V2 = _family("linear.v2", build_v2)
