"""nbsvm: the network reproduces scikit-learn's NB-weighted logistic regression; a feature
counts once per text; the solve picks C on dev; multi-label and misuse."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fenlei.classifier import TextClassifier
from fenlei.config import load_config
from fenlei.errors import ConfigError
from fenlei.models import ModelSpec
from fenlei.models.nbsvm import (
    SOLVER_TOL,
    NBLogistic,
    build,
    char_lengths,
    nb_ratio,
    spec_extras,
    weighted_examples,
)
from fenlei.tokenize import pad_ids
from tests.conftest import family_overrides

POSITIVE = ["great film", "loved it", "a great great cast", "wonderful and moving", "superb"]
NEGATIVE = ["awful film", "hated it", "a dull cast", "boring and slow", "terrible plot"]


def _texts_as_ids() -> tuple[list[list[int]], np.ndarray]:
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(w, len(vocab) + 1) for w in t.split()] for t in POSITIVE + NEGATIVE]
    return ids, np.array([True] * len(POSITIVE) + [False] * len(NEGATIVE))


def test_repeated_features_count_once() -> None:
    model = NBLogistic(vocab_size=20, n_outputs=2, ngram=2, buckets=50)
    ids, mask = pad_ids([[3, 3, 3, 4], [3, 4]], pad_id=0)
    feats = model.features(ids, mask)
    kept = [sorted(int(f) for f in row if f != model.pad_index) for row in feats]
    assert len(kept[0]) == len(set(kept[0])) == 4  # 3, 4, "3 3", "3 4"
    assert len(kept[1]) == 3  # 3, 4, "3 4"
    assert set(kept[1]) <= set(kept[0])


def _words(n: int) -> dict[str, int]:
    """A vocabulary of ``n`` entries: padding, unknown, then words long enough for character
    n-grams (and a CJK character, which has none)."""
    words = ["[PAD]", "[UNK]", "中", *(f"word{chr(97 + i % 26)}{i}" for i in range(n - 3))]
    return {w: i for i, w in enumerate(words)}


@pytest.mark.parametrize(("ngram", "chars"), [(1, None), (3, None), (2, (2, 4))])
def test_feature_matrix_holds_the_features_of_each_padded_text(
    ngram: int, chars: tuple[int, int] | None
) -> None:
    # feature_matrix lays the texts end to end; the network's forward pads them: the same
    # features either way, each text's own (empty and one-token texts included)
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1, 30, size=n)) for n in (0, 1, 2, 7, 40, 3, 0, 11)]
    model = NBLogistic(
        vocab_size=30, n_outputs=2, ngram=ngram, buckets=97, char_ngrams=chars, vocab=_words(30)
    )
    matrix = model.feature_matrix(ids, pad_id=0, block_tokens=20)
    padded, mask = pad_ids(ids, pad_id=0)
    feats = model.features(padded, mask)
    assert matrix.shape == (len(ids), model.pad_index)
    for row, text in enumerate(feats):
        expected = sorted(int(f) for f in text if f != model.pad_index)
        assert sorted(matrix[row].indices.tolist()) == expected, row
    assert set(matrix.data.tolist()) <= {1.0}


def test_character_ngrams_only_on_small_training_sets() -> None:
    cfg = load_config("nbsvm", ["model.char_ngram_until=10", "model.buckets=500"]).model
    vocab = _words(40)
    spec = ModelSpec(vocab_size=40, pad_id=0, n_outputs=3)
    ids = [[3, 4, 5], [6, 7], [8]] * 10  # 30 texts, 3 labels: 10 per label
    small = build(cfg, spec, vocab, ids)
    assert isinstance(small, NBLogistic) and small.char_ngrams == (3, 5)
    assert spec_extras(small)["char_ngrams"] == (3, 5)
    # a word's character n-grams are features of the texts that hold it
    with_chars = small.features(*pad_ids([[3]], pad_id=0))
    assert (with_chars != small.pad_index).sum() > 1
    # one more text per label: none
    large = build(cfg, spec, vocab, [*ids, [3], [4], [5]])
    assert isinstance(large, NBLogistic) and large.char_ngrams is None
    assert "char_ngrams" not in spec_extras(large)
    # a tuner's probe, built from a sample, decides as the whole training set would
    sampled = replace(spec, train_texts=33)
    assert char_lengths(cfg, sampled, ids) is None
    assert "train_texts" not in sampled.to_dict()  # not saved
    off = load_config("nbsvm", ["model.char_ngram_until=0"]).model
    assert char_lengths(off, spec, ids) is None
    # a saved model keeps what it was trained with; older folders (no char_ngrams) have none
    assert char_lengths(off, replace(spec, char_ngrams=(3, 4)), None) == (3, 4)
    assert char_lengths(cfg, spec, None) is None


def test_character_ngrams_lift_the_bundled_intents(tmp_path, bundled) -> None:  # type: ignore[no-untyped-def]
    # the bundled support intents (80 training texts per label): English words' character
    # n-grams catch what whole words miss ("refunded", typos); 0.693 -> 0.786 on test here
    def test_accuracy(until: int) -> float:
        clf = TextClassifier(
            "nbsvm", overrides=[f"model.char_ngram_until={until}"], run_dir=tmp_path / str(until)
        )
        train, dev, test = bundled["train"], bundled["dev"], bundled["test"]
        clf.fit(
            train.texts,
            [ex.labels[0] for ex in train.examples],
            X_dev=dev.texts,
            y_dev=[ex.labels[0] for ex in dev.examples],
        )
        return clf.score(test.texts, [ex.labels[0] for ex in test.examples])

    assert test_accuracy(3000) > test_accuracy(0) + 0.05


def test_a_sweep_reuses_the_scaled_features_across_c(monkeypatch: pytest.MonkeyPatch) -> None:
    ids, positive = _texts_as_ids()
    features = NBLogistic(vocab_size=40, n_outputs=2, ngram=2, buckets=64).feature_matrix(
        ids, pad_id=0
    )
    weights = {}
    for cached in (True, False):
        model = NBLogistic(vocab_size=40, n_outputs=2, ngram=2, buckets=64)
        cache: dict = {} if cached else None  # type: ignore[assignment]
        for c in (0.5, 2.0):
            model.solve(features, [(1, positive)], c=c, seed=0, cache=cache)
        weights[cached] = model.table.weight.detach().clone()
        if cached:
            assert list(cache) == [1]
    torch.testing.assert_close(weights[True], weights[False])
    monkeypatch.setattr("fenlei.models.nbsvm.SCALED_CACHE_BYTES", 0)
    cache = {}
    NBLogistic(vocab_size=40, n_outputs=2, ngram=2, buckets=64).solve(
        features, [(1, positive)], c=1.0, cache=cache
    )
    assert cache == {}  # over the budget: rebuilt for each C instead


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_logits_equal_sklearn_on_the_nb_scaled_features(n_outputs: int) -> None:
    ids, positive = _texts_as_ids()
    model = NBLogistic(vocab_size=40, n_outputs=n_outputs, ngram=2, buckets=64)
    features = model.feature_matrix(ids, pad_id=0)
    model.solve(features, [(n_outputs - 1, positive)], c=2.0, seed=0)

    ratio = nb_ratio(features, positive, alpha=1.0)
    reference = LogisticRegression(
        C=2.0, solver="liblinear", dual=True, tol=SOLVER_TOL, max_iter=1000, random_state=0
    )
    reference.fit(features.multiply(ratio).tocsr(), positive)
    expected = reference.predict_proba(features.multiply(ratio).tocsr())[:, 1]

    padded, mask = pad_ids(ids, pad_id=0)
    logits = model.eval()(padded, mask).detach().double()
    prob = torch.sigmoid(logits[:, 0] if n_outputs == 1 else logits[:, 1] - logits[:, 0])
    np.testing.assert_allclose(prob.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_each_c_is_one_record_and_the_best_on_dev_is_kept(tmp_path, bundled) -> None:  # type: ignore[no-untyped-def]
    preset, overrides = family_overrides("nbsvm.v1")
    overrides = [o for o in overrides if not o.startswith("model.nb_c")]
    overrides.append("model.nb_c=[0.001,1.0,30.0]")
    clf = TextClassifier(preset, overrides=overrides, run_dir=tmp_path / "run")
    clf.fit(
        bundled["train"].texts,
        [ex.labels[0] for ex in bundled["train"].examples],
        X_dev=bundled["dev"].texts,
        y_dev=[ex.labels[0] for ex in bundled["dev"].examples],
    )
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["param"]["c"] for r in records] == [0.001, 1.0, 30.0]
    accuracies = [r["dev"]["accuracy"] for r in records]
    assert accuracies[0] < max(accuracies)  # C=0.001 all but ignores the features
    best = [r for r in records if r["is_best"]][-1]
    assert best["dev"]["accuracy"] == max(accuracies)
    dev = bundled["dev"]
    assert clf.score(dev.texts, [ex.labels[0] for ex in dev.examples]) == pytest.approx(
        max(accuracies)
    )


def test_multi_label_gives_one_sigmoid_per_label(tmp_path) -> None:  # type: ignore[no-untyped-def]
    texts = ["refund please", "late delivery", "refund my late delivery", "thanks"] * 3
    labels = [["refund"], ["delivery"], ["refund", "delivery"], ["other"]] * 3
    preset, overrides = family_overrides("nbsvm.v1")
    clf = TextClassifier(preset, overrides=overrides, run_dir=tmp_path / "run")
    clf.fit(texts, labels, X_dev=texts, y_dev=labels)
    probs = clf.predict_proba(["refund my late delivery"])[0]
    names = list(clf.classes_)
    assert probs[names.index("refund")] > 0.5 and probs[names.index("delivery")] > 0.5
    assert probs[names.index("other")] < 0.5


def test_augmentation_is_refused_with_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    preset, overrides = family_overrides("nbsvm.v1")
    clf = TextClassifier(preset, overrides=[*overrides, "augment.delete=0.1"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match="augment"):
        clf.fit(POSITIVE + NEGATIVE, ["pos"] * 5 + ["neg"] * 5, X_dev=POSITIVE, y_dev=["pos"] * 5)


def test_one_c_may_be_given_as_a_number() -> None:
    from fenlei.config import load_config

    assert load_config("nbsvm", ["model.nb_c=0.5"]).model.nb_c == [0.5]
    with pytest.raises(ConfigError, match="nb_c"):
        load_config("nbsvm", ["model.nb_c=[0.1,-1]"])


def test_soft_targets_weigh_each_text_as_both_examples() -> None:
    ids, positive = _texts_as_ids()
    features = NBLogistic(vocab_size=40, n_outputs=2, ngram=2, buckets=64).feature_matrix(
        ids, pad_id=0
    )
    # a boolean target and the same target as probabilities count the same features
    np.testing.assert_array_equal(
        nb_ratio(features, positive, 1.0), nb_ratio(features, positive.astype(float), 1.0)
    )
    rows, target, weight = weighted_examples(features, positive)
    assert rows is features and weight is None
    share = np.where(positive, 0.75, 0.0)
    share[0] = 1.0
    rows, target, weight = weighted_examples(features, share)
    n_soft = int((share > 0).sum())  # texts at 0.75 appear twice, at 0 or 1 once
    assert rows.shape[0] == len(share) + n_soft - 1
    assert target.sum() == n_soft and weight is not None
    np.testing.assert_allclose(weight.sum(), len(share))
    expected = np.concatenate([share[share > 0], 1 - share[share < 1]])
    np.testing.assert_allclose(weight, expected)
