"""What a study searches: the families, their base settings and their search spaces.

Every model family declares its own search space next to its code
(:attr:`fenlei.models.Family.search_space`, ``"section.key" -> choices``); this module only
reads it, so no family name appears in the tuner. :func:`plan_search` turns the chosen
presets, the ``--set`` overrides and the ``--search`` additions into a :class:`SearchPlan`
and validates every choice up front through :func:`~fenlei.config.load_config` and
:func:`~fenlei.models.check`, so a typo fails before the first trial. A trial is then a list
of dotted override strings (:meth:`SearchPlan.suggest`), applied on top of the preset, so
the config a trial trains with is exactly what ``fenlei train --preset P --set ...`` makes.

Overrides and search entries may be scoped to one family with a ``preset:`` prefix
(``lstm:model.hidden_size=[64,128]``); unscoped ones apply to every family.

Example:
    >>> plan = plan_search(["linear"], ["train.epochs=3"], [])  # doctest: +SKIP
    >>> plan.families[0].space["model.ngram"]  # doctest: +SKIP
    (1, 2, 3)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fenlei.config import PRESETS, DataConfig, RunConfig, load_config
from fenlei.errors import ConfigError
from fenlei.models import check, family_of

if TYPE_CHECKING:
    import optuna

__all__ = ["FAMILY_PARAM", "FamilyPlan", "SearchPlan", "override", "plan_search"]

FAMILY_PARAM = "family"  # the categorical choice of family when a study searches several
_SCALARS = (str, int, float, bool, type(None))  # what a categorical choice may be


def override(key: str, value: Any) -> str:
    """The ``section.key=value`` string that sets ``key`` to ``value`` (JSON-encoded)."""
    return f"{key}={json.dumps(value)}"


def _value(cfg: RunConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


@dataclass(frozen=True)
class FamilyPlan:
    """One family of a study: its preset, base overrides and search space.

    Attributes:
        preset: the preset a trial starts from (``"linear"``).
        overrides: ``section.key=value`` strings every trial of this family gets.
        space: ``"section.key" -> choices`` (the family's own, with ``--search`` applied).
        defaults: keys whose value in the base config is one of the choices -> that value
            (the first trial of a new study tries them, so tuning starts from the preset).
    """

    preset: str
    overrides: tuple[str, ...] = ()
    space: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def config(self, overrides: Sequence[str] = ()) -> RunConfig:
        """The checked config of a trial with ``overrides`` on top of the base settings.

        Raises:
            ConfigError: an override is unknown or invalid, or does not fit the family.
        """
        cfg = load_config(self.preset, [*self.overrides, *overrides])
        check(cfg)
        return cfg

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (stored in the study, part of its fingerprint)."""
        return {
            "preset": self.preset,
            "overrides": list(self.overrides),
            "space": {key: list(choices) for key, choices in self.space.items()},
            "defaults": dict(self.defaults),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FamilyPlan:
        """Read :meth:`to_json`'s form."""
        return cls(
            preset=data["preset"],
            overrides=tuple(data["overrides"]),
            space={key: tuple(choices) for key, choices in data["space"].items()},
            defaults=dict(data.get("defaults", {})),
        )


@dataclass(frozen=True)
class SearchPlan:
    """The families a study chooses from (plain data: it travels to worker processes)."""

    families: tuple[FamilyPlan, ...]

    def family(self, preset: str) -> FamilyPlan:
        """The plan of ``preset``."""
        return next(f for f in self.families if f.preset == preset)

    def param(self, family: FamilyPlan, key: str) -> str:
        """The Optuna parameter name of ``key``: the key itself, or ``preset:key`` when the
        study searches several families (their choices of one key differ)."""
        return key if len(self.families) == 1 else f"{family.preset}:{key}"

    def suggest(self, trial: optuna.Trial) -> tuple[FamilyPlan, list[str]]:
        """Draw a family and its settings for ``trial``; return them as override strings."""
        family = self.families[0]
        if len(self.families) > 1:
            chosen = trial.suggest_categorical(FAMILY_PARAM, [f.preset for f in self.families])
            family = self.family(str(chosen))
        overrides = [
            override(key, trial.suggest_categorical(self.param(family, key), list(choices)))
            for key, choices in family.space.items()
        ]
        return family, overrides

    def default_params(self) -> list[dict[str, Any]]:
        """One parameter set per family: its base settings where they are choices."""
        out = []
        for family in self.families:
            params = {self.param(family, k): v for k, v in family.defaults.items()}
            if len(self.families) > 1:
                params[FAMILY_PARAM] = family.preset
            out.append(params)
        return out

    def data_config(self) -> DataConfig:
        """The ``data`` settings every trial shares (the splits are made once).

        Raises:
            ConfigError: the families' base settings give different ``data`` sections.
        """
        configs = {f.preset: f.config().data for f in self.families}
        first = next(iter(configs.values()))
        differ = [p for p, c in configs.items() if c != first]
        if differ:
            raise ConfigError(
                f"the data.* settings of {', '.join(differ)} differ from the others'; every "
                "trial trains on the same splits: set data.* without a family prefix"
            )
        return first

    def to_json(self) -> list[dict[str, Any]]:
        """JSON-ready form."""
        return [f.to_json() for f in self.families]

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, Any]]) -> SearchPlan:
        """Read :meth:`to_json`'s form."""
        return cls(tuple(FamilyPlan.from_json(f) for f in data))


