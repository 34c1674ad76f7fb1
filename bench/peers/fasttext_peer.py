"""fastText peer (``fasttext-numpy2-wheel``): supervised, word bigrams; or autotuned on valid.

English is lower-cased with punctuation split off; Chinese characters are space-separated (one
token per character), since fastText splits on whitespace only.
Run: ``bench/.venvs/fasttext/bin/python bench/peers/fasttext_peer.py task.json``.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import _common as c
import fasttext

PUNCT = re.compile(r"([.!?,'\"():;/<>\-])")


def prep(text: str, lang: str) -> str:
    text = text.replace("\n", " ").lower()
    if lang == "zh":
        return c.space_chars(text)
    return " ".join(PUNCT.sub(r" \1 ", text).split())


def write_file(path: Path, texts: list[str], labels: list[str], lang: str) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for text, label in zip(texts, labels, strict=True):
            fh.write(f"__label__{label} {prep(text, lang)}\n")


def main() -> None:
    task = c.load_task()
    opts = task.get("options", {})
    lang = task["lang"]
    tr_x, tr_y = c.read_table(task["train"])
    va_x, va_y = c.read_table(task["valid"])
    te_x, _ = c.read_table(task["test"])
    work = Path(task["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_file = work / "train.txt"
    write_file(train_file, tr_x, tr_y, lang)
    params: dict[str, object] = {"thread": int(os.environ.get("BENCH_THREADS", "2")), "seed": 13}
    if opts.get("autotune"):
        valid_file = work / "valid.txt"
        write_file(valid_file, va_x, va_y, lang)
        params.update(
            autotuneValidationFile=str(valid_file),
            autotuneDuration=int(opts.get("autotune_seconds", 120)),
        )
    else:
        params.update(
            wordNgrams=2,
            epoch=int(opts.get("epoch", 10)),
            lr=float(opts.get("lr", 0.5)),
            dim=int(opts.get("dim", 100)),
            minCount=1,
        )
    try:
        model = fasttext.train_supervised(input=str(train_file), verbose=0, **params)
    except RuntimeError as exc:  # autotune's final retrain with the best arguments can diverge
        raise SystemExit(f"fastText training failed: {exc} (parameters {params})") from exc
    train_seconds = time.perf_counter() - t0

    def predict(texts: list[str]) -> list[str]:
        labels, _ = model.predict([prep(t, lang) for t in texts])
        return [lab[0].removeprefix("__label__") for lab in labels]

    predictions = predict(te_x)
    timing = c.time_inference(predict, te_x)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        path = Path(tmp) / "model.bin"
        model.save_model(str(path))
        size = path.stat().st_size
    args = model.f.getArgs()
    chosen = {
        "epoch": args.epoch,
        "lr": args.lr,
        "dim": args.dim,
        "wordNgrams": args.wordNgrams,
        "bucket": args.bucket,
        "minn": args.minn,
        "maxn": args.maxn,
    }
    train_file.unlink()
    c.emit(
        {
            "predictions": predictions,
            "train_seconds": train_seconds,
            "model_bytes": size,
            "settings": chosen,
            "versions": {"fasttext": "fasttext-numpy2-wheel " + _version()},
            **timing,
        }
    )


def _version() -> str:
    from importlib.metadata import version

    return version("fasttext-numpy2-wheel")


if __name__ == "__main__":
    main()
