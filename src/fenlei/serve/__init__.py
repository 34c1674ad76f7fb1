"""The HTTP service: FastAPI app factory, micro-batching, Prometheus metrics, drift, a page.

Enter through :func:`fenlei.serve.app.create_app` (tests, embedding) or
:func:`fenlei.serve.app.serve` (what ``fenlei serve RUN...`` calls). Needs the ``serve``
extra: ``pip install 'fenlei[serve]'``.
"""

from __future__ import annotations

__all__: list[str] = []
