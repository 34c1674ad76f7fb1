"""fenlei.report: the HTML report written at training and by `fenlei report`.

One tiny linear run on mostly Chinese texts whose texts and labels carry markup
(``<script>``, ``<img onerror>``) serves every test; the browser test opens the report in
headless Chromium (offline) and checks that nothing in it runs.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fenlei.cli import main
from fenlei.cli.reporting import report
from fenlei.errors import DataError
from fenlei.explain import Explanation, TokenScore
from fenlei.report import REPORT_FILE, build_report
from fenlei.report.card import data_card, language_of
from fenlei.report.sections import read_label_issues, segments, top_confusions

SCRIPT_LABEL = 'x"><script>window.__pwned = "label"</script>'
LABELS = ("好评", "<b>差评</b>", SCRIPT_LABEL)
MARKUP = (
    '<img src=x onerror="window.__pwned = 1">',
    "<script>window.__pwned = 2</script>",
    "</div><style>body{display:none}</style>",
)
PHRASES = {
    "好评": ["这个产品很好用", "质量不错，非常满意", "great value, love it"],
    "<b>差评</b>": ["太差了，退货", "质量很差不满意", "broken on arrival"],
    SCRIPT_LABEL: ["物流什么时候到", "快递还没到", "where is my parcel"],
}
TINY = [
    "train.epochs=8",
    "train.lr=0.05",
    "train.threads=1",
    "model.buckets=500",
    "encoder.min_frequency=1",
]


def _table(path: Path, n: int, offset: int) -> Path:
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        text = f"{PHRASES[label][(i // 3) % 3]} {MARKUP[i % len(MARKUP)]} #{i + offset}"
        if i % 5 == 4:  # some labels the text disagrees with: confident mistakes to show
            label = LABELS[(i + 1) % 3]
        rows.append({"text": text, "label": label})
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def markup_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained with `fenlei train` (train + dev, no test): its report.html is
    the one training writes. The confusion-matrix plot's split is recorded beside it."""
    import fenlei.evaluate

    folder = tmp_path_factory.mktemp("report")
    train = _table(folder / "train.csv", 90, 0)
    dev = _table(folder / "dev.csv", 30, 1000)
    drawn: list[str] = []
    real = fenlei.evaluate.draw_confusion

    def spy(fig: Any, matrix: Any, labels: Any, split: str) -> None:
        drawn.append(split)
        real(fig, matrix, labels, split)

    run = folder / "run"
    args = ["train", str(train), "--dev", str(dev), "--out", str(run)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fenlei.evaluate, "draw_confusion", spy)
        assert main([*args, *(a for s in TINY for a in ("--set", s))]) == 0
    (folder / "drawn.json").write_text(json.dumps(drawn))
    return run


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_training_writes_the_report_and_lists_it_in_the_manifest(markup_run: Path) -> None:
    from fenlei.predict import Predictor

    manifest = json.loads((markup_run / "manifest.json").read_text())
    assert REPORT_FILE in manifest["files"]
    Predictor.from_run(markup_run)  # verifies every file against the manifest
    html = _html(markup_run / REPORT_FILE)
    for section in ("model-card", "data", "scores", "calibration", "pr", "training", "mistakes"):
        assert f'id="{section}"' in html
    assert '<html lang="zh">' in html  # the texts are mostly Chinese
    assert "Confusion matrix" not in html or "data:image/png;base64," in html


def test_the_confusion_plot_names_the_split_it_shows(markup_run: Path) -> None:
    """A run without a test split drew dev's matrix titled "(test)"."""
    assert json.loads((markup_run.parent / "drawn.json").read_text()) == ["dev"]


def test_every_text_and_label_is_escaped(markup_run: Path) -> None:
    html = _html(markup_run / REPORT_FILE)
    assert "<script" not in html
    assert "<img src=x" not in html
    assert "<b>差评" not in html and "&lt;b&gt;差评&lt;/b&gt;" in html
    assert "&lt;script&gt;window.__pwned = &#34;label&#34;&lt;/script&gt;" in html  # a label
    assert "&lt;img" in html or "&lt;script" in html.split('id="mistakes"')[1]  # a text
    assert "<style>body" not in html
    assert "default-src 'none'" in html  # and a policy that would stop a script anyway
    assert 'src="http' not in html and 'href="http' not in html


