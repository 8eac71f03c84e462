"""A study's search space in the project's own terms: `Grid`, `Range`, `Choice`, and the words a study is defined in
(searchers, the Optuna samplers it names by key, StudyError).

    space = {"alpha": Grid([0.5, 1.0, 1.2]), "seed": Grid([0, 1, 2])}                      # searcher="grid"
    space = {"alpha": Range(0.5, 1.5), "lr": Range(1e-5, 1e-3), "seed": Choice([0, 1])}    # searcher="optuna"
    space = {"setting": Settings({"preset": {"alpha": 1.2}, "best": {"alpha": 1.0, "lr": 3e-4}}),
             "seed": Grid([10, 11])}                                                       # searcher="grid"

A `Settings` dimension runs whole settings, each several fields at once under a label, as a grid over its labels; it
sits under the key SETTING ('setting'), which is also the column of the rows and the trials table that holds a
trial's label (sid.results), so analysis/compare.py compares the settings paired by seed (`--x setting`).

A space says which values a field takes, not how they are spread: the searchable-field registry
(`sid.config.SEARCHABLE`) decides that a Range of `lr` is searched on a log scale, one of `tmax` or `seed` over the
integers low..high (both included), one of `alpha` on a linear scale, and that `batch` or `precision` take given
values only (Grid or Choice); a field outside it is refused with its reason (`sid.config.UNSEARCHABLE`). A value has
the type of its DistillConfig field. `check_space` validates a space for a searcher (every message names the field);
`space_from_data` reads one from a study YAML; `sid.cluster.search.tune_space` is the one translation to Ray Tune.

Plain Python, no Ray: the study scripts build and check a space without importing or starting Ray.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sid.config import SEARCHABLE, UNSEARCHABLE, DistillConfig

SETTING = "setting"  # the space key of a Settings dimension, and the results column that holds a trial's label
SEARCHERS = ("grid", "optuna")  # grid: every combination of the Grids' values; optuna: TPE/GP over Ranges and Choices
# The type of each config field's values ('int', 'float' or 'str'), from DistillConfig's annotations.
FIELD_TYPES = {f.name: str(f.type).split(" |")[0] for f in dataclasses.fields(DistillConfig)}


def _optuna_sampler(name: str, seed: int, **kwargs: Any) -> Any:
    import optuna  # noqa: PLC0415 (1.5 s to import: the study scripts' --help and bad flags must not wait for it)

    return getattr(optuna.samplers, name)(seed=seed, **kwargs)


# Optuna samplers by key: a study names its sampler by key (in its YAML and in its saved settings, so a resume
# rebuilds it); each entry makes the sampler from the study's optuna_seed. register_sampler adds one.
SAMPLERS: dict[str, Callable[[int], Any]] = {
    "tpe": functools.partial(_optuna_sampler, "TPESampler"),      # Tree-structured Parzen estimator (default)
    "gp": functools.partial(_optuna_sampler, "GPSampler", deterministic_objective=False),  # a GP with a noise term
    "random": functools.partial(_optuna_sampler, "RandomSampler"),  # independent uniform draws (a baseline)
}


class StudyError(ValueError):
    """A study that cannot run as asked (its space, its settings, its folder); the message says what was expected."""


def _values(values: Iterable[Any] | Any) -> Any:
    """A list or tuple as a tuple (a frozen dataclass holds no list); anything else as given, for check_space."""
    return tuple(values) if isinstance(values, (list, tuple, range)) else values


@dataclass(frozen=True)
class _Values:
    """A dimension given as its values (Grid, Choice): one home for how they are kept and checked."""

    values: tuple[Any, ...]  # the field's values: a Grid runs each, in this order; a Choice's searcher picks one

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _values(self.values))

    def corners(self) -> list[Any]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return value in self.values


@dataclass(frozen=True)
class Grid(_Values):
    """Every value is run (with every value of the other Grids): the grid searcher's dimension."""


@dataclass(frozen=True)
class Range:
    """Any value from low to high, on the field's scale (sid.config.SEARCHABLE): Optuna's continuous dimension."""

    low: float   # smallest value (> 0 on a log scale)
    high: float  # largest value (> low)

    def corners(self) -> list[Any]:
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice(_Values):
    """One of the values, picked by the searcher: Optuna's categorical dimension."""


