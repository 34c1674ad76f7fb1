"""Token attributions: exact sums for bag models, integrated-gradients completeness (Captum's
delta) for the others, whole words with spans into the text, Chinese characters, a target
label, cut texts, refusals, and a model left unhooked for the threads that serve it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fenlei.classifier import TextClassifier
from fenlei.errors import ConfigError, DataError
from fenlei.explain import Explanation, TokenScore, combine, explain, target_scores
from fenlei.models import family_of
from fenlei.predict import Predictor
from tests.conftest import family_overrides
from tests.models.test_contract import LABELS, TEXTS

EXACT = ["linear.v2", "nbsvm.v1"]
INTEGRATED = ["lstm.v1", "seed-lstm", "transformer.v1"]
SAMPLES = ["where is my parcel?", "我要退款", "refund the broken kettle, it is unbelievable"]


def _settings(kind: str, tiny_transformer_dir: Path) -> tuple[str, list[str]]:
    if kind == "seed-lstm":  # one sigmoid logit
        return "seed-lstm", family_overrides("lstm.v1")[1]
    return family_overrides(kind, tiny_transformer_dir)


@pytest.fixture(scope="module")
def predictors(
    tmp_path_factory: pytest.TempPathFactory, tiny_transformer_dir: Path
) -> dict[str, Predictor]:
    """A tiny trained run per kind (two labels for seed-lstm, four otherwise)."""
    out = {}
    for kind in [*EXACT, *INTEGRATED]:
        preset, overrides = _settings(kind, tiny_transformer_dir)
        overrides = [*overrides, "train.epochs=3", "encoder.min_frequency=1"]
        texts, labels = TEXTS, LABELS
        if kind == "seed-lstm":
            keep = [i for i, lab in enumerate(LABELS) if lab in ("refund", "praise")]
            texts, labels = [TEXTS[i] for i in keep], [LABELS[i] for i in keep]
        run_dir = tmp_path_factory.mktemp(kind.replace(".", "_"))
        clf = TextClassifier(preset, overrides=overrides, run_dir=run_dir)
        clf.fit(texts, labels, X_dev=texts, y_dev=labels)
        out[kind] = Predictor.from_run(run_dir, backend="torch")
    return out


def _sum(e: Explanation) -> float:
    return sum(t.score for t in e.tokens) + e.special


@pytest.mark.parametrize("kind", EXACT)
def test_exact_scores_sum_to_the_score_minus_the_bias(kind: str, predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors[kind]
    logits = predictor.logits(SAMPLES)
    for e, row in zip(predictor.explain(SAMPLES), logits, strict=True):
        assert e.method == "exact" and e.delta == 0.0
        index = predictor.labels.index(e.label)
        assert e.score == pytest.approx(
            float(target_scores(torch.from_numpy(row), index, multi_label=False)), abs=1e-5
        )
        assert _sum(e) == pytest.approx(e.score - e.base, abs=1e-5)


@pytest.mark.parametrize("kind", EXACT)
def test_exact_for_every_label_and_a_text_with_repeats(kind: str, predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors[kind]
    text = "refund refund refund my parcel parcel 退款退款"
    for label in predictor.labels:
        (e,) = predictor.explain([text], target=label)
        assert e.label == label
        assert _sum(e) == pytest.approx(e.score - e.base, abs=1e-5)


@pytest.mark.parametrize("kind", INTEGRATED)
def test_integrated_gradients_are_complete_within_the_delta(kind: str, predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors[kind]
    for e in predictor.explain(SAMPLES):
        assert e.method == "integrated-gradients"
        # Captum's delta is sum(attributions) - (score - baseline score): our score and
        # base agree with the ones it measured, and the steps make it small
        assert _sum(e) == pytest.approx(e.score - e.base + e.delta, abs=1e-4)
        assert abs(e.delta) <= 0.02 * max(1.0, abs(e.score - e.base))
    # from 2 steps, the steps double until the delta is within 1 % of the score's change
    for e in predictor.explain(SAMPLES, n_steps=2):
        assert abs(e.delta) <= max(0.01 * abs(e.score - e.base), 1e-3)


def test_special_tokens_of_a_pretrained_tokenizer_are_not_words(predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors["transformer.v1"]
    (e,) = predictor.explain(["where is my parcel?"])
    assert [t.token for t in e.tokens] == ["where", "is", "my", "parcel", "?"]
    assert abs(e.special) < 1e-6  # [CLS] and [SEP] are in the baseline too


def test_words_are_reassembled_from_pieces_with_spans(tmp_path: Path) -> None:
    predictor = _tiny_wordpiece_linear(tmp_path)
    text = "Unbelievably  refundable parcel!! 我要退款"
    (e,) = predictor.explain([text])
    pieces = predictor.encoder.encode_with_offsets([text])[0]
    assert len(pieces.ids) > len(e.tokens)  # some words were cut into pieces
    assert [t.token for t in e.tokens] == [
        "Unbelievably", "refundable", "parcel", "!", "!", "我", "要", "退", "款"
    ]  # fmt: skip
    for t in e.tokens:
        assert text[t.start : t.end] == t.token
    assert _sum(e) == pytest.approx(e.score - e.base, abs=1e-5)


def _tiny_wordpiece_linear(tmp_path: Path) -> Predictor:
    """A linear model over a 100-piece WordPiece vocabulary (most words split)."""
    preset, overrides = family_overrides("linear.v2")
    overrides = [*overrides, "encoder.kind=wordpiece", "encoder.vocab_size=100", "train.epochs=1"]
    clf = TextClassifier(preset, overrides=overrides, run_dir=tmp_path / "run")
    clf.fit(TEXTS, LABELS, X_dev=TEXTS, y_dev=LABELS)
    return Predictor.from_run(tmp_path / "run", backend="torch")


@pytest.mark.parametrize("kind", ["linear.v2", "lstm.v1"])
def test_chinese_is_one_character_per_token(kind: str, predictors) -> None:  # type: ignore[no-untyped-def]
    (e,) = predictors[kind].explain(["钱什么时候退回来"])
    assert [t.token for t in e.tokens] == list("钱什么时候退回来")
    assert [(t.start, t.end) for t in e.tokens] == [(i, i + 1) for i in range(8)]


@pytest.mark.parametrize("kind", ["linear.v2", "lstm.v1", "transformer.v1"])
def test_a_target_label_is_explained_instead_of_the_prediction(kind: str, predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors[kind]
    (predicted,) = predictor.explain(["我要退款"])
    assert predicted.label == predicted.predicted == predictor.predict(["我要退款"])[0].label
    other = next(lab for lab in predictor.labels if lab != predicted.label)
    (targeted,) = predictor.explain(["我要退款"], target=other)
    assert targeted.label == other and targeted.predicted == predicted.label
    probs = predictor.predict_proba(["我要退款"])[0]
    assert targeted.probability == pytest.approx(probs[predictor.labels.index(other)], abs=1e-6)


def test_a_single_logit_explains_label_zero_as_the_opposite(predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors["seed-lstm"]
    first, second = predictor.labels
    (a,) = predictor.explain(["I want a refund"], target=first)
    (b,) = predictor.explain(["I want a refund"], target=second)
    np.testing.assert_allclose([t.score for t in a.tokens], [-t.score for t in b.tokens], atol=1e-5)


def test_two_softmax_labels_explain_as_opposites(predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors["linear.v2"]
    scores = {
        label: predictor.explain(["我要退款"], target=label)[0].score for label in predictor.labels
    }
    assert sum(scores.values()) == pytest.approx(0.0, abs=1e-5)  # centred logits


def test_a_long_text_is_cut_like_the_model_cuts_it(predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors["linear.v2"]  # head+tail at 512 tokens
    long = "refund " * 400 + "parcel " * 400
    (e,) = predictor.explain([long])
    assert e.truncated and e.max_length == 512
    assert len(e.tokens) == 512
    assert e.tokens[0].start == 0 and e.tokens[-1].end == len(long.rstrip())
    assert _sum(e) == pytest.approx(e.score - e.base, abs=1e-4)
    (short,) = predictor.explain(["refund"])
    assert not short.truncated


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_text_is_refused(text: str, predictors) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=r"texts\[1\] has no tokens"):
        predictors["lstm.v1"].explain(["refund", text])


def test_an_unknown_target_is_refused(predictors) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="target label 'nope' is not one of"):
        predictors["nbsvm.v1"].explain(["refund"], target="nope")


def test_words_of_an_unseen_language_are_marked_unknown(predictors) -> None:  # type: ignore[no-untyped-def]
    (e,) = predictors["lstm.v1"].explain(["مرحبا بالعالم refund"])
    assert e.unknown == 2 and [t.unknown for t in e.tokens] == [True, True, False]


def test_the_served_model_is_never_hooked(predictors) -> None:  # type: ignore[no-untyped-def]
    predictor = predictors["lstm.v1"]
    before = predictor.predict_proba(SAMPLES)
    predictor.explain(SAMPLES)
    embed = family_of("lstm.v1").token_embedding(predictor.model)  # type: ignore[misc]
    assert not embed._forward_hooks and not embed._forward_pre_hooks
    np.testing.assert_array_equal(predictor.predict_proba(SAMPLES), before)


def test_a_predictor_without_its_family_says_so(predictors) -> None:  # type: ignore[no-untyped-def]
    p = predictors["linear.v2"]
    bare = Predictor(p.encoder, p.model, p.labels)
    with pytest.raises(ConfigError, match="explain needs the model's family"):
        bare.explain(["refund"])
    named = Predictor(p.encoder, p.model, p.labels, architecture="linear.v2")
    assert named.explain(["refund"])[0].tokens[0].token == "refund"


def test_the_predictor_training_returns_explains(tmp_path: Path) -> None:
    preset, overrides = family_overrides("nbsvm.v1")
    clf = TextClassifier(preset, overrides=overrides, run_dir=tmp_path / "run")
    clf.fit(TEXTS, LABELS, X_dev=TEXTS, y_dev=LABELS)
    (e,) = clf.predictor_.explain(["我要退款"])
    assert [t.token for t in e.tokens] == list("我要退款")


def test_the_low_level_function_takes_any_model_of_a_family(predictors) -> None:  # type: ignore[no-untyped-def]
    p = predictors["nbsvm.v1"]
    family = family_of("nbsvm.v1")
    (e,) = explain(p.model, p.encoder, family, p.labels, ["refund please"])
    assert [t.token for t in e.tokens] == ["refund", "please"]


def test_an_ensemble_explains_as_the_weighted_sum_of_its_members() -> None:
    def member(tokens: list[tuple[int, int, float]], text: str = "good film") -> Explanation:
        words = tuple(TokenScore(text[s:e], s, e, v) for s, e, v in tokens)
        return Explanation(text, "pos", "pos", 0.8, words, score=1.0, base=0.1)

    a = member([(0, 4, 1.0), (5, 9, -1.0)])
    b = member([(0, 2, 2.0), (2, 4, 2.0), (5, 9, 4.0)])  # another tokenizer cut "good"
    e = combine([a, b], [0.25, 0.75])
    assert [(t.token, t.score) for t in e.tokens] == [("good", 3.25), ("film", 2.75)]
    assert e.score == pytest.approx(1.0) and e.base == pytest.approx(0.1)
    with pytest.raises(DataError):
        combine([a, member([], "bad film")], [0.5, 0.5])


@pytest.mark.parametrize("truncation", ["head", "tail", "head+tail"])
def test_offsets_come_with_the_ids_the_model_reads(truncation: str, bundled) -> None:  # type: ignore[no-untyped-def]
    from fenlei.config import EncoderConfig
    from fenlei.tokenize import train_encoder

    cfg = EncoderConfig(vocab_size=300, max_length=6, truncation=truncation)
    encoder = train_encoder(bundled["train"].texts, cfg)
    long = "我要退款 " * 5 + "谢谢"
    texts = ["我要", long, "退款"]
    encoded = encoder.encode_with_offsets(texts)
    assert [e.ids for e in encoded] == encoder.encode_ids(texts)
    assert [e.cut for e in encoded] == [False, True, False]
    assert [[text[s:t] for s, t in e.spans] for text, e in zip(texts, encoded, strict=True)][
        ::2
    ] == [["我", "要"], ["退", "款"]]
    kept = "".join(long[s:t] for s, t in encoded[1].spans)
    # head+tail: the first quarter of 6 tokens (1) and the last three quarters (5)
    expected = {"head": "我要退款我要", "tail": "我要退款谢谢", "head+tail": "我" + "要退款谢谢"}
    assert kept == expected[truncation]


def _cli(args: list[str], capsys) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    from fenlei.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_shows_words_for_and_against(predictors, capsys) -> None:  # type: ignore[no-untyped-def]
    run = str(predictors["lstm.v1"].run.run_dir)
    code, out, _ = _cli(["explain", run, "where is my parcel?", "我要退款", "--top-k", "2"], capsys)
    assert code == 0
    assert "1. " in out and "2. " in out and "integrated-gradients" in out
    assert out.count("for: ") == 2 and out.count("against: ") == 2
    assert "where is my parcel?" in out and "我要退款" in out
    code, out, _ = _cli(["explain", run, "refund " * 600], capsys)
    assert code == 0 and "note: cut to 400 tokens" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["  "], "error: text argument 1 '  ' is empty"),
        (["refund", "--target", "nope"], "error: target label 'nope' is not one of"),
    ],
)
def test_cli_refuses_with_one_line(args: list[str], message: str, predictors, capsys) -> None:  # type: ignore[no-untyped-def]
    run = str(predictors["linear.v2"].run.run_dir)
    code, _, err = _cli(["explain", run, *args], capsys)
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1


def test_cli_explains_a_file_into_jsonl(predictors, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    run = str(predictors["nbsvm.v1"].run.run_dir)
    table = tmp_path / "in.csv"
    table.write_text("text\nwhere is my parcel?\n我要退款\n", encoding="utf-8")
    out = tmp_path / "why.jsonl"
    code, _, err = _cli(["explain", run, "--file", str(table), "--out", str(out)], capsys)
    assert code == 0 and "wrote 2 explanations" in err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["row"] for r in rows] == [2, 3] and rows[1]["text"] == "我要退款"
    for r in rows:
        assert {"label", "predicted", "probability", "delta", "score", "base"} <= set(r)
        assert all(r["text"][t["start"] : t["end"]] == t["token"] for t in r["tokens"])
    table.write_text("text\nrefund\n   \n", encoding="utf-8")
    code, _, err = _cli(["explain", run, "-f", str(table), "-o", str(out)], capsys)
    assert code == 2 and "row 3" in err and "empty" in err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2  # the old file stays whole
    code, _, err = _cli(["explain", run, "--file", str(table)], capsys)
    assert code == 2 and "--file needs --out" in err


def test_members_of_a_mixture_explain_its_label_with_their_weights(predictors) -> None:  # type: ignore[no-untyped-def]
    from fenlei.explain import explain_members

    a, b = predictors["linear.v2"], predictors["lstm.v1"]
    probs = 0.3 * a.predict_proba(SAMPLES) + 0.7 * b.predict_proba(SAMPLES)
    mixed = explain_members([a, b], [0.3, 0.7], a.labels, SAMPLES, probs)
    for text, e, row in zip(SAMPLES, mixed, probs, strict=True):
        assert e.label == e.predicted == a.labels[int(row.argmax())]
        assert e.probability == pytest.approx(float(row.max()))
        (ea,) = a.explain([text], target=e.label)
        (eb,) = b.explain([text], target=e.label)
        assert e.score == pytest.approx(0.3 * ea.score + 0.7 * eb.score, abs=1e-5)
        assert sum(t.score for t in e.tokens) == pytest.approx(
            0.3 * sum(t.score for t in ea.tokens) + 0.7 * sum(t.score for t in eb.tokens), abs=1e-4
        )
        assert e.method == "ensemble"
    (targeted,) = explain_members(
        [a, b], [0.5, 0.5], a.labels, SAMPLES[:1], probs[:1], target="refund"
    )
    assert targeted.label == "refund"
