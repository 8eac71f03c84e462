"""A study's search space in the project's own terms: `Grid`, `Range`, `Choice`, and the words a study is defined in
(searchers, Optuna samplers, StudyError).

    space = {"alpha": Grid([0.5, 1.0, 1.2]), "seed": Grid([0, 1, 2])}                      # searcher="grid"
    space = {"alpha": Range(0.5, 1.5), "lr": Range(1e-5, 1e-3), "seed": Choice([0, 1])}    # searcher="optuna"

A space says which values a field takes, not how they are spread: the searchable-field registry
(`sid.config.SEARCHABLE`) decides that a Range of `lr` or `glr` is searched on a log scale, one of `seed` over the
integers low..high (both included), and any other on a linear scale. `check_space` validates a space for a searcher
(every message names the field); `sid.cluster.search.tune_space` is the one translation to Ray Tune.

Plain Python, no Ray: the study scripts build and check a space without importing or starting Ray.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sid.config import SEARCHABLE

SEARCHERS = ("grid", "optuna")  # grid: every combination of the Grids' values; optuna: TPE/GP over Ranges and Choices
SAMPLERS = ("tpe", "gp")        # Optuna's samplers a study may use (sid.cluster.search.make_sampler)


class StudyError(ValueError):
    """A study that cannot run as asked (its space, its settings, its folder); the message says what was expected."""


def _values(values: Iterable[Any] | Any) -> Any:
    """A list or tuple as a tuple (a frozen dataclass holds no list); anything else as given, for check_space."""
    return tuple(values) if isinstance(values, (list, tuple, range)) else values


@dataclass(frozen=True)
class Grid:
    """Every value is run (with every value of the other Grids): the grid searcher's dimension."""

    values: tuple[Any, ...]  # the field's values, in the order the trials are made

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _values(self.values))

    def corners(self) -> list[Any]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return value in self.values


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
class Choice:
    """One of the values, picked by the searcher: Optuna's categorical dimension."""

    values: tuple[Any, ...]  # the field's candidate values

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _values(self.values))

    def corners(self) -> list[Any]:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return value in self.values


Dimension = Grid | Range | Choice
KINDS = {Grid: "grid", Range: "range", Choice: "choice"}  # a dimension's name in a study's config.yaml


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _value_error(field: str, value: Any, what: str = "values") -> str | None:
    """Why `value` cannot be a value of `field` (None: it can): the registry's kind, finite, > 0 on a log scale;
    `what` names the value in the message ('values', 'low', 'high')."""
    scale = SEARCHABLE[field]
    if scale == "name":
        if what != "values":
            return f"expected Grid([...]) or Choice([...]) of names ({field} has no range)"
        return None if isinstance(value, str) else "expected names"
    if scale == "int":
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "expected integers"
    if not _is_number(value) or not math.isfinite(value):
        return "expected finite numbers"
    if scale == "log" and value <= 0:
        return f"expected {what} > 0 ({field} is searched on a log scale)"
    return None


def check_dimension(field: str, dimension: Any) -> None:
    """StudyError naming `field` when `dimension` is not a valid Grid, Range or Choice of that field."""
    if field not in SEARCHABLE:
        raise StudyError(f"cannot search {field}; searchable fields: {', '.join(SEARCHABLE)}")
    if isinstance(dimension, dict) and "grid_search" in dimension:
        raise StudyError(f"{field}: {{'grid_search': ...}} is Ray Tune's spelling; give "
                         f"Grid({list(dimension['grid_search'])!r}) (from sid.cluster.space)")
    if type(dimension).__module__.startswith("ray."):
        raise StudyError(f"{field}: {type(dimension).__name__} is a Ray Tune domain; give Range(low, high) or "
                         f"Choice([...]) (from sid.cluster.space): {field}'s scale comes from sid.config.SEARCHABLE")
    if not isinstance(dimension, (Grid, Range, Choice)):
        raise StudyError(f"{field}: expected Grid([...]), Range(low, high) or Choice([...]) (from sid.cluster.space), "
                         f"got {dimension!r}")
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
        check_dimension(field, dimension)
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
        else:
            data[field] = {kind: [_plain(v) for v in dimension.values]}
    return data


def _plain(value: Any) -> int | float | str:
    """A checked value as a Python int, float or str (numpy's scalars are no YAML)."""
    if isinstance(value, str):
        return str(value)
    return int(value) if isinstance(value, numbers.Integral) else float(value)
