"""The classic Keras IMDB example, exactly: Tokenizer(10000) -> pad_sequences(500) ->
Embedding(10000, 64) -> LSTM(128) -> Dense(1, sigmoid); Adam 1e-3, binary cross-entropy,
10 epochs, batch 32 (``tensorflow-cpu`` + ``keras`` 3; the legacy Tokenizer from TF).

Binary tasks only (the second label in sorted order is the positive class).
Run: ``bench/.venvs/keras/bin/python bench/peers/keras_peer.py task.json``.
"""

from __future__ import annotations

import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common as c
import numpy as np
import tensorflow as tf

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(THREADS)

import keras  # noqa: E402
from tensorflow.keras.preprocessing.sequence import pad_sequences  # noqa: E402
from tensorflow.keras.preprocessing.text import Tokenizer  # noqa: E402


class EpochLog(keras.callbacks.Callback):
    """One line per epoch on stderr (the cell's log), so a time-boxed run shows its pace."""

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        seconds = time.perf_counter() - self.started
        acc = (logs or {}).get("accuracy", float("nan"))
        print(f"EPOCH {epoch + 1} seconds={seconds:.1f} train_accuracy={acc:.4f}", file=sys.stderr)
        sys.stderr.flush()


def main() -> None:
    task = c.load_task()
    opts = task.get("options", {})
    epochs = int(opts.get("epochs", 10))
    tr_x, tr_y = c.read_table(task["train"])
    te_x, _ = c.read_table(task["test"])
    labels = sorted(set(tr_y))
    assert len(labels) == 2, "the classic example is binary"
    y = np.array([labels.index(v) for v in tr_y], dtype="float32")
    keras.utils.set_random_seed(13)
    t0 = time.perf_counter()
    tok = Tokenizer(num_words=10000)
    tok.fit_on_texts(tr_x)
    x = pad_sequences(tok.texts_to_sequences(tr_x), maxlen=500)
    model = keras.Sequential(
        [
            keras.Input(shape=(None,), dtype="int32"),
            keras.layers.Embedding(10000, 64),
            keras.layers.LSTM(128),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[EpochLog()])
    train_seconds = time.perf_counter() - t0

    # one compiled graph for every batch size (calling the model eagerly runs the LSTM's
    # 500 steps in Python, ~100x slower)
    infer = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, 500), tf.int32)],
    )

    def predict(texts: list[str]) -> list[str]:
        seqs = pad_sequences(tok.texts_to_sequences(texts), maxlen=500).astype("int32")
        p = infer(tf.constant(seqs)).numpy().reshape(-1)
        return [labels[int(v >= 0.5)] for v in p]

    predictions: list[str] = []
    for i in range(0, len(te_x), 256):
        predictions.extend(predict(te_x[i : i + 256]))
    timing = c.time_inference(predict, te_x)
    path = Path(task["workdir"]) / "model.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    c.emit(
        {
            "predictions": predictions,
            "train_seconds": train_seconds,
            "model_bytes": path.stat().st_size,
            "settings": {"epochs": epochs, "batch_size": 32, "threads": THREADS},
            "train_accuracy_per_epoch": [float(a) for a in history.history["accuracy"]],
            "versions": {"tensorflow-cpu": version("tensorflow-cpu"), "keras": version("keras")},
            **timing,
        }
    )


if __name__ == "__main__":
    main()
