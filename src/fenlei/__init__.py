"""fenlei (分类): from a labelled table of text to a trained, evaluated, served classifier."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
