"""Open any run folder by what it holds: the one place that reads a folder's kind.

The entry points that open a run folder (``fenlei predict``/``evaluate``/``serve``/``export``,
:meth:`fenlei.TextClassifier.load`, the service's loader) call :func:`open_predictor` or
:func:`export_run` instead of checking the kind themselves. Kinds: ``"single"`` (one
model; also folders written before the manifest had a kind) and ``"ensemble"``
(:mod:`fenlei.ensemble`).

Example:
    >>> predictor = open_predictor("runs/ens", backend="onnx", threads=1)  # doctest: +SKIP
    >>> predictor.info().kind  # doctest: +SKIP
    'ensemble'
"""

from __future__ import annotations

from pathlib import Path

from fenlei.artifact import MANIFEST, RUN_KIND, update_manifest, verify_manifest
from fenlei.ensemble import KIND as ENSEMBLE
from fenlei.ensemble import load_ensemble, member_dirs, read_json
from fenlei.errors import ArtifactError
from fenlei.onnx import export_onnx
from fenlei.predict import Predictor, ServablePredictor

__all__ = ["export_run", "open_predictor", "run_kind"]


def run_kind(run_dir: str | Path) -> str:
    """What the folder's manifest says it holds (``"single"`` when it says nothing or cannot
    be read: loading it then reports the problem).

    Example:
        >>> run_kind("runs/ens")  # doctest: +SKIP
        'ensemble'
    """
    try:
        raw = read_json(Path(run_dir) / MANIFEST)
    except ArtifactError:
        return RUN_KIND
    kind = raw.get("kind", RUN_KIND) if isinstance(raw, dict) else RUN_KIND
    return kind if isinstance(kind, str) else RUN_KIND


def open_predictor(
    run_dir: str | Path,
    *,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
) -> ServablePredictor:
    """Load a run folder of any kind, verified, as a predictor.

    Args:
        run_dir: a run folder (one model or an ensemble).
        backend, device, threads: as :meth:`fenlei.predict.Predictor.from_run` (for an
            ensemble, for every member).

    Raises:
        ArtifactError: the folder is missing, incomplete or altered (anywhere in it).
        ConfigError: ``device="cuda"`` without a GPU, or the ONNX backend on a GPU.

    Example:
        >>> open_predictor("runs/demo").predict(["where is my parcel?"])  # doctest: +SKIP
    """
    if run_kind(run_dir) == ENSEMBLE:
        return load_ensemble(run_dir, backend=backend, device=device, threads=threads)
    return Predictor.from_run(run_dir, backend=backend, device=device, threads=threads)


def export_run(run_dir: str | Path) -> list[Path]:
    """Export a run folder's model(s) to ONNX: ``model.onnx`` in the folder, or in every
    member of an ensemble (whose manifest then records each member's new manifest).

    Returns:
        The ``model.onnx`` files written.

    Raises:
        ArtifactError: the folder (or a member) is invalid, or an export disagrees with
            PyTorch.
        MissingExtraError: the ONNX packages are not installed.

    Example:
        >>> export_run("runs/ens")  # doctest: +SKIP
        [PosixPath('runs/ens/members/nbsvm/model.onnx'), ...]
    """
    root = Path(run_dir)
    if run_kind(root) != ENSEMBLE:
        return [export_onnx(root)]
    written = []
    for member in member_dirs(root):
        manifest = verify_manifest(root)
        try:
            written.append(export_onnx(member))
        finally:  # a failed export rewrites the member's manifest as well
            update_manifest(root, manifest, (member / MANIFEST).relative_to(root).as_posix())
    return written