def test_fenlei_report_with_data_and_audit_updates_the_manifest(
    markup_run: Path, tmp_path: Path
) -> None:
    from fenlei.predict import Predictor

    issues = tmp_path / "issues.csv"
    with issues.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "row", "text", "given_label", "suggested_label", "label_quality"])
        writer.writerow([1, 7, "<script>window.__pwned = 4</script>", SCRIPT_LABEL, "好评", 0.01])
    data = _table(tmp_path / "more.csv", 12, 5000)
    run = tmp_path / "run"
    shutil.copytree(markup_run, run)
    out = run / "again.html"
    # the command's function as `fenlei report RUN --data ... --audit ... --out ... --mistakes 2`
    report(run, out_file=out, data=data, audit=issues, mistakes=2)
    Predictor.from_run(run)  # the new file is in the manifest
    html = _html(out)
    assert "more.csv" in html and "issues.csv" in html
    assert "&lt;script&gt;window.__pwned = 4&lt;/script&gt;" in html
    assert "<script" not in html


def test_report_refuses_a_bad_audit_file(markup_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "issues.txt"
    bad.write_text("nope")
    with pytest.raises(DataError, match=r"issues\.txt"):
        build_report(markup_run, tmp_path / "r.html", issues=bad)
    assert not (tmp_path / "r.html").exists()


def test_no_report_skips_it(tmp_path: Path) -> None:
    train = _table(tmp_path / "train.csv", 45, 0)
    run = tmp_path / "run"
    argv = ["train", str(train), "--out", str(run), "--no-report", "--set", "eval.plots=false"]
    assert main([*argv, *(a for s in TINY for a in ("--set", s))]) == 0
    assert (run / "manifest.json").is_file() and not (run / REPORT_FILE).exists()


def test_nothing_in_the_report_runs_in_chromium(markup_run: Path, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    outside: list[str] = []
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    def route(r: Any) -> None:
        if r.request.url.startswith(("file://", "data:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto((markup_run / REPORT_FILE).as_uri())
    assert page.evaluate("window.__pwned") is None
    assert dialogs == [] and outside == []
    body = page.inner_text("body")
    assert "<script>window.__pwned = 2</script>" in body  # shown as text
    assert "<b>差评</b>" in body
    images = page.locator("img")
    assert images.count() >= 4
    assert all(images.nth(i).evaluate("i => i.naturalWidth > 0") for i in range(images.count()))
    # readable on a phone: the page itself does not scroll sideways (wide tables scroll inside)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.close()


def test_language_of_and_the_data_card() -> None:
    from fenlei.data import Dataset

    assert language_of("这个产品很好用") == "zh"
    assert language_of("where is my parcel") == "en"
    assert language_of("12345 !!") == "other"
    train = Dataset.from_lists(["Great  film", "great film", "差"], ["a", "a", "b"])
    dev = Dataset.from_lists(["GREAT film", "new one"], ["a", "b"])
    card = data_card({"train": train, "dev": dev})
    by = {s.name: s for s in card.splits}
    assert by["train"].duplicates == 1 and by["train"].in_train is None
    assert by["dev"].in_train == 1 and by["dev"].duplicates == 0
    assert card.languages.lang == "en"


def test_duplicates_are_found_across_unicode_spaces_widths_and_case() -> None:
    from fenlei.report.card import normalise

    assert normalise("\u3000 Great\xa0\tＦＩＬＭ\u2028 ") == "great film"
    assert normalise("\u200b") == "\u200b"  # a zero-width space is not a space
    assert normalise("") == ""


def test_top_confusions_and_highlight_segments() -> None:
    matrix = np.array([[5, 3, 0], [1, 4, 0], [0, 6, 2]])
    assert top_confusions(matrix, ["a", "b", "c"], k=2) == [
        ("c", "b", 6, 0.75),
        ("a", "b", 3, 0.375),
    ]
    text = "<b>x</b> good"
    tokens = (TokenScore("<b>x</b>", 0, 8, -0.5), TokenScore("good", 9, 13, 1.0))
    explanation = Explanation(text, "a", "a", 0.9, tokens, 0.5, 0.0)
    segs = segments(text, explanation)
    assert "".join(s.text for s in segs) == text
    assert segs[0].style.startswith("background:rgba(33,102,172")  # against: blue
    assert segs[-1].style.startswith("background:rgba(230,97,1,0.75")  # strongest towards
    assert [s.text for s in segments("x" * 20, None, limit=5)] == ["xxxxx", "…"]


def test_read_label_issues_formats(tmp_path: Path) -> None:
    rows = [{"rank": 1, "row": 3, "text": "t", "given_label": "a"}]
    (tmp_path / "i.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "i.json").write_text(json.dumps({"n": 1, "rows": rows}))
    for name in ("i.jsonl", "i.json"):
        columns, shown, total = read_label_issues(tmp_path / name)
        assert columns == ["rank", "row", "text", "given_label"] and total == 1
        assert shown[0]["row"] == "3"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="one object per label issue"):
        read_label_issues(tmp_path / "bad.json")