@dataclass(frozen=True)
class Settings:
    """Whole settings, each a label and the values it gives several fields at once (the base config's for the
    fields it leaves out): every setting is run, as a Grid over the labels. Its space key is SETTING."""

    settings: Mapping[str, Mapping[str, Any]]  # label -> {field: value}, e.g. {"preset": {...}, "best": {...}}

    def __post_init__(self) -> None:
        if isinstance(self.settings, Mapping):  # kept as given otherwise, for check_settings to refuse
            object.__setattr__(self, "settings", {label: dict(fields) if isinstance(fields, Mapping) else fields
                                                  for label, fields in self.settings.items()})

    @property
    def values(self) -> tuple[str, ...]:
        """The labels, in order: what a grid runs (the Tune config holds the label, trial_config the fields)."""
        return tuple(self.settings)

    def corners(self) -> list[Any]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return value in self.settings

    def fields(self) -> list[str]:
        """Every field some setting gives a value, in first-seen order."""
        return list(dict.fromkeys(f for fields in self.settings.values() for f in fields))

    def __hash__(self) -> int:  # a frozen dataclass of a dict: hashed by its labels and values
        return hash(tuple((label, tuple(sorted(fields.items()))) for label, fields in self.settings.items()))


Dimension = Grid | Range | Choice | Settings
# a dimension's name in a study's config.yaml
KINDS = {Grid: "grid", Range: "range", Choice: "choice", Settings: "settings"}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _value_error(field: str, value: Any, what: str = "values") -> str | None:
    """Why `value` cannot be a value of `field` (None: it can): the type of the field (an integer, a finite number,
    a string), > 0 on a log scale; `what` names the value in the message ('values', 'low', 'high')."""
    kind = FIELD_TYPES[field]
    if kind == "int":
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "expected integers"
    if kind == "str":
        return None if isinstance(value, str) else "expected strings"
    if not _is_number(value) or not math.isfinite(value):
        return "expected finite numbers"
    if SEARCHABLE[field] == "log" and value <= 0:
        return f"expected {what} > 0 ({field} is searched on a log scale)"
    return None


def check_field(field: Any) -> None:
    """StudyError unless `field` is searchable: a field of the registry, or the reason it is not."""
    if field in SEARCHABLE:
        return
    why = UNSEARCHABLE.get(field, "not a DistillConfig field" if field not in FIELD_TYPES else
                           "not in the registry of searchable fields (sid.config.SEARCHABLE)")
    raise StudyError(f"cannot search {field}: {why}; searchable fields: {', '.join(SEARCHABLE)}")


def check_settings(settings: Any, others: Iterable[str] = ()) -> None:
    """StudyError naming the label and the field unless `settings` is a non-empty Settings of plain labels, each a
    mapping of searchable fields (not seed, which pairs the settings, nor a field of the space's `others`
    dimensions) to valid values, no two alike."""
    if not isinstance(settings, Settings) or not isinstance(settings.settings, Mapping):
        raise StudyError(f"{SETTING}: expected Settings({{label: {{field: value, ...}}, ...}}) (from "
                         f"sid.cluster.space), got {settings!r}")
    if not settings.settings:
        raise StudyError(f"{SETTING}: Settings is empty; give at least one labelled setting")
    seen: dict[tuple, str] = {}
    for label, fields in settings.settings.items():
        if not isinstance(label, str) or not label.strip() or label != label.strip() or "/" in label:
            raise StudyError(f"{SETTING}: a label is a non-empty string without surrounding spaces or '/', "
                             f"got {label!r}")
        if not isinstance(fields, Mapping):
            raise StudyError(f"{SETTING} {label!r}: expected a mapping of fields to values, got {fields!r}")
        for field, value in fields.items():
            try:
                check_field(field)
            except StudyError as exc:
                raise StudyError(f"{SETTING} {label!r}: {exc}") from None
            if field == "seed" or field in others:
                why = "seeds pair the settings: give them as a seed Grid" if field == "seed" else \
                    "also a dimension of the space: search it there or set it in each setting"
                raise StudyError(f"{SETTING} {label!r}: {field}: {why}")
            why = _value_error(field, value)
            if why is not None:
                raise StudyError(f"{SETTING} {label!r}: {field}={value!r}: {why}")
        key = tuple(sorted((f, _plain(v)) for f, v in fields.items()))
        if key in seen:
            raise StudyError(f"{SETTING}: {label!r} gives the same values as {seen[key]!r}; each setting must differ")
        seen[key] = label


