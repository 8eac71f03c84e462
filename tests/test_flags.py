"""One spelling per flag on every command line (sid.flags): no command has a flag under a retired spelling, each
retired spelling is one error line naming the new one (on the command line and as a config-file key), no flag is
abbreviated, and each config flag's help is its field's comment in sid/config.py."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

import sid.commands.distill
import sid.commands.evaluate
import sid.commands.generate
import sid.commands.ref
from analysis import common
from sid.commands.cli import field_comments
from sid.config import DistillConfig
from sid.flags import RENAMED
from studies import _common

COMMANDS = ["distill", "generate", "evaluate", "export", "phema", "ref", "digits"]
ANALYSIS = ["ablation", "best_table", "compare", "fid_vs_images", "hpo_report", "report", "import_official_logs"]
FIELD_FLAGS = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(DistillConfig)}


def parsers() -> dict[str, object]:
    found = {f"sid {name}": importlib.import_module(f"sid.commands.{name}").build_parser() for name in COMMANDS}
    found["studies"] = _common.build_parser("", swept=(), asha=False)
    found.update({f"analysis/{n}.py": importlib.import_module(f"analysis.{n}").build_parser() for n in ANALYSIS})
    return found


def long_flags(parser) -> set[str]:
    return {o for action in parser.options.values() for o in action.option_strings if o.startswith("--")}


@pytest.mark.parametrize("name, parser", parsers().items())
def test_no_command_has_a_flag_under_a_retired_spelling(name, parser):
    retired = (long_flags(parser) & set(RENAMED)) - FIELD_FLAGS  # --batch of sid distill is the config's own batch
    assert not retired, f"{name}: {sorted(retired)}; spell them {[RENAMED[f] for f in sorted(retired)]}"
    for old in parser.renamed:
        assert old not in long_flags(parser)  # the old spelling is no alias of the new one


def test_a_flag_that_names_a_config_value_is_spelled_as_the_config_field():
    """The flags of evaluate and ref that give a detector, a reference or an image count are the fields' flags."""
    evaluate, ref = sid.commands.evaluate.build_parser(), sid.commands.ref.build_parser()
    assert {"--fid-detector", "--fid-ref", "--fid-images"} <= long_flags(evaluate)
    assert "--fid-detector" in long_flags(ref) and "--fid-detector" in long_flags(common.parser(""))


RETIRED = [
    (sid.commands.evaluate.main, ["x.npz", "--ref", "ref.npz"], "--ref is no longer accepted: use --fid-ref"),
    (sid.commands.evaluate.main, ["x.npz", "--detector=x"], "--detector is no longer accepted: use --fid-detector"),
    (sid.commands.evaluate.main, ["x.npz", "--images", "64"], "--images is no longer accepted: use --fid-images"),
    (sid.commands.evaluate.main, ["x.npz", "--batch", "8"], "--batch is no longer accepted: use --batch-per-device"),
    (sid.commands.generate.main, ["--network", "digits", "--outdir", "p"], "--outdir is no longer accepted: use --out"),
    (sid.commands.generate.main, ["--network", "digits", "--batch", "8"], "use --batch-per-device"),
    (sid.commands.ref.main, ["--images", "pngs", "--fid-detector", "pixels", "--out", "r.npz"],
     "--images is no longer accepted: use DATA (the first argument)"),
    (sid.commands.ref.main, ["pngs", "--detector", "pixels", "--out", "r.npz"], "use --fid-detector"),
    (importlib.import_module("analysis.compare").main, ["results", "--detector", "x"], "use --fid-detector"),
    (importlib.import_module("studies.alpha_sweep").main, ["--workers-per-trial", "2"], "use --workers"),
]


@pytest.mark.parametrize("main, argv, words", RETIRED, ids=[" ".join(r[1]) for r in RETIRED])
def test_a_retired_spelling_is_one_line_naming_the_new_one(tmp_path, monkeypatch, capsys, main, argv, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert words in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_a_retired_key_in_a_config_file_names_the_new_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text("workers_per_trial: 2\n")
    with pytest.raises(SystemExit) as exited:
        importlib.import_module("studies.alpha_sweep").main(["--config", "study.yaml"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and "unknown key 'workers_per_trial'" in last and "now spelled workers" in last


@pytest.mark.parametrize("main, argv", [
    (sid.commands.evaluate.main, ["x.npz", "--seed-st=3"]),
    (sid.commands.generate.main, ["--network", "digits", "--no-prog"]),
    (sid.commands.distill.main, ["--alph=1.0"]),
    (importlib.import_module("analysis.compare").main, ["results", "--fid-det=x"]),
])
def test_no_flag_is_abbreviated(tmp_path, monkeypatch, capsys, main, argv):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and f"unrecognized arguments: {argv[-1]}" in capsys.readouterr().err


def test_each_config_flags_help_is_its_fields_comment(capsys):
    comments = field_comments()
    assert set(comments) == {f.name for f in dataclasses.fields(DistillConfig)}  # every field has its comment
    assert comments["alpha"] == "weight of the ||f_phi - f_psi||^2 term in the generator loss"
    assert comments["fid_ref"] == "reference statistics: 'digits', 'edm:<name>', .npz path or URL"
    with pytest.raises(SystemExit):
        sid.commands.distill.main(["--help"])
    text = "".join(capsys.readouterr().out.split())  # without white space: argparse wraps lines at hyphens too
    for name, comment in comments.items():
        if name != "preset":  # --preset chooses the starting values; its help lists the presets
            assert "".join(f"{comment} (default from --preset digits:".split()) in text, name
