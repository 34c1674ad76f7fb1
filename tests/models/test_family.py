"""Family records and :func:`fenlei.models.check`: which settings fit which model family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fenlei.config import PRESETS, ModelConfig, RunConfig, load_config
from fenlei.data import Dataset
from fenlei.errors import ConfigError
from fenlei.models import FAMILY_AGNOSTIC, REGISTRY, check, family_of
from tests.conftest import FAMILIES, TINY


def _configs_of(family: str) -> list[tuple[str, list[str]]]:
    """(preset, overrides) that start a new training of ``family``: its presets, or else the
    tiny settings' preset switched to it (linear.v1 has no preset of its own)."""
    presets = [(p, []) for p, tree in PRESETS.items() if tree["model"]["architecture"] == family]
    return presets or [(TINY[family][0], [f"model.architecture={family}"])]


# ---------------------------------------------------------------- the records


@pytest.mark.parametrize("family", FAMILIES)
def test_record_is_consistent(family: str) -> None:
    found = REGISTRY[family]
    assert found.name == family
    assert found.reads <= set(ModelConfig.model_fields), "reads names a model.* field"
    assert not found.reads & FAMILY_AGNOSTIC
    assert found.pretrained == ("pretrained" in found.reads)
    if "freeze_embeddings" in found.reads:
        assert found.token_embedding is not None, "freezing needs the table"
    # the builder and hooks live next to the family's nn.Module
    hooks = [found.bf16_cpu, found.gradient_checkpointing, found.token_embedding, found.validate]
    for hook in [found.build, *hooks]:
        assert hook is None or hook.__module__ == found.build.__module__, hook


def test_family_agnostic_fields_are_model_fields() -> None:
    assert set(ModelConfig.model_fields) >= FAMILY_AGNOSTIC


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.architecture='cnn\.v1' is not registered"):
        family_of("cnn.v1")
    with pytest.raises(ConfigError, match="is not registered"):
        check(load_config("linear", ["model.architecture=cnn.v1"]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_passes_check(name: str) -> None:
    check(load_config(name))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_reads_cover_what_the_preset_sets(name: str) -> None:
    model = PRESETS[name]["model"]
    family = family_of(model["architecture"])
    assert set(model) - FAMILY_AGNOSTIC <= family.reads


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_settings_pass_check(family: str, tiny_transformer_dir: Path) -> None:
    from tests.conftest import family_overrides

    check(load_config(*family_overrides(family, tiny_transformer_dir)))


# ---------------------------------------------------------------- search spaces


@pytest.mark.parametrize("family", FAMILIES)
def test_search_space_is_declared(family: str) -> None:
    space = family_of(family).search_space
    assert space, f"{family} declares no search space"
    for key, choices in space.items():
        section, _, name = key.partition(".")
        assert section in RunConfig.model_fields and name, key
        assert len(choices) >= 2, key
        if section == "model":
            assert name in family_of(family).reads, f"{key}: {family} does not read it"


@pytest.mark.parametrize(
    ("family", "key", "choice"),
    [
        (family, key, choice)
        for family in FAMILIES
        for key, choices in family_of(family).search_space.items()
        for choice in choices
    ],
)
def test_every_choice_is_a_valid_override(family: str, key: str, choice: object) -> None:
    section, _, name = key.partition(".")
    for preset, overrides in _configs_of(family):
        cfg = load_config(preset, [*overrides, f"{key}={json.dumps(choice)}"])
        check(cfg)
        value = getattr(getattr(cfg, section), name)
        assert value == ([choice] if name == "nb_c" else choice), (preset, key)


# ---------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        # each rule that config.py's validators used to hold
        (
            "linear",
            ["model.architecture=transformer.v1"],
            r"transformer\.v1 needs model\.pretrained",
        ),
        (
            "linear",
            ["model.architecture=transformer.v1", "model.pretrained=x"],
            r"transformer\.v1 needs encoder\.kind=pretrained",
        ),
        ("minilm", ["encoder.kind=wordpiece"], r"needs encoder\.kind=pretrained .*not wordpiece"),
        (
            "linear",
            ["model.freeze_embeddings=true"],
            r"model\.freeze_embeddings=true would leave linear\.v2 nothing .*lstm\.v1 or "
            r"transformer\.v1",
        ),
        ("nbsvm", ["model.freeze_embeddings=true"], r"would leave nbsvm\.v1 nothing"),
        (
            "lstm",
            ["train.gradient_checkpointing=true"],
            r"train\.gradient_checkpointing=true applies to model\.architecture="
            r"transformer\.v1 or transformer\.v2 only, not lstm\.v1",
        ),
        ("lstm", ["model.glove=true"], r"model\.glove=true needs model\.embedding_dim=50"),
        # a setting the family does not read
        ("lstm", ["model.ngram=3"], r"^model\.ngram is set .*=lstm\.v1 does not use it"),
        ("linear", ["model.hidden_size=8"], r"^model\.hidden_size is set .*=linear\.v2"),
        ("nbsvm", ["model.dropout=0.1"], r"^model\.dropout is set .*=nbsvm\.v1"),
        ("minilm", ["model.embedding_dim=32"], r"^model\.embedding_dim is set .*=transformer\.v1"),
        ("seed-lstm", ["model.nb_c=1"], r"^model\.nb_c is set .*=lstm\.v1"),
        ("linear", ["model.freeze_embeddings=false"], r"^model\.freeze_embeddings is set"),
        # the preset's own settings count: switching family needs that family's preset
        (
            "linear",
            ["model.architecture=lstm.v1"],
            r"^model\.buckets, model\.char_ngram_min, model\.ngram are set \(by preset linear, "
            r".*lstm\.v1 does not use them; .*--preset seed-lstm / lstm",
        ),
    ],
)
def test_rule(preset: str, overrides: list[str], message: str) -> None:
    cfg = load_config(preset, overrides)  # config alone accepts it (old run folders load)
    with pytest.raises(ConfigError, match=message) as info:
        check(cfg)
    assert "\n" not in str(info.value)