def check_dimension(field: str, dimension: Any, others: Iterable[str] = ()) -> None:
    """StudyError naming `field` when `dimension` is not a valid Grid, Range or Choice of that field (or a valid
    Settings under the key SETTING, none of whose settings gives a value to a field of the space's `others`)."""
    if field == SETTING or isinstance(dimension, Settings):
        if field != SETTING:
            raise StudyError(f"{field}: a Settings dimension sits under the key {SETTING!r}, not a field's")
        check_settings(dimension, others)
        return
    check_field(field)
    if isinstance(dimension, dict) and "grid_search" in dimension:
        raise StudyError(f"{field}: {{'grid_search': ...}} is Ray Tune's spelling; give "
                         f"Grid({list(dimension['grid_search'])!r}) (from sid.cluster.space)")
    if type(dimension).__module__.startswith("ray."):
        raise StudyError(f"{field}: {type(dimension).__name__} is a Ray Tune domain; give Range(low, high) or "
                         f"Choice([...]) (from sid.cluster.space): {field}'s scale comes from sid.config.SEARCHABLE")
    if not isinstance(dimension, (Grid, Range, Choice)):
        raise StudyError(f"{field}: expected Grid([...]), Range(low, high) or Choice([...]) (from sid.cluster.space), "
                         f"got {dimension!r}")
    if isinstance(dimension, Range) and SEARCHABLE[field] == "categorical":
        raise StudyError(f"{field}: {dimension!r}: {field} takes given values only (categorical): give Grid([...]) "
                         f"or Choice([...])")
    if isinstance(dimension, Range):
        why = _value_error(field, dimension.low, "low") or _value_error(field, dimension.high, "high")
        if why is None and not dimension.low < dimension.high:
            why = "expected low < high"
        if why is not None:
            raise StudyError(f"{field}: {dimension!r}: {why}")
        return
    values = dimension.values
    if not isinstance(values, tuple):
        raise StudyError(f"{field}: {type(dimension).__name__} takes a list of values, got {values!r}")
    if not values:
        raise StudyError(f"{field}: {dimension!r} is empty; give at least one value")
    why = next((why for why in (_value_error(field, v) for v in values) if why is not None), None)
    if why is not None:
        raise StudyError(f"{field}: {dimension!r}: {why}")
    if len(set(values)) < len(values):
        raise StudyError(f"{field}: {dimension!r}: values repeat (repeat a whole study with num_samples, or search "
                         "seeds)")


def check_space(space: Mapping[str, Any], searcher: str) -> None:
    """StudyError (one line, naming the field) unless `space` is a non-empty mapping of searchable fields to valid
    dimensions that `searcher` searches: Grids for 'grid', Ranges and Choices for 'optuna'."""
    if searcher not in SEARCHERS:
        raise StudyError(f"searcher must be one of {', '.join(SEARCHERS)}, got {searcher!r}")
    if not isinstance(space, Mapping) or not space:
        raise StudyError("the search space is empty; give at least one of " + ", ".join(SEARCHABLE))
    for field, dimension in space.items():
        check_dimension(field, dimension, others=[f for f in space if f != SETTING])
        if isinstance(dimension, Settings):
            if searcher != "grid":
                raise StudyError(f"{searcher} searcher: {SETTING} is a Settings, which a grid runs: give "
                                 f"searcher='grid'")
            continue
        if searcher == "grid" and not isinstance(dimension, Grid):
            raise StudyError(f"grid searcher: {field} is a {type(dimension).__name__}; a grid runs given values: "
                             f"give Grid([...]), or searcher='optuna'")
        if searcher == "optuna" and isinstance(dimension, Grid):
            raise StudyError(f"optuna searcher: {field} is a Grid; give Choice([...]) (Optuna picks among the values) "
                             f"or Range(low, high)")


def check_point(point: Any, space: Mapping[str, Dimension]) -> None:
    """StudyError naming the field unless `point` (one of Optuna's points_to_evaluate) gives values of searched
    fields that their dimensions contain."""
    if not isinstance(point, Mapping) or not point or set(point) - set(space):
        raise StudyError(f"points_to_evaluate: each point must give values of searched fields "
                         f"({', '.join(space)}), got {point!r}")
    for field, value in point.items():
        why = _value_error(field, value)
        if why is None and not space[field].contains(value):
            why = f"outside {space[field]!r}"
        if why is not None:
            raise StudyError(f"points_to_evaluate: {field}={value!r}: {why}")


