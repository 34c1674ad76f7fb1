"""The presets' settings: each a partial config tree merged over the defaults by
:func:`fenlei.config.load_config` (``fenlei train --preset NAME``). Plain data, with the
measurements behind each choice beside it."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    # The classic Keras example, exactly: Tokenizer(10000) -> pad(500) -> Embedding(10000, 64)
    # -> LSTM(128) -> Dense(1, sigmoid); Adam 1e-3, binary cross-entropy, 10 epochs, batch 32.
    # Keras pads and truncates at the front ("pre"), so the last 500 tokens are kept. Its
    # word-level Tokenizer is encoder.kind=word + drop_punctuation; on IMDB its epochs were
    # faster (39 vs 46 s) but test accuracy 0.860 against 0.861-0.875 for 10,000 WordPiece
    # pieces (bench/results/seed_imdb_experiments.json).
    "seed-lstm": {
        "encoder": {"vocab_size": 10000, "max_length": 500, "truncation": "tail"},
        "model": {
            "architecture": "lstm.v1",
            "embedding_dim": 64,
            "hidden_size": 128,
            "single_logit": True,
        },
        "train": {
            "epochs": 10,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 1e-3,
            "clip_grad_norm": None,
            "patience": None,
        },
    },
    "linear": {
        # fastText's recipe: whole words (each punctuation mark a word) and hashed word
        # bigrams in 2M buckets, a large vocabulary, big batches, 5 epochs with a linearly
        # decaying learning rate; the table is trained with sparse Adagrad. The table keeps
        # rows only for the buckets the training texts use (linear.py), so 2M buckets cost
        # sms_spam 35k rows, not 2M. Against 200k buckets of the older v1 hash and 10 epochs
        # (same machine, 1 thread): more accurate on all five benchmark sets (chnsenticorp
        # 0.9058 vs 0.9033, imdb 0.8994 vs 0.8932) and 1.3-3x quicker on the small ones.
        # Character n-grams (model.char_ngram_min=3) cost 30-70 % more time for no measured
        # gain on the benchmark sets. Whole words and batch 128 against 30,000 WordPiece
        # pieces and batch 32: 1.5-2.7x faster. A linear decay against a constant rate: +0.35
        # points on sst2, +0.33 on chnsenticorp.
        "encoder": {
            "kind": "word",
            "vocab_size": 200000,
            "min_frequency": 1,
            "max_length": 512,
            "truncation": "head+tail",  # IMDB 0.9028 vs 0.8994 for the first 512 tokens
        },
        "model": {
            "architecture": "linear.v2",
            "embedding_dim": 64,
            "ngram": 2,
            "buckets": 2_000_000,
            "char_ngram_min": 0,
        },
        "train": {
            "epochs": 5,
            "batch_size": 128,
            "min_steps_per_epoch": 32,  # under ~4,000 texts: batch 64 or 32
            "lr": 1e-2,
            "schedule": "linear",
            "patience": 3,
        },
    },
    "nbsvm": {
        # NBSVM (Wang & Manning 2012), logistic-loss form: distinct words and hashed word
        # n-grams, NB log-count ratios, an L2 logistic regression solved by scikit-learn for
        # each C, the best C on dev kept. Whole texts up to 4096 tokens (it costs little).
        # Character 3-5-grams of words on small training sets only (up to 3,000 texts per
        # label): bundled intents 0.693 -> 0.786 on test, en6-100 +2.8 points, within +-0.4
        # elsewhere, at 1.5-2.5x the training time; 2-5-grams scored the same at twice the
        # time. On SST-2 (30,000 per label) they cost a point and 3x the solve time
        # (docs/benchmarks.md, Defaults on small many-class data).
        "encoder": {
            "kind": "word",
            "vocab_size": 400000,
            "min_frequency": 1,
            "max_length": 4096,
            "truncation": "head+tail",
        },
        "model": {
            "architecture": "nbsvm.v1",
            "ngram": 3,
            "buckets": 4_000_000,
            "char_ngram_until": 3000,  # char_ngram_min/max: 3 and 5
        },
        "train": {"epochs": 1},
    },
    "lstm": {
        "encoder": {"vocab_size": 30000, "max_length": 400, "truncation": "tail"},
        "model": {
            "architecture": "lstm.v1",
            "embedding_dim": 128,
            "hidden_size": 128,
            "bidirectional": True,
            "pooling": "max",
            "dropout": 0.3,
        },
        "train": {"epochs": 8, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.01},
    },
    "minilm": {
        # head+tail: a long text keeps its first 32 and last 96 tokens. IMDB, 128 tokens,
        # 1 epoch: test 0.9011 against 0.8668 for the first 128 (dev 0.8888 vs 0.8604);
        # texts of up to 128 tokens are not cut either way.
        "encoder": {
            "kind": "pretrained",
            "max_length": 128,
            "lowercase": True,
            "truncation": "head+tail",
        },
        "model": {"architecture": "transformer.v1", "pretrained": "minilm", "dropout": 0.1},
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "lr": 5e-5,
            "weight_decay": 0.01,
            "warmup_ratio": 0.1,
            "schedule": "linear",
            "patience": 2,
        },
    },
}
