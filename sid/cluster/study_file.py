"""A study defined in a YAML file: the same fields as `Study(...)` in Python, the space structured (grids, ranges,
choices: sid.cluster.space.space_from_data), the sampler and callbacks by registry key.

    name: tmax-ema
    base: {preset: digits-study, duration_kimg: 9.6}   # a preset and the fields it changes (or every field)
    searcher: grid
    space:
      tmax: {grid: [600, 800]}
      ema_mimg: {grid: [0.1, 0.5]}
    callbacks: [progress-file]

Run it with `python -m studies.search study.yaml`. Every mistake is one StudyError naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sid.cluster.resources import TrialResources
from sid.cluster.space import StudyError, space_from_data
from sid.cluster.study import Study
from sid.config import ConfigError, preset
from sid.results import Divergence
from sid.tracking import TrackingSettings

# Keys of a study file besides name, base and space: Study's fields whose values are plain YAML, with their types
# (None: the key may be null).
_NUMBER = (int, float)
PLAIN = {"searcher": (str,), "num_samples": (int,), "asha": (bool,), "grace_kimg": (*_NUMBER, type(None)),
         "reduction_factor": _NUMBER, "curve_stop": (bool,), "noise_z": _NUMBER, "sampler": (str,),
         "optuna_storage": (str, type(None)), "max_concurrent": (int, type(None)), "optuna_seed": (int,)}


def study_from_data(data: Any, source: str, **overrides: Any) -> Study:
    """The Study a study file's data defines (`overrides`: Study fields the command sets, e.g. storage); StudyError
    naming `source` and the key for anything else. Checked as any study is (Study.validate) when it runs."""
    def bad(key: str, why: str) -> StudyError:
        return StudyError(f"{source}: {key}: {why}")

    if not isinstance(data, dict):
        raise StudyError(f"{source}: expected a mapping of study fields (name, base, space, ...), got "
                         f"{type(data).__name__}")
    known = {"name", "base", "space", "points_to_evaluate", "resources", "tracking", "divergence", "callbacks",
             "storage", *PLAIN}
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise bad(unknown[0], f"not a study key (expected {', '.join(sorted(known))})")
    for key in ("name", "base", "space"):
        if key not in data:
            raise bad(key, "missing")
    base = data["base"]
    if not isinstance(base, dict) or not isinstance(base.get("preset"), str):
        raise bad("base", f"expected a mapping with a preset name and the fields it changes, got {base!r}")
    fields: dict[str, Any] = {k: data[k] for k in PLAIN if k in data}
    for key, value in fields.items():
        kinds = PLAIN[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise bad(key, f"expected {' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}, "
                           f"got {value!r}")
    try:
        fields["base"] = preset(base["preset"], **{k: v for k, v in base.items() if k != "preset"})
    except (ConfigError, TypeError) as exc:
        raise bad("base", str(exc)) from None
    fields["space"] = space_from_data(data["space"], f"{source}: space")
    for key, kind, make in (("resources", dict, lambda v: TrialResources(**v)),
                            ("divergence", dict, lambda v: Divergence(**v)),
                            ("tracking", dict, TrackingSettings.from_dict),
                            ("points_to_evaluate", list, tuple), ("callbacks", list, tuple),
                            ("storage", str, Path)):
        if key not in data:
            continue
        if not isinstance(data[key], kind):
            raise bad(key, f"expected a YAML {'mapping' if kind is dict else kind.__name__}, got {data[key]!r}")
        try:
            fields[key] = make(data[key])
        except (TypeError, ValueError) as exc:
            raise bad(key, str(exc)) from None
    if any(not isinstance(e, str) for e in fields.get("callbacks", ())):
        raise bad("callbacks", "expected registry keys (strings)")
    try:
        return Study(name=str(data["name"]), **{**fields, **overrides})
    except TypeError as exc:
        raise StudyError(f"{source}: {exc}") from None


def read_study_file(path: str | Path, **overrides: Any) -> Study:
    """The Study of a YAML study file; StudyError (one line) for an unreadable file or a bad key."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise StudyError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return study_from_data(data, str(path), **overrides)


