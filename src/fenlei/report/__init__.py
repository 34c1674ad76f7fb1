"""The HTML report of a run: its model card, data card, scores, calibration, mistakes.

Enter through :func:`build_report` (a finished run folder, as ``fenlei report`` does) or
the pipeline's ``write_report`` step, which writes ``report.html`` into every run folder
from what training holds in memory. The page is one self-contained file: figures are inline
PNGs, the CSS is inline, it has no script, and a Content-Security-Policy forbids scripts and
every request, so it opens offline and nothing in it can run. Every text shown (data, labels,
settings) goes through Jinja2's autoescaping.

Example:
    >>> build_report("runs/x", "runs/x/report.html")  # doctest: +SKIP
    PosixPath('runs/x/report.html')
"""

from __future__ import annotations

from pathlib import Path

from fenlei.artifact import update_manifest
from fenlei.report.build import (
    REPORT_FILE,
    TRAINING_LIMITS,
    ReportInputs,
    ReportLimits,
    file_hashes,
    inputs_from_run,
    render_html,
    training_inputs,
    write_html,
)

__all__ = [
    "REPORT_FILE",
    "TRAINING_LIMITS",
    "ReportInputs",
    "ReportLimits",
    "build_report",
    "file_hashes",
    "inputs_from_run",
    "render_html",
    "training_inputs",
    "write_html",
]


def build_report(
    run: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    issues: str | Path | None = None,
    limits: ReportLimits | None = None,
) -> Path:
    """Write the HTML report of the run folder ``run`` to ``out``.

    Args:
        run: a finished run folder (one model, or an ensemble with ``data``).
        out: the HTML file to write; inside ``run`` it is recorded in the run's manifest.
        data: a labelled table to score and show instead of the run's own dev/test split.
        issues: the ``.csv``/``.jsonl``/``.json`` of ``fenlei audit`` to show its top rows.
        limits: how many mistakes to explain and how long to spend on it and on latency.

    Returns:
        The path written.

    Raises:
        ArtifactError: ``run`` is missing or altered.
        ConfigError: ``run`` is an ensemble and no ``data`` is given.
        DataError: ``data`` or ``issues`` is unreadable, or ``data`` has unknown labels.

    Example:
        >>> build_report("runs/x", "x.html", data="test.csv")  # doctest: +SKIP
    """
    inputs = inputs_from_run(run, data=data, issues=issues)
    path = write_html(inputs, out, limits)
    root = Path(run)
    if path.resolve().parent == root.resolve():  # a file in the folder must be in its manifest
        assert inputs.manifest is not None
        update_manifest(root, inputs.manifest, path.name)
    return path
