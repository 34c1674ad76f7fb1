"""Presets, overrides, TOML files and validation (fenlei.config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from fenlei.config import (
    PRESETS,
    DataConfig,
    EncoderConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from fenlei.errors import ConfigError, FenleiError


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- presets


def test_presets_are_the_documented_five() -> None:
    assert set(PRESETS) == {"seed-lstm", "linear", "nbsvm", "lstm", "minilm"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads(name: str) -> None:
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.preset == name
    for section, values in PRESETS[name].items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"


def test_default_is_linear() -> None:
    cfg = load_config()
    assert cfg == load_config("linear")
    assert cfg.preset == "linear"
    assert cfg.model.architecture == "linear.v2"


def test_seed_lstm_is_the_keras_example_exactly() -> None:
    cfg = load_config("seed-lstm")
    enc, model, train = cfg.encoder, cfg.model, cfg.train
    assert (enc.vocab_size, enc.max_length, enc.truncation) == (10000, 500, "tail")
    assert model.architecture == "lstm.v1"
    assert model.embedding_dim == 64
    assert model.hidden_size == 128
    assert model.num_layers == 1
    assert model.bidirectional is False
    assert model.single_logit is True
    assert model.pooling == "last"
    assert model.dropout == 0
    assert train.epochs == 10
    assert train.batch_size == 32
    assert train.optimizer == "adam"
    assert train.lr == pytest.approx(1e-3)


def test_lstm_and_minilm_presets() -> None:
    lstm = load_config("lstm")
    assert lstm.model.architecture == "lstm.v1"
    assert lstm.model.bidirectional is True
    minilm = load_config("minilm")
    assert minilm.model.architecture == "transformer.v1"
    assert minilm.encoder.kind == "pretrained"
    assert minilm.model.pretrained == "minilm"


def test_presets_are_not_mutated_by_loading() -> None:
    before = repr(PRESETS)
    load_config("seed-lstm", ["train.epochs=2", "model.hidden_size=8"])
    assert repr(PRESETS) == before
    assert load_config("seed-lstm").train.epochs == 10


# ---------------------------------------------------------------- overrides


def test_override_int() -> None:
    cfg = load_config("seed-lstm", ["train.epochs=3"])
    assert cfg.train.epochs == 3
    assert isinstance(cfg.train.epochs, int)
    # Everything else keeps its preset value.
    assert cfg.train.batch_size == 32
    assert cfg.encoder.max_length == 500


def test_override_bool_float_and_string() -> None:
    cfg = load_config(
        "lstm",
        ["model.bidirectional=false", "train.lr=0.05", "train.schedule=cosine", "train.seed=7"],
    )
    assert cfg.model.bidirectional is False
    assert cfg.train.lr == pytest.approx(0.05)
    assert cfg.train.schedule == "cosine"
    assert cfg.train.seed == 7


def test_override_json_list() -> None:
    cfg = load_config("linear", ['data.text_cols=["title", "body"]'])
    assert cfg.data.text_cols == ("title", "body")


@pytest.mark.parametrize("word", ["none", "None", "null"])
def test_override_none(word: str) -> None:
    cfg = load_config("linear", [f"train.patience={word}", f"train.clip_grad_norm={word}"])
    assert cfg.train.patience is None
    assert cfg.train.clip_grad_norm is None


def test_override_whitespace_is_ignored() -> None:
    assert load_config("linear", [" train.epochs = 4 "]).train.epochs == 4


def test_later_override_wins() -> None:
    assert load_config("linear", ["train.epochs=3", "train.epochs=5"]).train.epochs == 5


def test_apply_overrides_does_not_mutate_input() -> None:
    tree = {"train": {"epochs": 1}}
    out = apply_overrides(tree, ["train.epochs=2", "model.dropout=0.5"])
    assert out == {"train": {"epochs": 2}, "model": {"dropout": 0.5}}
    assert tree == {"train": {"epochs": 1}}


# ---------------------------------------------------------------- TOML files


def test_toml_file_with_preset_and_train_section(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "exp.toml",
        'preset = "lstm"\n\n[train]\nepochs = 2\nlr = 0.01\n\n[model]\nhidden_size = 32\n',
    )
    cfg = load_config(path)
    assert cfg.preset == "lstm"
    assert cfg.train.epochs == 2
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.model.hidden_size == 32
    # Untouched preset values survive the merge.
    assert cfg.model.bidirectional is True
    assert cfg.train.weight_decay == pytest.approx(0.01)
    assert cfg.encoder.max_length == 400


def test_toml_file_as_string_path_and_overrides_win(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "exp.toml", 'preset = "lstm"\n[train]\nepochs = 2\n')
    cfg = load_config(str(path), ["train.epochs=6"])
    assert cfg.train.epochs == 6


def test_toml_file_without_preset_starts_from_linear(tmp_path: Path) -> None:
    cfg = load_config(write_toml(tmp_path / "exp.toml", "[train]\nepochs = 4\n"))
    assert cfg.preset == "linear"
    assert cfg.model.architecture == "linear.v2"
    assert cfg.train.epochs == 4


# ---------------------------------------------------------------- errors


def test_config_error_is_a_fenlei_error() -> None:
    assert issubclass(ConfigError, FenleiError)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match=r"'nope'.*presets are: .*seed-lstm.*linear"):
        load_config("nope")


def test_unknown_preset_in_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "exp.toml", 'preset = "gpt"\n')
    with pytest.raises(ConfigError, match=r"unknown preset 'gpt'"):
        load_config(path)


def test_unknown_key_typo() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("linear", ["train.epoch=3"])
    assert "train.epoch" in str(info.value)
    assert "train.epoch: unknown setting" in str(info.value)
    assert "preset linear" in str(info.value)


def test_unknown_section() -> None:
    with pytest.raises(ConfigError, match=r"trian: unknown setting"):
        load_config("linear", ["trian.epochs=3"])


def test_unknown_key_in_toml_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "exp.toml", "[model]\nhiden_size = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "model.hiden_size: unknown setting" in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_type() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs: .*integer"):
        load_config("linear", ["train.epochs=abc"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.epochs=0", "train.epochs"),
        ("train.optimizer=sgd", "train.optimizer"),
        ("encoder.truncation=middle", "encoder.truncation"),
        ("model.dropout=1.5", "model.dropout"),
        ("data.dev_fraction=0.7", "data.dev_fraction"),
    ],
)
def test_out_of_range_or_not_a_choice(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^invalid configuration .*{field}: "):
        load_config("linear", [override])


@pytest.mark.parametrize("bad", ["trainepochs3", "train.epochs", "epochs=3", ".epochs=3"])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value") as info:
        load_config("linear", [bad])
    assert repr(bad) in str(info.value)


def test_override_through_a_value_is_not_a_section() -> None:
    with pytest.raises(ConfigError, match=r"'epochs' is not a section"):
        load_config("linear", ["train.epochs.max=3"])


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "bad.toml", "[train\nepochs = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"config file {path} is not valid TOML")


def test_missing_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_without_toml_suffix(tmp_path: Path) -> None:
    path = tmp_path / "missing.cfg"
    with pytest.raises(ConfigError, match="unknown preset or missing config file") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_pretrained_encoder_needs_a_name() -> None:
    with pytest.raises(ConfigError, match=r"encoder\.kind=pretrained needs"):
        load_config("linear", ["encoder.kind=pretrained"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.architecture=transformer.v1"],
        ["model.freeze_embeddings=true"],
        ["train.gradient_checkpointing=true"],
        ["model.hidden_size=8"],
    ],
)
def test_family_rules_are_not_config_rules(overrides: list[str]) -> None:
    # Which settings fit which family is fenlei.models.check's job (tests/models/
    # test_family.py), for new trainings only; config alone stays as lenient as the run
    # folders it must load.
    assert load_config("linear", overrides).preset == "linear"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_saved_config_validates(name: str) -> None:
    # A run folder's config.json sets every field, including those its family ignores.
    dumped = json.loads(load_config(name).model_dump_json())
    cfg = RunConfig.model_validate(dumped)
    assert cfg.model.model_fields_set == set(ModelConfig.model_fields)


def test_minilm_preset_with_other_pretrained_folder(tmp_path: Path) -> None:
    cfg = load_config("minilm", [f"model.pretrained={tmp_path}"])
    assert cfg.model.pretrained == str(tmp_path)


# ---------------------------------------------------------------- frozen models


def test_run_config_is_frozen() -> None:
    cfg = load_config("linear")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.epochs = 99  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.preset = "lstm"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.model = ModelConfig()  # type: ignore[misc]
    assert cfg.train.epochs == PRESETS["linear"]["train"]["epochs"]


@pytest.mark.parametrize("section", [DataConfig, EncoderConfig, ModelConfig, TrainConfig])
def test_sections_are_frozen_and_reject_unknown_fields(section: type) -> None:
    obj = section()
    name = next(iter(section.model_fields))
    with pytest.raises(ValidationError):
        setattr(obj, name, getattr(obj, name))
    with pytest.raises(ValidationError, match="Extra inputs"):
        section(no_such_field=1)


def test_config_round_trips_through_json() -> None:
    cfg = load_config("seed-lstm", ["train.epochs=3"])
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_configuration_docs_are_current() -> None:
    """docs/configuration.md is generated from config.py; regenerate it after a change."""
    import sys
    from pathlib import Path

    tools = Path(__file__).resolve().parent.parent / "tools"
    sys.path.insert(0, str(tools))
    try:
        import gen_config_docs
    finally:
        sys.path.remove(str(tools))
    assert gen_config_docs.DOC.read_text(encoding="utf-8") == gen_config_docs.render(), (
        "run: .venv/bin/python tools/gen_config_docs.py"
    )
