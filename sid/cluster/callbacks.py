"""Callbacks a study names by key: Ray Tune callbacks (`ray.tune.Callback`) of the user's choice, in the study's
Tune driver beside its own (sid.cluster.study.StudyCallback and the trackers).

A study gives callbacks as registry keys (`Study(callbacks=("progress-file",))`, `callbacks: [progress-file]` in a
study YAML) or as objects. A key is saved in the study's settings, so a resume rebuilds the callback; an object
serves the process it was given in, and a resume asks for it again. `register_callback` adds a key (in every process
that runs or resumes such a study: import the module that registers it first).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.tune

from sid.cluster.space import OBJECT, StudyError
from sid.cluster.watch import evaluation_line
from sid.files import PROGRESS_LOG, write_text_atomic

if TYPE_CHECKING:
    from sid.cluster.study import Study


class ProgressFile(ray.tune.Callback):
    """Appends each evaluation line and each trial's end to <study>/progress.log: `tail -f` follows a study whose
    output goes elsewhere (a detached or sbatch driver)."""

    def __init__(self, folder: Path, final_kimg: float) -> None:
        self.path, self.final_kimg = Path(folder) / PROGRESS_LOG, final_kimg

    def _write(self, line: str) -> None:  # the whole file again, atomically (sid/files.py): a few lines per trial
        old = self.path.read_text() if self.path.exists() else ""
        write_text_atomic(self.path, old + line + "\n")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._write(evaluation_line(trial.trial_id, result, self.final_kimg, ""))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(f"[{trial.trial_id}] ended")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(f"[{trial.trial_id}] error")


# Callbacks by key: key -> factory(study) -> a ray.tune.Callback. register_callback adds one.
CALLBACKS: dict[str, Callable[[Study], ray.tune.Callback]] = {
    "progress-file": lambda study: ProgressFile(study.folder, study.base.final_kimg),  # <study>/progress.log
}


def register_callback(key: str, factory: Callable[[Study], ray.tune.Callback]) -> None:
    """Make a callback nameable by `key` (factory(study) -> a ray.tune.Callback)."""
    if not isinstance(key, str) or not key.replace("-", "").replace("_", "").isalnum():
        raise StudyError(f"a callback key is a plain name (letters, digits, - and _), got {key!r}")
    if not callable(factory):
        raise StudyError(f"callback {key!r}: expected a callable factory(study) -> ray.tune.Callback, got {factory!r}")
    CALLBACKS[key] = factory


def check_callbacks(callbacks: Any) -> None:
    """StudyError unless `callbacks` is a tuple of registered keys and ray.tune.Callback objects."""
    if not isinstance(callbacks, (tuple, list)):
        raise StudyError(f"callbacks: expected a tuple of keys ({', '.join(CALLBACKS)}) or ray.tune.Callback "
                         f"objects, got {callbacks!r}")
    for entry in callbacks:
        if isinstance(entry, str) and entry not in CALLBACKS:
            raise StudyError(f"callbacks: unknown key {entry!r}; registered: {', '.join(CALLBACKS)} "
                             "(sid.cluster.callbacks.register_callback adds one)")
        if not isinstance(entry, (str, ray.tune.Callback)):
            raise StudyError(f"callbacks: {entry!r} is neither a registered key nor a ray.tune.Callback")


def check_saved_callbacks(study: Study, saved: tuple[str, ...]) -> None:
    """StudyError (one line) unless a resumed study can rebuild its `saved` callbacks: each key registered in this
    process, and each object given again, in order (by class)."""
    given = [type(e).__name__ for e in study.callbacks if not isinstance(e, str)]
    wanted = [e[len(OBJECT):] for e in saved if e.startswith(OBJECT)]
    if given != wanted:
        raise StudyError(f"--resume: study {study.name!r} ran with the callback object(s) {wanted or 'none'}, which "
                         f"are not saved; give them again, in order: Study(..., callbacks=(...)) (got "
                         f"{given or 'none'}; keys come back by themselves)")
    missing = [e for e in saved if not e.startswith(OBJECT) and e not in CALLBACKS]
    if missing:
        raise StudyError(f"--resume: study {study.name!r} names the callback key {missing[0]!r}, not registered in "
                         f"this process (register_callback it before resuming)")


def build_callbacks(study: Study, saved: tuple[str, ...] | None = None) -> list[ray.tune.Callback]:
    """The study's callbacks: keys built from the registry, objects as given. A resume passes the `saved` entries:
    keys are rebuilt, and the objects given again take the places of the saved ones (check_saved_callbacks)."""
    if saved is None:
        return [CALLBACKS[e](study) if isinstance(e, str) else e for e in study.callbacks]
    check_saved_callbacks(study, saved)
    objects = iter(e for e in study.callbacks if not isinstance(e, str))
    return [next(objects) if e.startswith(OBJECT) else CALLBACKS[e](study) for e in saved]
