"""A study's trial settings (sid.cluster.trials.TrialSettings), the resume contract: a round trip through
<study>/trial_settings.json, written atomically; a torn, foreign or hand-edited file is one StudyError naming the file
and the key, also through a study script's --resume, before Ray starts; a folder written before a field existed
resumes with the field's default."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

import pytest
import ray

from sid.cluster.resources import TrialResources
from sid.cluster.space import StudyError
from sid.cluster.trials import TrialSettings
from sid.config import DistillConfig, preset
from sid.files import SETTINGS_FILE, WriteError

TINY = dict(batch=8, batch_per_device=8, fid_images=256, duration_kimg=0.032, eval_every_kimg=0.016)


def settings(folder: Path) -> TrialSettings:
    return TrialSettings(base=preset("digits", **TINY, alpha=1.0), study=folder.name, folder=folder.resolve(),
                         resources=TrialResources(workers=2, gpus_per_worker=0.0, cpus_per_worker=0.995,
                                                  placement_strategy="PACK"),
                         sampler="object:CmaEsSampler", callbacks=("progress-file", "object:MyCallback"))


def written(folder: Path, change) -> Path:
    """The settings file of `folder`, its JSON changed by `change(data)` (which may return a replacement)."""
    data = settings(folder).to_dict()
    data = change(data) or data
    path = folder / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_settings_round_trip_through_their_file(tmp_path):
    mine = settings(tmp_path / "study")
    assert mine.write() == tmp_path / "study" / SETTINGS_FILE
    assert TrialSettings.read(tmp_path / "study") == mine


def test_a_folder_written_before_a_field_existed_resumes_with_its_default(tmp_path):
    # As today's studies write it, less fields added later: the config's newest fields, the resources' restarts and
    # placement (a study written before plan() chose it).
    def older(data):
        for key in ("keep_snapshots", "phema", "phema_every_kimg", "fid_images_final"):
            del data["base"][key]
        del data["resources"]["max_failures"], data["resources"]["placement_strategy"]
        del data["sampler"], data["callbacks"]

    written(tmp_path / "study", older)
    read = TrialSettings.read(tmp_path / "study")
    fields = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    assert read.base == settings(tmp_path / "study").base  # the preset leaves them at their defaults
    assert read.base.keep_snapshots == fields["keep_snapshots"] and read.base.phema == fields["phema"]
    assert read.resources.max_failures == TrialResources().max_failures
    assert read.resources.placement_strategy is None  # open: plan() chooses it on the resumed cluster
    assert (read.sampler, read.callbacks) == ("tpe", ())  # the only sampler and no callbacks back then


def set_key(path: str, value):
    """A change to the settings' JSON: the value at a dotted path ('base.alpha'); DELETE removes the key."""
    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return change


DELETE = object()


@pytest.mark.parametrize("change, words", [
    (lambda data: [data], ["expected a JSON object of trial settings, got list"]),
    (set_key("seed", 0), ["key 'seed': not a trial setting"]),
    (set_key("resources", DELETE), ["key 'resources': missing"]),
    (set_key("base", "digits"), ["key 'base': expected a JSON object, got str"]),
    (set_key("folder", 3), ["key 'folder': expected a string, got int"]),
    (set_key("base.alpha", "1.2"), ["key 'base': DistillConfig.alpha: must be a number, got '1.2'"]),
    (set_key("base.lr", -1.0), ["key 'base': DistillConfig.lr: must be > 0"]),
    (set_key("base.learning_rate", 1e-4), ["key 'base': DistillConfig has no field 'learning_rate'"]),
    (set_key("resources.workers", 0), ["key 'resources': workers must be >= 1"]),
    (set_key("resources.gpus", 1), ["key 'resources': TrialResources has no field 'gpus'"]),
    (set_key("resources.cpus_per_worker", None), ["key 'resources': cpus_per_worker is null"]),
    (set_key("study", ""), ["key 'study': expected a study name"]),
    (set_key("sampler", {"key": "tpe"}), ["key 'sampler': expected a string, got dict"]),
    (set_key("callbacks", "progress-file"), ["key 'callbacks': expected a list of strings, got 'progress-file'"]),
    (set_key("folder", "results/elsewhere"), ["key 'folder': expected a study name and an absolute folder"]),
    (set_key("folder", "/somewhere/else"), ["key 'folder': /somewhere/else, but the file is in",
                                            "resumes where it was started"]),
])
def test_an_edited_or_foreign_settings_file_is_one_error_naming_the_file_and_the_key(tmp_path, change, words):
    path = written(tmp_path / "study", change)
    with pytest.raises(StudyError) as raised:
        TrialSettings.read(tmp_path / "study")
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert all(w in message for w in words), message


@pytest.mark.parametrize("content", [b"", b'{"base": {"alpha": 1.2', b"\x80\x81 not text", b"[1, 2"])
def test_a_torn_settings_file_is_one_error_naming_it(tmp_path, content):
    (tmp_path / SETTINGS_FILE).write_bytes(content)
    with pytest.raises(StudyError, match=f"{tmp_path / SETTINGS_FILE}: not readable trial settings") as raised:
        TrialSettings.read(tmp_path)
    assert "\n" not in str(raised.value)


def test_a_folder_without_settings_names_what_wrote_it(tmp_path):
    with pytest.raises(StudyError, match="written by an older version of this project"):
        TrialSettings.read(tmp_path)


def test_the_settings_file_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    folder, seen = tmp_path / "study", []
    replace = os.replace

    def spy(source, target):  # the moment the file appears under its name: what is there, what comes
        seen.append((Path(target).exists() and Path(target).read_text(), Path(source).read_text()))
        replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    first = settings(folder)
    first.write()
    second = dataclasses.replace(first, study="renamed")
    second.write()
    assert [json.loads(new)["study"] for _, new in seen] == ["study", "renamed"]  # always complete JSON
    assert seen[0][0] is False and json.loads(seen[1][0]) == first.to_dict()  # nothing, then the old file whole

    def fails(source, target):  # the disk fills just before the rename
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fails)
    with pytest.raises(WriteError, match=f"cannot write {folder / SETTINGS_FILE}: No space left"):
        dataclasses.replace(first, study="lost").write()
    assert TrialSettings.read(folder) == second  # the old file, untouched
    assert sorted(p.name for p in folder.iterdir()) == [SETTINGS_FILE]  # no temporary file left


@pytest.mark.timeout(60)
def test_resuming_a_study_with_a_torn_settings_file_is_one_error_before_ray_starts(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "results" / "torn"
    folder.mkdir(parents=True, mode=0o755)
    (folder / "tuner.pkl").write_bytes(b"")  # Tune's state: a study to resume (it is not unpickled before the check)
    (folder / "tuner.pkl").chmod(0o644)
    (folder / SETTINGS_FILE).write_text('{"base": {"alpha": 1.2, "lr"')
    with pytest.raises(SystemExit) as exited:
        importlib.import_module("studies.alpha_sweep").main(["--resume", "--name", "torn", "--storage",
                                                      str(tmp_path / "results")])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"error: {folder / SETTINGS_FILE}: not readable trial settings" in error[0], error
    assert not ray.is_initialized()
