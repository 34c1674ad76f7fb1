"""Token attributions: how much each word of a text pushed the model towards a label.

Enter through :func:`explain` (a model, its encoder and family) or
:meth:`fenlei.predict.Predictor.explain` (a loaded run). Each text gets an
:class:`Explanation`: its words (whole words re-assembled from WordPiece pieces, one
character for Chinese) with character spans into the text and a score towards the predicted
label, or a ``target`` label.

What a score is a share of (the target's *score*):

* softmax heads: the target's logit minus the mean of the logits (shifting every logit
  alike changes no probability; for two labels it is half the log-odds);
* one sigmoid logit (``seed-lstm``): the log-odds of the label (negated for label 0);
* multi-label: the label's own logit.

How it is split, per family (:class:`~fenlei.models.Family`):

* bag models (``linear``, ``nbsvm``; ``Family.attribution``): exactly. The score is a sum
  over features, so each word's and n-gram's part is known; an n-gram's part is spread
  evenly over the tokens it covers. Scores sum to the target's score minus the bias.
* the others (``lstm``, ``seed-lstm``, ``minilm``): Captum's ``LayerIntegratedGradients`` on
  the token embedding (``Family.token_embedding``), from a baseline text of padding tokens,
  with the interpolation steps batched. Scores sum to the score minus the baseline's score,
  up to Captum's convergence delta, reported with each explanation.

An ensemble explains as the weighted sum of its members' explanations (:func:`combine`).

Example:
    >>> predictor = Predictor.from_run("runs/demo")  # doctest: +SKIP
    >>> explanation = predictor.explain(["where is my parcel?"])[0]  # doctest: +SKIP
    >>> [(t.token, round(t.score, 2)) for t in explanation.tokens]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from fenlei.errors import ConfigError, DataError, MissingExtraError
from fenlei.models import Family, batched_logits, to_probs
from fenlei.tokenize import Encoder, TokenOffsets

if TYPE_CHECKING:
    pass

__all__ = [
    "IG_MAX_STEPS",
    "IG_STEPS",
    "IG_TOLERANCE",
    "Explanation",
    "TokenScore",
    "combine",
    "explain",
    "explain_members",
    "shadow_copy",
    "target_scores",
]

logger = logging.getLogger(__name__)

IG_STEPS = 32  # Gauss-Legendre steps to start with, doubled while the delta is too large
IG_MAX_STEPS = 128
IG_TOLERANCE = 0.01  # |delta| allowed, as a share of the score's change
IG_ABSOLUTE = 1e-3  # ... or this much: float32 sums differ by ~1e-4 between batch sizes
_ROW_TOKENS = 8192  # tokens per batched forward pass of the interpolation steps

Method = Literal["exact", "integrated-gradients", "ensemble"]


@dataclass(frozen=True)
class TokenScore:
    """One word of the text and its score towards the explained label.

    Attributes:
        token: the word as written, ``text[start:end]``.
        start, end: its character span in the text.
        score: its share of the label's score (positive: towards the label).
        unknown: the encoder knows (part of) it only as the unknown token.
    """

    token: str
    start: int
    end: int
    score: float
    unknown: bool = False


@dataclass(frozen=True)
class Explanation:
    """Why a text got (or would get) a label: a score per word.

    ``sum(t.score for t in tokens) + special == score - base + delta``.

    Attributes:
        text: the text explained.
        label: the label explained (the predicted one unless a target was given).
        predicted: the label the model predicts (the most probable).
        probability: the explained label's probability.
        tokens: the words in text order (of a cut text only the parts the model read).
        score: the label's score for the text (see the module docstring).
        base: the score without the words: the bias (exact) or the baseline's score.
        special: the part of special tokens ([CLS], [SEP]) that have no place in the text.
        delta: Captum's convergence delta (0 for exact attributions).
        method: ``"exact"``, ``"integrated-gradients"``, or ``"ensemble"`` (members that
            explain by different methods).
        truncated: the text was longer than the encoder's ``max_length`` and was cut the way
            the model cuts it; words outside the kept part have no score.
        max_length: the encoder's ``max_length`` (tokens).
    """

    text: str
    label: str
    predicted: str
    probability: float
    tokens: tuple[TokenScore, ...]
    score: float
    base: float
    special: float = 0.0
    delta: float = 0.0
    method: Method = "exact"
    truncated: bool = False
    max_length: int | None = None

    def top(self, k: int, *, against: bool = False) -> list[TokenScore]:
        """The ``k`` words pushing hardest towards the label (or, ``against=True``, away)."""
        sign = -1.0 if against else 1.0
        pushing = [t for t in self.tokens if sign * t.score > 0]
        return sorted(pushing, key=lambda t: -sign * t.score)[:k]

    @property
    def unknown(self) -> int:
        """Words the encoder knows only as the unknown token (a language it never saw)."""
        return sum(t.unknown for t in self.tokens)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``fenlei explain --out`` writes per line)."""
        return {
            "text": self.text,
            "label": self.label,
            "predicted": self.predicted,
            "probability": self.probability,
            "method": self.method,
            "score": self.score,
            "base": self.base,
            "special": self.special,
            "delta": self.delta,
            "truncated": self.truncated,
            "unknown": self.unknown,
            "tokens": [
                {"token": t.token, "start": t.start, "end": t.end, "score": t.score}
                for t in self.tokens
            ],
        }