def _split_scope(item: str, presets: Sequence[str], what: str) -> tuple[str | None, str]:
    """``"lstm:train.lr=..."`` -> ``("lstm", "train.lr=...")``; no prefix -> ``(None, item)``."""
    key = item.partition("=")[0]
    scope, sep, _ = key.partition(":")
    if not sep:
        return None, item
    if scope not in presets:
        raise ConfigError(
            f"{what} {item!r} names family {scope!r}, which this study does not search "
            f"({', '.join(presets)})"
        )
    return scope, item[len(scope) + 1 :]


def _scoped(items: Sequence[str], preset: str, presets: Sequence[str], what: str) -> list[str]:
    out = []
    for item in items:
        scope, rest = _split_scope(item, presets, what)
        if scope in (None, preset):
            out.append(rest)
    return out


def _parse_search(item: str) -> tuple[str, tuple[Any, ...]]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    hint = "give the choices as a JSON list, e.g. --search 'train.lr=[0.001,0.003]'"
    try:
        choices = json.loads(raw) if sep else None
    except json.JSONDecodeError:
        choices = None
    if not key or not isinstance(choices, list) or not choices:
        raise ConfigError(f"--search {item!r}: {hint}")
    if not all(isinstance(c, _SCALARS) for c in choices):
        raise ConfigError(f"--search {item!r}: each choice must be a number, string or bool")
    if key.startswith("data."):
        raise ConfigError(
            f"--search {item!r}: data.* cannot be searched (every trial trains on the same "
            "splits); set it with --set"
        )
    return key, tuple(choices)


def _validate(preset: str, base: list[str], space: dict[str, tuple[Any, ...]]) -> FamilyPlan:
    """Check the base settings and every choice on its own; note which choices are the
    base settings' own values (the defaults)."""
    plan = FamilyPlan(preset, tuple(base), space)
    try:
        start = plan.config()
    except ConfigError as exc:
        raise ConfigError(f"family {preset}: {exc}") from exc
    defaults: dict[str, Any] = {}
    for key, choices in space.items():
        for choice in choices:
            try:
                cfg = plan.config([override(key, choice)])
            except ConfigError as exc:
                raise ConfigError(
                    f"search space of {preset}: {override(key, choice)}: {exc}"
                ) from exc
            if key not in defaults and _value(cfg, key) == _value(start, key):
                defaults[key] = choice
    return FamilyPlan(preset, tuple(base), space, defaults)


def _plan_family(
    preset: str, presets: Sequence[str], overrides: Sequence[str], search: Sequence[str]
) -> FamilyPlan:
    base = _scoped(overrides, preset, presets, "--set")
    try:
        architecture = load_config(preset, base).model.architecture
        space: dict[str, tuple[Any, ...]] = dict(family_of(architecture).search_space)
    except ConfigError as exc:
        raise ConfigError(f"family {preset}: {exc}") from exc
    fixed = {item.partition("=")[0].strip() for item in base}
    for key in fixed:  # a setting the user gives is not searched
        space.pop(key, None)
    for item in _scoped(search, preset, presets, "--search"):
        key, choices = _parse_search(item)
        if key in fixed:
            raise ConfigError(
                f"{key} is both set (--set) and searched (--search) for {preset}; keep one"
            )
        space[key] = choices
    if not space:
        raise ConfigError(f"nothing left to search for {preset}; give --search KEY=[...]")
    return _validate(preset, base, space)


def plan_search(
    presets: Sequence[str], overrides: Sequence[str] = (), search: Sequence[str] = ()
) -> SearchPlan:
    """Validate and gather what a study searches.

    Args:
        presets: the families to search, by preset name (``["linear", "lstm"]``).
        overrides: ``[preset:]section.key=value`` settings every trial (of that family) gets;
            a key of the search space given here is fixed, not searched.
        search: ``[preset:]section.key=[choices]``: replace or add a key of the families'
            search spaces.

    Returns:
        The validated plan: every choice of every key gives a config that loads and fits
        its family on its own.

    Raises:
        ConfigError: an unknown family, a typo or invalid value in a setting or a choice, or
            a choice the family does not read; one line naming family, key and value.

    Example:
        >>> plan_search(["linear", "nbsvm"], ["model.buckets=2000"])  # doctest: +SKIP
    """
    if not presets:
        raise ConfigError("name at least one family to search (--preset or --families)")
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ConfigError(
            f"unknown family {unknown[0]!r}; choose from {', '.join(PRESETS)} "
            "(comma-separated with --families)"
        )
    if len(set(presets)) != len(presets):
        raise ConfigError(f"--families names a family twice: {', '.join(presets)}")
    plan = SearchPlan(tuple(_plan_family(p, presets, overrides, search) for p in presets))
    plan.data_config()  # one set of splits for every family
    return plan