def test_a_config_file_counts_as_set(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('preset = "linear"\n[model]\npooling = "max"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^model\.pooling is set .*=linear\.v2"):
        check(load_config(path))


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("lstm", ["model.single_logit=true"]),  # family-agnostic
        ("linear", ["model.architecture=linear.v1"]),  # same reads
        ("lstm", ["model.glove=true", "model.embedding_dim=50"]),
        ("minilm", ["model.freeze_embeddings=true", "train.gradient_checkpointing=true"]),
        ("lstm", ["model.freeze_embeddings=true"]),
        ("nbsvm", ["model.nb_c=[0.5,2]", "model.nb_alpha=0.5"]),
    ],
)
def test_fitting_settings_pass(preset: str, overrides: list[str]) -> None:
    check(load_config(preset, overrides))


def test_a_saved_config_is_not_checked_again() -> None:
    # A run folder's config.json sets every field, those its family ignores too, so check()
    # belongs to new trainings (CLI, train_run), never to loading a run folder.
    saved = RunConfig.model_validate(json.loads(load_config("linear").model_dump_json()))
    with pytest.raises(ConfigError, match=r"linear\.v2 does not use them"):
        check(saved)


def test_train_run_checks_before_writing(tmp_path: Path, bundled: dict[str, Dataset]) -> None:
    from fenlei.pipeline import prepare_splits, train_run

    cfg = load_config("linear", ["model.hidden_size=8"])
    splits = prepare_splits(cfg.data, bundled["train"], bundled["dev"])
    with pytest.raises(ConfigError, match=r"model\.hidden_size"):
        train_run(cfg, splits, tmp_path / "run")
    assert not (tmp_path / "run").exists()