def target_scores(logits: torch.Tensor, index: int, *, multi_label: bool) -> torch.Tensor:
    """The score (...) of label ``index`` from logits (..., n_outputs); linear in the logits.

    Example:
        >>> target_scores(torch.tensor([[2.0, 0.0]]), 0, multi_label=False)
        tensor([1.])
    """
    if logits.shape[-1] == 1:  # one sigmoid logit: label 1's log-odds
        return logits[..., 0] if index == 1 else -logits[..., 0]
    if multi_label:
        return logits[..., index]
    return logits[..., index] - logits.mean(dim=-1)


def shadow_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer (no weight copied).

    Integrated gradients hook the embedding layer while they run; hooked on a shadow, the
    model itself keeps serving other threads untouched.
    """
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo=shared).eval()


def _label_index(labels: Sequence[str], target: str | None) -> int | None:
    if target is None:
        return None
    if target not in labels:
        raise DataError(
            f"target label {target!r} is not one of the model's labels: {', '.join(labels)}"
        )
    return list(labels).index(target)


def _check_tokens(encoded: Sequence[TokenOffsets]) -> None:
    for i, enc in enumerate(encoded):
        if all(word is None for word in enc.words):
            raise DataError(
                f"texts[{i}] has no tokens to explain: it is empty, or only characters the "
                "encoder drops; send a text with words"
            )


def explain(
    model: nn.Module,
    encoder: Encoder,
    family: Family,
    labels: Sequence[str],
    texts: Sequence[str],
    *,
    multi_label: bool = False,
    target: str | None = None,
    n_steps: int = IG_STEPS,
) -> list[Explanation]:
    """Score every word of each text towards its predicted label (or ``target``).

    Args:
        model: the family's torch module (eval mode). Integrated gradients hook its token
            embedding while they run: pass a :func:`shadow_copy` if other threads use it.
        encoder: the run's encoder (the model's cut, head+tail included, is kept).
        family: the model's family (exact attribution or integrated gradients).
        labels: the label names, in the model's output order.
        texts: the texts to explain.
        multi_label: the model decides each label on its own (sigmoid per label).
        target: explain this label instead of the predicted one.
        n_steps: integrated-gradients steps to start with (Gauss-Legendre), doubled (up to
            :data:`IG_MAX_STEPS`) while Captum's delta exceeds :data:`IG_TOLERANCE` of the
            score's change (and :data:`IG_ABSOLUTE`).

    Returns:
        One :class:`Explanation` per text, in order.

    Raises:
        DataError: a text has no tokens, or ``target`` is not a label.
        MissingExtraError: integrated gradients need captum (``fenlei[explain]``).
        ConfigError: the family has neither an exact attribution nor a token embedding.

    Example:
        >>> lstm = family_of("lstm.v1")  # doctest: +SKIP
        >>> out = explain(model, encoder, lstm, labels, ["我要退款"])  # doctest: +SKIP
        >>> [t.token for t in out[0].tokens]  # doctest: +SKIP
        ['我', '要', '退', '款']
    """
    index = _label_index(labels, target)
    encoded = encoder.encode_with_offsets(list(texts))
    _check_tokens(encoded)
    device = next(model.parameters()).device
    logits = batched_logits(
        model,
        [e.ids for e in encoded],
        pad_id=encoder.pad_id,
        max_tokens=family.batch_tokens,
        device=device,
    )
    probs = to_probs(logits, multi_label=multi_label)
    explain_one = _exact if family.attribution is not None else _integrated
    out = []
    for text, enc, row_logits, row_probs in zip(texts, encoded, logits, probs, strict=True):
        predicted = int(row_probs.argmax())
        chosen = predicted if index is None else index
        ids = torch.tensor(enc.ids, dtype=torch.long, device=device)
        score = float(target_scores(row_logits, chosen, multi_label=multi_label))
        per_token, base, delta, method = explain_one(
            model, family, ids, enc, encoder.pad_id, chosen, multi_label, n_steps, score
        )
        tokens, special = _words(text, enc, per_token.tolist(), encoder.unk_id)
        out.append(
            Explanation(
                text=text,
                label=labels[chosen],
                predicted=labels[predicted],
                probability=float(row_probs[chosen]),
                tokens=tokens,
                score=score,
                base=base,
                special=special,
                delta=delta,
                method=method,
                truncated=enc.cut,
                max_length=encoder.cfg.max_length,
            )
        )
    return out


_Attributed = tuple[torch.Tensor, float, float, Method]


def _exact(
    model: nn.Module,
    family: Family,
    ids: torch.Tensor,
    enc: TokenOffsets,
    pad_id: int,
    index: int,
    multi_label: bool,
    n_steps: int,
    score: float,
) -> _Attributed:
    assert family.attribution is not None
    contributions, bias = family.attribution(model, ids)  # (T, C), (C,)
    per_token = target_scores(contributions, index, multi_label=multi_label)
    base = float(target_scores(bias, index, multi_label=multi_label))
    return per_token.float().cpu(), base, 0.0, "exact"


def _integrated(
    model: nn.Module,
    family: Family,
    ids: torch.Tensor,
    enc: TokenOffsets,
    pad_id: int,
    index: int,
    multi_label: bool,
    n_steps: int,
    score: float,
) -> _Attributed:
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError as exc:
        raise MissingExtraError("captum", "explain", "explaining this model family") from exc
    layer = family.token_embedding(model) if family.token_embedding is not None else None
    if layer is None:
        raise ConfigError(f"{family.name} has no exact attribution and no token embedding")

    def forward(batch_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return target_scores(model(batch_ids, mask), index, multi_label=multi_label)

    words = torch.tensor([w is not None for w in enc.words], device=ids.device)
    baseline = torch.where(words, torch.full_like(ids, pad_id), ids)[None]  # specials stay
    mask = torch.ones_like(baseline)
    attribute = LayerIntegratedGradients(forward, layer).attribute
    steps = n_steps
    while True:
        rows = max(1, min(steps, _ROW_TOKENS // max(1, len(ids))))
        with torch.enable_grad(), _rnn_backward_ok(ids.device):
            attributions, deltas = attribute(
                ids[None],
                baselines=baseline,
                additional_forward_args=(mask,),
                n_steps=steps,
                internal_batch_size=rows,
                return_convergence_delta=True,
            )
        per_token = attributions.detach().sum(dim=-1)[0]  # (1, T, E) -> (T,)
        delta = float(deltas[0])
        # delta = sum - (score - base), so the baseline's score needs no forward pass of its own
        base = score - float(per_token.sum()) + delta
        allowed = max(IG_TOLERANCE * abs(score - base), IG_ABSOLUTE)
        if abs(delta) <= allowed or steps >= IG_MAX_STEPS:
            return per_token.float().cpu(), base, delta, "integrated-gradients"
        steps *= 2  # the path is not smooth enough for this many steps: halve their spacing


def _rnn_backward_ok(device: torch.device) -> Any:
    """cuDNN computes an RNN's backward pass only in training mode: off for the GPU."""
    if device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=False)
    from contextlib import nullcontext

    return nullcontext()


