"""Ensembles: several run folders behind one predictor, kept as one run folder.

:class:`EnsemblePredictor` has the :class:`~fenlei.predict.ServablePredictor` surface: its
probabilities are the weighted mean of its members' (each member tokenizes with its own
encoder), decided by the first member's :class:`~fenlei.decision.DecisionRule`. Its input
statistics for drift (:meth:`~EnsemblePredictor.text_stats`) are the first member's, and
the ensemble's ``reference.json`` is measured the same way, so they agree.

The folder (written by :func:`fenlei.combine.build_ensemble`, read by
:func:`load_ensemble`)::

    manifest.json      kind "ensemble": the files below and each member's manifest.json
    ensemble.json      members in order (name, weight, source, architecture), weighting
    labels.json        as in a one-model run folder
    metrics.json       the ensemble's and each member's scores on dev (and test)
    reference.json     drift reference of the ensemble, measured on dev
    members/<name>/    each member: a complete run folder with its own manifest

Each member's manifest covers its files and the top manifest covers the members'
manifests, so a changed file anywhere is refused at load. A member is one model: an
ensemble of ensembles is refused when built (list the inner members instead).

Example:
    >>> load_ensemble("runs/ens").predict(["很好吃"])[0].label  # doctest: +SKIP
    'pos'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fenlei._version import __version__
from fenlei.artifact import MANIFEST, MAX_JSON_BYTES, verify_manifest
from fenlei.decision import DecisionRule, decide
from fenlei.errors import ArtifactError, ConfigError
from fenlei.explain import Explanation, explain_members
from fenlei.predict import (
    ONNX_FILE,
    Prediction,
    Predictor,
    PredictorInfo,
    Scored,
    ServablePredictor,
    TextStats,
    headline_metrics,
)
from fenlei.run_schema import LabelsFile, invalid, validate

__all__ = [
    "ENSEMBLE_FILE",
    "KIND",
    "MAX_MEMBERS",
    "MEMBERS_DIR",
    "EnsembleFile",
    "EnsemblePredictor",
    "MemberEntry",
    "load_ensemble",
    "member_dirs",
    "read_json",
]

KIND = "ensemble"
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
MAX_MEMBERS = 64


# ---------------------------------------------------------------- the predictor


def _joined(values: Sequence[str]) -> str:
    """``"onnx"`` when every member says so, else the distinct values: ``"onnx+torch"``."""
    return "+".join(dict.fromkeys(values))


class EnsemblePredictor:
    """The weighted mean of several predictors' probabilities, with their labels.

    Args:
        members: two or more predictors with the same labels (in any order) and rule kind.
        weights: one non-negative weight per member (normalised to sum 1).
        names: the members' names (default ``member0``, ``member1``, ...).
        run_dir: the ensemble's run folder, when loaded from one (drift reads its
            ``reference.json``).
        version: what :meth:`info` reports as the version.
        metrics: the ensemble's ``metrics.json``.

    Raises:
        ConfigError: fewer than two members, labels that differ, or unusable weights.

    Example:
        >>> ens = EnsemblePredictor([p1, p2], [0.5, 0.5])  # doctest: +SKIP
        >>> ens.predict_proba(["where is my parcel?"])  # doctest: +SKIP
    """

    def __init__(
        self,
        members: Sequence[ServablePredictor],
        weights: Sequence[float] | np.ndarray,
        *,
        names: Sequence[str] | None = None,
        run_dir: Path | None = None,
        version: str | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = tuple(members)
        self.names = tuple(names or (f"member{i}" for i in range(len(members))))
        if len(self.names) != len(self.members):
            raise ConfigError(f"{len(self.names)} names for {len(self.members)} members")
        self.weights = _normalised(weights, len(self.members))
        first = self.members[0]
        self.labels: tuple[str, ...] = tuple(first.labels)
        self.rule: DecisionRule = first.rule
        for name, member in zip(self.names[1:], self.members[1:], strict=True):
            if set(member.labels) != set(self.labels) or member.rule.multi_label != (
                self.rule.multi_label
            ):
                raise ConfigError(
                    f"member {name} has labels {', '.join(member.labels)}; member "
                    f"{self.names[0]} has {', '.join(self.labels)}: members must share labels"
                )
        # member columns -> the ensemble's label order (None: already in it)
        self._orders = [
            None
            if tuple(m.labels) == self.labels
            else np.array([list(m.labels).index(lab) for lab in self.labels])
            for m in self.members
        ]
        self.run_dir = run_dir
        self.version = version or f"{__version__}+unknown"
        self.metrics = dict(metrics or {})

    def _aligned(self, i: int, probs: np.ndarray) -> np.ndarray:
        order = self._orders[i]
        return probs if order is None else probs[:, order]

    def member_probas(
        self, texts: Sequence[str], *, batch_size: int | None = None
    ) -> list[np.ndarray]:
        """Every member's probabilities (N, C), columns in :attr:`labels` order."""
        return [
            self._aligned(i, m.predict_proba(texts, batch_size=batch_size))
            for i, m in enumerate(self.members)
        ]

    def mix(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """The weighted mean (N, C) of the members' probabilities (as :meth:`member_probas`
        gives them)."""
        total = sum(
            w * np.asarray(p, dtype=np.float64) for w, p in zip(self.weights, probs, strict=True)
        )
        return np.asarray(total, dtype=np.float32)

    def _mixed(self, first: np.ndarray, texts: Sequence[str], batch_size: int | None) -> np.ndarray:
        """The weighted mean, given the first member's probabilities; a member of weight 0
        does not run."""
        probs = [self._aligned(0, first)]
        for i, member in enumerate(self.members[1:], start=1):
            ran = self.weights[i] > 0
            p = member.predict_proba(texts, batch_size=batch_size) if ran else None
            probs.append(self._aligned(i, p) if p is not None else np.zeros_like(probs[0]))
        return self.mix(probs)

    def predict_proba(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """The weighted mean of the members' probabilities (N, C), columns in :attr:`labels`
        order; ``batch_size`` texts per model call of each member."""
        first = self.members[0].predict_proba(texts, batch_size=batch_size)
        return self._mixed(first, texts, batch_size)

    def score(self, texts: Sequence[str], *, batch_size: int | None = None) -> Scored:
        """Probabilities and input statistics (the first member's tokenization)."""
        scored = self.members[0].score(texts, batch_size=batch_size)
        return Scored(self._mixed(scored.probs, texts, batch_size), scored.stats)

    def text_stats(self, texts: Sequence[str]) -> TextStats:
        """Length and unknown-token rate of every text, as the first member measures them."""
        return self.members[0].text_stats(texts)

    def predict(self, texts: Sequence[str], *, batch_size: int | None = None) -> list[Prediction]:
        """The decision of :attr:`rule` on the mean probabilities, for every text."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        return [
            Prediction(
                label=d.label,
                score=d.score,
                probs={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
                labels=d.labels,
            )
            for d, row in zip(decide(probs, self.labels, self.rule), probs, strict=True)
        ]

    def explain(self, texts: Sequence[str], *, target: str | None = None) -> list[Explanation]:
        """A score per word of each text towards the ensemble's label (or ``target``): the
        weighted sum of the members' explanations of that label (see
        :func:`fenlei.explain.explain_members`; each member explains with its own method).

        Raises:
            DataError: ``target`` is not one of :attr:`labels`, or a text has no tokens.
            ConfigError: a member cannot explain.

        Example:
            >>> ensemble.explain(["送餐太慢了"])[0].top(3)  # doctest: +SKIP
        """
        texts = list(texts)
        probs = self.predict_proba(texts)
        return explain_members(self.members, self.weights, self.labels, texts, probs, target=target)

    def info(self) -> PredictorInfo:
        """Kind ``"ensemble"``, the members and their weights, the members' architectures,
        backends and devices joined with ``+``, and the ensemble's headline metrics."""
        infos = [m.info() for m in self.members]
        chunks = [i.serve_chunk for i in infos if i.serve_chunk is not None]
        return PredictorInfo(
            labels=self.labels,
            multi_label=self.rule.multi_label,
            architecture=_joined([i.architecture for i in infos]),
            backend=_joined([i.backend for i in infos]),
            device=_joined([i.device for i in infos]),
            version=self.version,
            preset=KIND,
            metrics=headline_metrics(self.metrics),
            serve_chunk=min(chunks) if chunks else None,
            batch_size=min(i.batch_size for i in infos),
            kind=KIND,
            run_dir=self.run_dir,
            data=infos[0].data,
            members={n: float(w) for n, w in zip(self.names, self.weights, strict=True)},
            max_unknown_rate=min(i.max_unknown_rate for i in infos),
        )


def _normalised(weights: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(
            f"ensemble weights must be {n} non-negative numbers with a positive sum, "
            f"got {list(weights)}"
        )
    normalised: np.ndarray = w / w.sum()
    return normalised


# ---------------------------------------------------------------- the folder


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class MemberEntry(_Strict):
    """One member in ``ensemble.json``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", description="Folder name.")
    weight: float = Field(ge=0.0, le=1.0, description="Weight in the mean.")
    source: str = Field(max_length=4096, description="The run folder it was copied from.")
    architecture: str = Field(max_length=200, description="Its model family.")


class EnsembleFile(_Strict):
    """``ensemble.json``: the members in order, and how their weights were set."""

    format_version: Literal[1] = 1
    weighting: Literal["equal", "tuned"]
    members: list[MemberEntry] = Field(min_length=2, max_length=MAX_MEMBERS)
    tuning: dict[str, float | int | str] | None = None

    @field_validator("members")
    @classmethod
    def _distinct_weighted(cls, members: list[MemberEntry]) -> list[MemberEntry]:
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names repeat: {names}")
        if abs(sum(m.weight for m in members) - 1.0) > 1e-3:
            raise ValueError("member weights must sum to 1")
        return members


def read_json(path: Path) -> Any:
    """A JSON file of a run folder (at most ``MAX_JSON_BYTES``).

    Raises:
        ArtifactError: too large, unreadable or not JSON.
    """
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise invalid(path, f"larger than {MAX_JSON_BYTES >> 20} MiB")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc


def _version(manifest: Mapping[str, Any]) -> str:
    """fenlei version + 12 hex of the manifest's file list, which pins every member's
    manifest and so its weights."""
    listing = json.dumps(manifest.get("files", {}), sort_keys=True).encode()
    return (
        f"{manifest.get('fenlei_version', __version__)}+{hashlib.sha256(listing).hexdigest()[:12]}"
    )


def _check_listing(root: Path, manifest: Mapping[str, Any], spec: EnsembleFile) -> None:
    files = manifest["files"]
    for name in (ENSEMBLE_FILE, "labels.json", "metrics.json"):
        if name not in files:
            raise invalid(root / MANIFEST, f"{name} is not listed")
    nested = {rel for rel in files if rel.endswith(f"/{MANIFEST}")}
    named = {f"{MEMBERS_DIR}/{m.name}/{MANIFEST}" for m in spec.members}
    if nested != named:
        raise invalid(
            root / MANIFEST,
            f"lists the member manifests {sorted(nested)}, {ENSEMBLE_FILE} names {sorted(named)}",
        )


def load_ensemble(
    run_dir: str | Path,
    *,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
) -> EnsemblePredictor:
    """Open an ensemble run folder: its manifest, then every member as a run folder.

    Args:
        run_dir: the ensemble's folder.
        backend, device, threads: as :meth:`fenlei.predict.Predictor.from_run`, for every
            member.

    Raises:
        ArtifactError: a missing, altered or inconsistent file, at the top or in a member
            (the message names it).

    Example:
        >>> load_ensemble("runs/ens", backend="onnx").info().members  # doctest: +SKIP
        {'nbsvm': 0.62, 'linear': 0.38}
    """
    root = Path(run_dir)
    manifest = verify_manifest(root)
    if manifest.get("kind") != KIND:
        raise ArtifactError(f"{root} is not an ensemble (its manifest says {manifest.get('kind')})")
    spec = validate(EnsembleFile, root / ENSEMBLE_FILE, read_json(root / ENSEMBLE_FILE))
    _check_listing(root, manifest, spec)
    labels = validate(LabelsFile, root / "labels.json", read_json(root / "labels.json"))
    metrics = read_json(root / "metrics.json")
    if not isinstance(metrics, dict):
        raise invalid(root / "metrics.json", "expected a JSON object")
    if backend == "onnx":  # the member's own hint would export it alone, past the top manifest
        for m in spec.members:
            if not (root / MEMBERS_DIR / m.name / ONNX_FILE).is_file():
                raise ArtifactError(
                    f"{root / MEMBERS_DIR / m.name / ONNX_FILE} is missing: run "
                    f"`fenlei export {root}` first (it exports every member)"
                )
    members = [
        Predictor.from_run(
            root / MEMBERS_DIR / m.name, backend=backend, device=device, threads=threads
        )
        for m in spec.members
    ]
    for entry, member in zip(spec.members, members, strict=True):
        if set(member.labels) != set(labels.labels) or member.multi_label != labels.multi_label:
            raise invalid(
                root / MEMBERS_DIR / entry.name / "labels.json",
                f"labels {list(member.labels)} differ from the ensemble's {labels.labels}",
            )
    predictor = EnsemblePredictor(
        members,
        [m.weight for m in spec.members],
        names=[m.name for m in spec.members],
        run_dir=root,
        version=_version(manifest),
        metrics=metrics,
    )
    if predictor.labels != tuple(labels.labels):
        raise invalid(root / "labels.json", "the first member's label order differs")
    return predictor


def member_dirs(run_dir: str | Path) -> list[Path]:
    """The member folders of a verified ensemble folder, in order (for ``fenlei export``).

    Raises:
        ArtifactError: the ensemble's own files are missing, altered or inconsistent.
    """
    root = Path(run_dir)
    manifest = verify_manifest(root)
    spec = validate(EnsembleFile, root / ENSEMBLE_FILE, read_json(root / ENSEMBLE_FILE))
    _check_listing(root, manifest, spec)
    return [root / MEMBERS_DIR / m.name for m in spec.members]
