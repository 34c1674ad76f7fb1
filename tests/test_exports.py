"""The public API: ``fenlei.__all__`` is sorted, complete and importable."""

from __future__ import annotations

import fenlei


def test_all_is_sorted_and_importable() -> None:
    assert fenlei.__all__ == sorted(fenlei.__all__, key=str.lower) or fenlei.__all__ == sorted(
        fenlei.__all__
    )
    for name in fenlei.__all__:
        assert getattr(fenlei, name) is not None


def test_public_names_match_all() -> None:
    public = {n for n in fenlei._HOME} | {"__version__"}
    assert public == set(fenlei.__all__)


def test_ensemble_api_is_exported() -> None:
    from fenlei.combine import build_ensemble
    from fenlei.loader import open_predictor

    assert fenlei.build_ensemble is build_ensemble
    assert fenlei.open_predictor is open_predictor