def _words(
    text: str, enc: TokenOffsets, scores: list[float], unk_id: int | None
) -> tuple[tuple[TokenScore, ...], float]:
    """Whole words from token scores (pieces of one word summed), and the specials' part."""
    words: list[TokenScore] = []
    special = 0.0
    last: int | None = None
    for token_id, word, (start, end), score in zip(
        enc.ids, enc.words, enc.spans, scores, strict=True
    ):
        if word is None:
            special += score
            continue
        unknown = token_id == unk_id
        if word == last and words:
            prev = words[-1]
            start, end = min(prev.start, start), max(prev.end, end)
            words[-1] = TokenScore(
                text[start:end], start, end, prev.score + score, prev.unknown or unknown
            )
        else:
            words.append(TokenScore(text[start:end], start, end, score, unknown))
        last = word
    return tuple(words), special


def combine(
    members: Sequence[Explanation],
    weights: Sequence[float],
    *,
    predicted: str | None = None,
    probability: float | None = None,
) -> Explanation:
    """One text's explanation by an ensemble: the weighted sum of its members' explanations.

    The members explain the same text towards the same label. The first member's words are
    the result's words; a word of another member adds its weighted score to the words it
    overlaps, in proportion to the characters shared (members may split a text differently),
    or comes in as a word of its own where it overlaps none (a member that cut less).

    Args:
        members: one explanation per member model, of the same text and label.
        weights: the members' weights in the ensemble.
        predicted: the ensemble's predicted label (else the first member's).
        probability: the ensemble's probability of the label (else the weighted mean).

    Raises:
        DataError: the members explain different texts or labels, or the counts differ.
    """
    if not members or len(members) != len(weights):
        raise DataError(f"{len(members)} explanations for {len(weights)} ensemble weights")
    first = members[0]
    if any(m.text != first.text or m.label != first.label for m in members):
        raise DataError("ensemble members must explain the same text towards the same label")
    scores = [t.score * weights[0] for t in first.tokens]
    extra: list[TokenScore] = []
    for member, weight in zip(members[1:], weights[1:], strict=True):
        for token in member.tokens:
            _spread(token, weight, first.tokens, scores, extra)
    tokens = [replace(t, score=s) for t, s in zip(first.tokens, scores, strict=True)]
    tokens = sorted([*tokens, *extra], key=lambda t: (t.start, t.end))

    def mix(values: Sequence[float]) -> float:
        return float(sum(w * v for w, v in zip(weights, values, strict=True)))

    return replace(
        first,
        tokens=tuple(tokens),
        predicted=first.predicted if predicted is None else predicted,
        probability=mix([m.probability for m in members]) if probability is None else probability,
        score=mix([m.score for m in members]),
        base=mix([m.base for m in members]),
        special=mix([m.special for m in members]),
        delta=mix([m.delta for m in members]),
        truncated=any(m.truncated for m in members),
        method=first.method if all(m.method == first.method for m in members) else "ensemble",
    )