def space_data(space: Mapping[str, Dimension]) -> dict[str, dict[str, Any]]:
    """The space as plain data for a study's config.yaml: {'alpha': {'grid': [...]}, 'lr': {'range': [low, high],
    'scale': 'log'}, 'seed': {'choice': [...]}}."""
    data = {}
    for field, dimension in space.items():
        kind = KINDS[type(dimension)]
        if isinstance(dimension, Range):
            data[field] = {kind: [_plain(dimension.low), _plain(dimension.high)], "scale": SEARCHABLE[field]}
        elif isinstance(dimension, Settings):
            data[field] = {kind: {label: {f: _plain(v) for f, v in fields.items()}
                                  for label, fields in dimension.settings.items()}}
        else:
            data[field] = {kind: [_plain(v) for v in dimension.values]}
    return data


def _plain(value: Any) -> int | float | str:
    """A checked value as a Python int, float or str (numpy's scalars are no YAML)."""
    if isinstance(value, str):
        return str(value)
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def space_from_data(data: Any, source: str = "space") -> dict[str, Dimension]:
    """The space of a study YAML (space_data's form: {field: {grid: [...]} | {range: [low, high]} | {choice:
    [...]}}, `scale` optional and then the registry's; and `setting: {settings: {label: {field: value}}}`), checked
    for any searcher; StudyError naming `source` and the field for anything else (a string such as '0.5,1.0' is not a
    list)."""
    if not isinstance(data, Mapping) or not data:
        raise StudyError(f"{source}: expected a mapping of fields to {{grid: [...]}}, {{range: [low, high]}} or "
                         f"{{choice: [...]}}, got {data!r}")
    kinds = {name: kind for kind, name in KINDS.items() if kind is not Settings}  # Settings: under SETTING only
    space: dict[str, Dimension] = {}
    for field, spec in data.items():
        where = f"{source}: {field}"
        if field == SETTING:
            if not isinstance(spec, Mapping) or set(spec) != {"settings"} or not isinstance(spec["settings"], Mapping):
                raise StudyError(f"{where}: expected {{settings: {{label: {{field: value, ...}}, ...}}}}, got {spec!r}")
            space[field] = Settings(spec["settings"])
            try:
                check_dimension(field, space[field])
            except StudyError as exc:
                raise StudyError(f"{source}: {exc}") from None
            continue
        check_field(field)
        if not isinstance(spec, Mapping) or len(set(spec) & set(kinds)) != 1 or set(spec) - {*kinds, "scale"}:
            raise StudyError(f"{where}: expected one of {{grid: [...]}}, {{range: [low, high]}}, {{choice: [...]}} "
                             f"(and an optional scale), got {spec!r}")
        (name,) = set(spec) & set(kinds)
        values = spec[name]
        if not isinstance(values, list) or (name == "range" and len(values) != 2):
            raise StudyError(f"{where}: {name} takes a YAML list{' [low, high]' if name == 'range' else ''}, "
                             f"got {values!r}")
        if "scale" in spec and spec["scale"] != SEARCHABLE[field]:
            raise StudyError(f"{where}: scale {spec['scale']!r}, but {field} is searched on a {SEARCHABLE[field]} "
                             f"scale (sid.config.SEARCHABLE; leave scale out)")
        space[field] = Range(*values) if name == "range" else kinds[name](values)
        check_dimension(field, space[field])
    return space


OBJECT = "object:"  # a study's saved sampler or callback given as an object: OBJECT + its class (a resume asks again)


def saved_name(entry: Any) -> str:
    """How a study's settings record its sampler or a callback: the registry key, or OBJECT + the object's class."""
    return entry if isinstance(entry, str) else OBJECT + type(entry).__name__


def check_sampler(sampler: Any) -> None:
    """StudyError unless `sampler` is a registered key or an Optuna sampler object (anything with sample_relative)."""
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise StudyError(f"sampler must be one of {', '.join(SAMPLERS)} (register_sampler adds one) or an Optuna "
                             f"sampler object, got {sampler!r}")
    elif not callable(getattr(sampler, "sample_relative", None)):
        raise StudyError(f"sampler: expected a registered key ({', '.join(SAMPLERS)}) or an Optuna sampler object, "
                         f"got {sampler!r}")


def register_sampler(key: str, factory: Callable[[int], Any]) -> None:
    """Make an Optuna sampler nameable by `key` (factory(seed) -> the sampler): a study that names it can be
    defined in YAML and resumed, in a process that registered it too (import your module before the study runs)."""
    if not isinstance(key, str) or not key.replace("-", "").replace("_", "").isalnum():
        raise StudyError(f"a sampler key is a plain name (letters, digits, - and _), got {key!r}")
    if not callable(factory):
        raise StudyError(f"sampler {key!r}: expected a callable factory(seed) -> sampler, got {factory!r}")
    SAMPLERS[key] = factory
