"""Fuzzing load_run: odd JSON in a self-consistent run folder is an ArtifactError, nothing else.

Each example mutates one JSON file of a real tiny run folder (a value replaced by JSON of any
shape or by a huge or negative number, a key deleted or added, the whole document replaced),
then rewrites the manifest so the sha256 check passes and the field checks are what is
exercised (except when the manifest itself is the file mutated). ``load_run`` must then
succeed or raise ArtifactError, and must not have grown the process by a large allocation.

``FENLEI_FUZZ_EXAMPLES=2000 FENLEI_FUZZ_SEED=7 pytest tests/test_artifact_fuzz.py`` searches
deeper (other examples for each seed); the default run repeats the same 60 examples per file.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fenlei.artifact import LoadedRun, load_run, write_manifest
from fenlei.classifier import TextClassifier
from fenlei.errors import ArtifactError
from tests.conftest import family_overrides

FILES = ["manifest.json", "config.json", "labels.json", "model_config.json", "metrics.json"]
TEXTS = ["where is my parcel", "refund please", "great service", "open on sunday?"] * 5
LABELS = ["delivery_status", "refund", "praise", "opening_hours"] * 5
GROWTH_LIMIT = 512 << 20  # bytes of peak memory a load may add; the tiny run needs a few MB
EXAMPLES = int(os.environ.get("FENLEI_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("FENLEI_FUZZ_SEED", "0"))

ODD_NUMBERS = st.sampled_from([0, -1, -5, 1, 2**31, 2**63, 10**12, 10**30, -0.5, 1e308])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_subnormal=False)  # torch flushes denormals process-wide
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny linear run folder (fastest preset), built once for the module."""
    preset, overrides = family_overrides("linear.v2")
    folder = tmp_path_factory.mktemp("fuzz") / "run"
    clf = TextClassifier(
        preset, overrides=[*overrides, "train.epochs=1", "encoder.min_frequency=1"], run_dir=folder
    )
    clf.fit(TEXTS, LABELS, X_dev=TEXTS, y_dev=LABELS)
    return folder


def _paths(doc: Any) -> list[tuple[Any, ...]]:
    """Every path (keys and indices) to a node of ``doc``, the root included."""
    found: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), doc)]
    while stack:
        path, node = stack.pop()
        found.append(path)
        if isinstance(node, dict):
            stack.extend(((*path, k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in enumerate(node))
    return sorted(found, key=repr)


@st.composite
def mutated(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with one node replaced, deleted or given an extra key."""
    doc = json.loads(json.dumps(doc))  # a copy to change
    path = draw(st.sampled_from(_paths(doc)))
    value = draw(ODD_NUMBERS | JSON)
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = value
    else:
        parent[path[-1]] = value
    return doc


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@pytest.mark.parametrize("name", FILES)
def test_odd_json_is_an_artifact_error(pristine: Path, tmp_path: Path, name: str) -> None:
    work = tmp_path / "run"
    shutil.copytree(pristine, work)
    original = json.loads((pristine / name).read_text(encoding="utf-8"))
    outcomes: dict[str, int] = {"loaded": 0, "refused": 0}

    @seed(SEED)  # the same examples on every run: a failure here is reproducible
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(doc=mutated(original))
    def check(doc: Any) -> None:
        for file in (name, "manifest.json"):
            shutil.copy(pristine / file, work / file)
        (work / name).write_text(json.dumps(doc), encoding="utf-8")
        if name != "manifest.json":
            write_manifest(work)  # self-consistent: the field checks must catch it
        before = _peak_bytes()
        try:
            run = load_run(work)
        except ArtifactError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        else:
            assert isinstance(run, LoadedRun)
            outcomes["loaded"] += 1
        assert _peak_bytes() - before < GROWTH_LIMIT

    check()
    assert outcomes["refused"] > 0  # the mutations did reach the checks