def explain_members(
    members: Sequence[object],
    weights: Sequence[float] | np.ndarray,
    labels: Sequence[str],
    texts: Sequence[str],
    probs: np.ndarray,
    *,
    target: str | None = None,
) -> list[Explanation]:
    """Explanations by a weighted mixture of models (an ensemble): each member explains the
    mixture's label, and :func:`combine` sums them with the weights.

    Args:
        members: the member predictors (:class:`Explainer`); a member of weight 0 is
            skipped.
        weights: the members' weights.
        labels: the mixture's labels (members may order theirs differently).
        texts: the texts.
        probs: the mixture's probabilities (N, C), columns in ``labels`` order; its most
            probable label is explained unless ``target`` is given.
        target: explain this label instead.

    Raises:
        DataError: ``target`` is not one of ``labels``, or a text has no tokens.
        ConfigError: a member cannot explain (it has no ``explain``).

    Example:
        >>> probs = ens.predict_proba(texts)  # doctest: +SKIP
        >>> explain_members(ens.members, ens.weights, ens.labels, texts, probs)  # doctest: +SKIP
    """
    index = _label_index(labels, target)
    chosen = [int(row.argmax()) if index is None else index for row in probs]
    used = [
        (_explainer(m, i), float(w))
        for i, (m, w) in enumerate(zip(members, weights, strict=True))
        if w > 0
    ]
    out: list[Explanation | None] = [None] * len(texts)
    for label in sorted(set(chosen)):  # each member explains the texts of one label at once
        rows = [i for i, c in enumerate(chosen) if c == label]
        per_member = [m([texts[i] for i in rows], target=labels[label]) for m, _ in used]
        for j, i in enumerate(rows):
            out[i] = combine(
                [explained[j] for explained in per_member],
                [w for _, w in used],
                predicted=labels[int(probs[i].argmax())],
                probability=float(probs[i][label]),
            )
    return [e for e in out if e is not None]


def _explainer(member: object, index: int) -> Any:
    explain_texts = getattr(member, "explain", None)
    if explain_texts is None:
        raise ConfigError(
            f"ensemble member {index} ({type(member).__name__}) cannot explain its predictions"
        )
    return explain_texts


def _spread(
    token: TokenScore,
    weight: float,
    words: Sequence[TokenScore],
    scores: list[float],
    extra: list[TokenScore],
) -> None:
    overlaps = [
        (i, min(w.end, token.end) - max(w.start, token.start))
        for i, w in enumerate(words)
        if min(w.end, token.end) > max(w.start, token.start)
    ]
    shared = sum(n for _, n in overlaps)
    if not shared:
        extra.append(replace(token, score=token.score * weight))
        return
    for i, n in overlaps:
        scores[i] += token.score * weight * n / shared
