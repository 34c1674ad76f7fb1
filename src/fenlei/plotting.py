"""Figures drawn with matplotlib's object-oriented API in fonts that have Chinese glyphs.

Enter through :func:`render` (draw into a fresh :class:`~matplotlib.figure.Figure`, get PNG
bytes) or :func:`save_png`; both draw inside :func:`fonts`, which puts a CJK font behind
DejaVu Sans for the figure's text. Matplotlib's own fonts have no Chinese glyphs: a label
such as ``退款`` came out as empty boxes with a "Glyph ... missing from font(s)" warning.

fenlei depends on ``pylopdf-fonts-zh-cn`` (Noto Sans SC, SIL Open Font License 1.1, from
PyPI), which is registered with matplotlib's font manager on first use; fonts of the same
kind already on the machine (:data:`CJK_FONTS`) come after it. Nothing here touches pyplot,
the caller's backend or its rcParams outside the drawing (a temporary ``rc_context``), so it
is safe in a server, a notebook or a test.

Example:
    >>> png = render(lambda fig: fig.add_subplot().set_title("退款"), size=(3, 2))
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import base64
import functools
import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "BASE_FONT",
    "CJK_FONTS",
    "data_uri",
    "font_families",
    "fonts",
    "render",
    "save_png",
]

logger = logging.getLogger(__name__)

BASE_FONT = "DejaVu Sans"  # matplotlib's own: Latin, Greek, Cyrillic, symbols
# Fonts with Chinese glyphs, in the order tried after BASE_FONT: the one fenlei installs,
# then common system fonts (Linux, Windows, macOS); only those found are used.
CJK_FONTS = (
    "Noto Sans SC",
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "SimHei",
)


@functools.cache
def font_families() -> tuple[str, ...]:
    """The font families a figure's text is set in: :data:`BASE_FONT`, then the
    :data:`CJK_FONTS` that matplotlib can find (the bundled Noto Sans SC registered first)."""
    from matplotlib import font_manager

    try:
        import pylopdf_fonts_zh_cn

        font_manager.fontManager.addfont(str(pylopdf_fonts_zh_cn.sans_path()))
    except (ImportError, OSError, RuntimeError) as exc:  # a broken install draws boxes, not fails
        logger.warning("the bundled CJK font is unavailable (%s): Chinese may draw as boxes", exc)
    known = {f.name for f in font_manager.fontManager.ttflist}
    return (BASE_FONT, *(name for name in CJK_FONTS if name in known))


@contextmanager
def fonts() -> Iterator[None]:
    """Draw with :func:`font_families` (falling back glyph by glyph) inside this block.

    Text objects read the font family when they are created and tick labels when they are
    drawn, so both a figure's drawing and its saving belong inside the block.
    """
    import matplotlib

    with matplotlib.rc_context({"font.family": list(font_families()), "axes.unicode_minus": False}):
        yield


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    # No layout engine: constrained layout cost 2-3x the drawing; the saved image is
    # trimmed to what was drawn instead (bbox_inches="tight").
    return Figure(figsize=size)


def render(
    draw: Callable[[Figure], object], *, size: tuple[float, float] = (6.4, 4.0), dpi: int = 100
) -> bytes:
    """Draw a new figure of ``size`` inches with ``draw(fig)`` and return it as PNG bytes.

    Example:
        >>> png = render(lambda fig: fig.add_subplot().plot([1, 2]), size=(2, 2), dpi=50)
    """
    with fonts():
        fig = _figure(size)
        draw(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    return buffer.getvalue()


def save_png(
    draw: Callable[[Figure], object],
    path: Path,
    *,
    size: tuple[float, float] = (6.4, 4.0),
    dpi: int = 110,
) -> None:
    """Like :func:`render`, written to ``path`` (wrap it in an atomic write for a run folder).

    Example:
        >>> save_png(lambda fig: fig.add_subplot().plot([1, 2]), Path("x.png"))  # doctest: +SKIP
    """
    path.write_bytes(render(draw, size=size, dpi=dpi))


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI, for an ``<img>`` in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
