"""Config files: --print-config writes the complete resolved config, --config reads it back to the same config
(command-line flags win), --help gives each field's value under the chosen preset, and a bad file is one line with
exit code 2 naming the key and what it expected."""

from __future__ import annotations

import pytest
import yaml

import sid.commands.distill
import studies.alpha_sweep
import studies.hpo
from sid.config import preset


def printed(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_run_config_round_trips_through_print_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = printed(sid.commands.distill.main, ["--preset", "digits", "--alpha", "1.5", "--tracker", "tensorboard",
                                  "--precision", "fp16", "--print-config"], capsys)
    values = yaml.safe_load(text)
    assert values["alpha"] == 1.5 and values["adam_eps"] is None and values["trackers"] == ["tensorboard"]
    assert "adam_eps: null  # the official rule: 1e-06 with precision fp16" in text  # unset: follows precision
    assert values["fid_ref"] == "digits" and values["out"] == "runs/digits"  # resolved, not None
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert printed(sid.commands.distill.main, ["--config", str(path), "--print-config"], capsys) == text
    argv = ["--config", str(path), "--alpha", "0.8", "--print-config"]
    again = yaml.safe_load(printed(sid.commands.distill.main, argv, capsys))
    assert again == {**values, "alpha": 0.8}  # the command line wins over the file
    # a hand-written file: a few keys, flag spellings accepted
    path.write_text("preset: cifar10-uncond\ntracker: mlflow\nlr: 2.0e-5\n")
    short = yaml.safe_load(printed(sid.commands.distill.main, ["--config", str(path), "--print-config"], capsys))
    want = {**preset("cifar10-uncond", lr=2e-5).to_dict(), "adam_eps": None}
    assert {k: short[k] for k in want} == want and short["trackers"] == ["mlflow"]


def test_study_config_holds_space_searcher_and_resources_and_round_trips(tmp_path, monkeypatch, capsys):
    hpo = studies.hpo
    text = printed(hpo.main, ["--lr-range", "1e-5,1e-2", "--num-samples", "4", "--no-asha", "--workers",
                              "2", "--batch", "256", "--print-config"], capsys)
    values = yaml.safe_load(text)
    assert values["lr_range"] == "1e-5,1e-2" and values["num_samples"] == 4 and values["asha"] is False
    assert values["workers"] == 2 and values["preset"] == "digits-study" and values["batch"] == 256
    assert "lr" not in values  # searched: no fixed value
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert printed(hpo.main, ["--config", str(path), "--print-config"], capsys) == text
    sweep = studies.alpha_sweep  # a YAML list for a comma-list flag
    path.write_text("alphas: [0.5, 1.0]\nseeds: 2\n")
    values = yaml.safe_load(printed(sweep.main, ["--config", str(path), "--print-config"], capsys))
    assert values["alphas"] == "0.5,1.0" and values["seeds"] == 2


def test_help_shows_each_fields_value_under_the_chosen_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = printed(sid.commands.distill.main, ["--preset", "cifar10-uncond", "--help"], capsys)
    flat = " ".join(text.split())
    assert "(default from --preset cifar10-uncond: 256)" in flat  # --batch
    assert "(default from --preset cifar10-uncond: edm:cifar10-32x32)" in flat  # --fid-ref
    assert "default: None" not in flat


@pytest.mark.parametrize("content, words", [
    ("alpah: 1.2\n", "unknown key 'alpah'"),
    ("alpha: abc\n", "alpha: expected a number, got 'abc'"),
    ("alpha: .inf\n", "alpha: expected a number, got inf"),
    ("batch: 1.5\n", "batch: expected an integer, got 1.5"),
    ("batch: true\n", "batch: expected an integer, got True"),
    ("resume: 1\n", "resume: expected true or false, got 1"),
    ("trackers: [tensorbord]\n", "trackers: expected a list of tensorboard, mlflow, wandb"),
    ("preset: nope\n", "preset: expected one of"),
    ("- alpha\n", "expected a mapping of option names to values"),
    ("alpha: [1\n", "not valid YAML"),
    ("lr: -1\n", "DistillConfig.lr: must be > 0"),  # types right, value checked as a flag's would be
])
def test_bad_config_file_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, content, words):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit) as exited:
        sid.commands.distill.main(["--config", str(path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and words in last, last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written
