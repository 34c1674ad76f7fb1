"""fenlei.plotting: Chinese labels render (no missing glyphs), and the caller's matplotlib
state is left as it was."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib
import pytest
from matplotlib.figure import Figure

from fenlei.plotting import BASE_FONT, data_uri, font_families, fonts, render, save_png


def _chinese_bars(fig: Figure) -> None:
    ax = fig.add_subplot()
    ax.bar(["退款", "物流", "账单 billing"], [3, 2, 1])
    ax.set_title("分类：混淆矩阵")


def test_the_bundled_cjk_font_is_found() -> None:
    families = font_families()
    assert families[0] == BASE_FONT
    assert "Noto Sans SC" in families


def test_chinese_labels_draw_without_a_missing_glyph_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" is a UserWarning
        png = render(_chinese_bars, size=(3, 2), dpi=40)
    assert png.startswith(b"\x89PNG")


def test_without_the_fallback_the_same_figure_misses_glyphs() -> None:
    """The test above would pass vacuously if matplotlib never warned."""
    fig = Figure(figsize=(3, 2))
    with matplotlib.rc_context({"font.family": [BASE_FONT]}):
        _chinese_bars(fig)
        with pytest.warns(UserWarning, match="missing from font"):
            fig.savefig(io.BytesIO(), format="png", dpi=30)


def test_drawing_leaves_the_backend_and_rc_params_alone() -> None:
    backend = matplotlib.get_backend()
    family = list(matplotlib.rcParams["font.family"])
    render(_chinese_bars, size=(2, 2), dpi=30)
    with fonts():
        assert list(matplotlib.rcParams["font.family"]) == list(font_families())
    assert matplotlib.get_backend() == backend
    assert list(matplotlib.rcParams["font.family"]) == family


def test_save_png_and_data_uri(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.png"
    save_png(_chinese_bars, path, size=(2, 2), dpi=30)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert data_uri(b"\x89PNG").startswith("data:image/png;base64,")


def test_a_many_label_confusion_matrix_stays_small(tmp_path: Path) -> None:
    import struct

    from fenlei.evaluate import MAX_CONFUSION_INCHES, plot_confusion

    n = 151  # a 151-label set drew a 7,465-pixel square with a number in each of 22,801 cells
    labels = tuple(f"intent_{i}" for i in range(n))
    matrix = [[5 if i == j else (1 if j == (i + 1) % n else 0) for j in range(n)] for i in range(n)]
    path = tmp_path / "confusion.png"
    plot_confusion(matrix, labels, path, split="banking test")
    width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the PNG's IHDR
    assert max(width, height) <= MAX_CONFUSION_INCHES * 110 * 1.05
