"""Build the bundled demo dataset from ``tools/demo_data_source.py``.

Run from the repository root::

    python tools/make_demo_data.py

The script checks the hand-written utterances (12 intents, English and Chinese, at least
``MIN_PER_CELL`` utterances per intent and language, no duplicates after lowercasing and
stripping), splits every (intent, language) stratum 70/15/15 into train/dev/test with a
fixed seed, and writes ``support_{train,dev,test}.csv`` (columns ``text,label,lang``) to
``src/fenlei/bundled/``. Only the standard library is used, and the output is byte-for-byte
reproducible.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent
OUT_DIR = REPO_ROOT / "src" / "fenlei" / "bundled"

if str(TOOLS_DIR) not in sys.path:
    sys.path.insert(0, str(TOOLS_DIR))

from demo_data_source import UTTERANCES  # noqa: E402

INTENTS: tuple[str, ...] = (
    "refund",
    "delivery_status",
    "cancel_order",
    "change_address",
    "password_reset",
    "billing",
    "complaint",
    "praise",
    "product_question",
    "opening_hours",
    "talk_to_human",
    "other",
)
LANGS: tuple[str, ...] = ("en", "zh")
MIN_PER_CELL = 50
SEED = 13
DEV_FRACTION = 0.15
TEST_FRACTION = 0.15
SPLITS: tuple[str, ...] = ("train", "dev", "test")
HEADER: tuple[str, str, str] = ("text", "label", "lang")

Row = tuple[str, str, str]


def check(utterances: dict[str, dict[str, list[str]]]) -> None:
    """Raise ``ValueError`` if the source data breaks any of the dataset's rules."""
    problems: list[str] = []
    if set(utterances) != set(INTENTS):
        missing = sorted(set(INTENTS) - set(utterances))
        extra = sorted(set(utterances) - set(INTENTS))
        problems.append(f"intent set mismatch: missing={missing} extra={extra}")
    seen: dict[str, tuple[str, str]] = {}
    for intent in INTENTS:
        by_lang = utterances.get(intent, {})
        if set(by_lang) != set(LANGS):
            problems.append(f"{intent}: languages {sorted(by_lang)}, expected {list(LANGS)}")
        for lang in LANGS:
            texts = by_lang.get(lang, [])
            if len(texts) < MIN_PER_CELL:
                problems.append(f"{intent}/{lang}: {len(texts)} utterances < {MIN_PER_CELL}")
            for text in texts:
                if not text.strip() or text != text.strip() or "\n" in text:
                    problems.append(f"{intent}/{lang}: badly formed utterance {text!r}")
                key = text.strip().lower()
                if key in seen:
                    first = "/".join(seen[key])
                    problems.append(f"duplicate {text!r} in {intent}/{lang} and {first}")
                else:
                    seen[key] = (intent, lang)
    if problems:
        raise ValueError("demo data check failed:\n  " + "\n  ".join(problems))


def split(utterances: dict[str, dict[str, list[str]]], seed: int = SEED) -> dict[str, list[Row]]:
    """Stratified split by (intent, language); rows are shuffled within each split."""
    rng = random.Random(seed)
    out: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for intent in INTENTS:
        for lang in LANGS:
            texts = list(utterances[intent][lang])
            rng.shuffle(texts)
            n = len(texts)
            n_dev = round(DEV_FRACTION * n)
            n_test = round(TEST_FRACTION * n)
            rows = [(text, intent, lang) for text in texts]
            out["dev"].extend(rows[:n_dev])
            out["test"].extend(rows[n_dev : n_dev + n_test])
            out["train"].extend(rows[n_dev + n_test :])
    for name in SPLITS:
        rng.shuffle(out[name])
    return out


def write_csv(path: Path, rows: list[Row]) -> None:
    """Write ``rows`` as UTF-8 CSV with a ``text,label,lang`` header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


def main() -> int:
    check(UTTERANCES)
    splits = split(UTTERANCES)
    for name in SPLITS:
        rows = splits[name]
        path = OUT_DIR / f"support_{name}.csv"
        write_csv(path, rows)
        per_lang = {lang: sum(1 for row in rows if row[2] == lang) for lang in LANGS}
        langs = " ".join(f"{lang}={count}" for lang, count in per_lang.items())
        print(f"{path.relative_to(REPO_ROOT)}: {len(rows)} rows ({langs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
