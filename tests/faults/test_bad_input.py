"""Bad input everywhere a user types: every flag of `python -m sid distill` (every DistillConfig field among them)
and of the three study scripts, given an invalid value, ends with one `error:` line and exit code 2, no traceback,
and nothing written. The commands' main(argv) run in this process (a subprocess costs ~3 s here); a guard fails
the case at once if validation let it through to training or to starting Ray."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import ray

import sid.cluster.study
import sid.commands.distill
import sid.run
from sid.config import DistillConfig

FLOATS = [f.name for f in dataclasses.fields(DistillConfig) if f.type in ("float", float)]
INTS = [f.name for f in dataclasses.fields(DistillConfig) if f.type in ("int", int)]
# preset is --preset (below); any finite alpha is a valid SiD loss weight; data is read only by the methods that
# train on real images, which check it (sid.datasets; tests/test_datasets.py)
UNCONSTRAINED = {"preset", "alpha", "data"}
# Values outside each field's domain (beyond the type errors that every numeric field gets below).
OUT_OF_RANGE = {
    "teacher": [("", "must name a teacher"), ("missing.pt", "missing.pt: no such network file"),
                ("missing.pkl", "no such file: 'missing.pkl'"), ("ftp://host/t.pkl", "unsupported URL scheme")],
    "init_generator": [("missing.pt", "missing.pt: no such generator file"), ("nowhere", "nowhere: no such file or "
                       "folder; expected a run folder"), ("HELD", "HELD: a folder but not a run folder"),
                       ("FILE", "expected an EDM/SiD network-snapshot .pkl")],
    "tmax": [("0", "must be in 1..1000"), ("1001", "must be in 1..1000")],
    "sigma_init": [("0", "must be > 0"), ("-2.5", "must be > 0")],
    "ls": [("0", "must be > 0")],
    "lsg": [("-1", "must be > 0")],
    "lr": [("0", "must be > 0"), ("-1e-4", "must be > 0")],
    "glr": [("-1e-4", "must be > 0")],
    "beta1": [("1", "must be in [0, 1)"), ("-0.1", "must be in [0, 1)")],
    "g_beta1": [("1.5", "must be in [0, 1)")],
    "beta2": [("1", "must be in [0, 1)")],
    "adam_eps": [("0", "must be > 0")],
    "batch": [("0", "must be > 0"), ("-128", "must be > 0"), ("100", "divisible by batch_per_device=128")],
    "batch_per_device": [("-1", "must be >= 0")],
    "precision": [("fp8", "must be one of fp32")],
    "memory_format": [("nhwc", "must be one of contiguous")],
    "compile": [("yes", "must be one of off")],
    "dropout": [("1.5", "must be in [0, 1]"), ("-0.1", "must be in [0, 1]")],
    "augment": [("2", "must be in [0, 1]")],
    "ema_mimg": [("0", "must be > 0")],
    "ema_rampup": [("-0.05", "must be in [0, 1]")],
    "duration_kimg": [("0", "must be > 0"), ("-1", "must be > 0")],
    "eval_every_kimg": [("0", "must be > 0")],
    "eval_schedule": [("ticks", "must be one of every, official")],
    "eval_tick_kimg": [("0", "must be > 0")],
    "phema": [("0.5", "phema: expected distinct sigma_rel values in (0, 0.3)"), ("0.05,0.05", "distinct")],
    "phema_every_kimg": [("-1", "must be >= 0")],
    "keep_snapshots": [("none", "must be 'all', 'best', 'last' or 'best,last'"), ("best,all", "must be 'all'")],
    "fid_images": [("0", "must be > 0"), ("-1", "must be > 0"),
                   ("1", "must be >= 2")],
    "fid_images_final": [("-1", "must be >= 0")],
    "method": [("gan", "must be one of sid, sida")],
    "lsd": [("-1", "must be >= 0")],
    "lsg_gan": [("-1", "must be >= 0")],
    "generator_warmup_kimg": [("-1", "must be >= 0")],
    "adversarial_warmup_kimg": [("-1", "must be >= 0")],
    "eval_metrics": [("fid,xx", "distinct metrics from fd, is"), ("is", "that includes fd"), ("fd,pr", "got 'fd,pr'")],
    "fid_detector": [("inception", "must be one of inception-2015-12-05"), ("missing.pt", "cannot read it")],
    "fid_ref": [("missing.npz", "no such file: 'missing.npz'"), ("edm:nope", "known names")],
    "seed": [("-1", "must be >= 0")],
    "class_counts": [("counts.txt", "must be '', 'uniform' or an .npz"),
                     ("c.npz", "class_counts c.npz: the teacher digits is unconditional")],
}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def row(prefix: list, case) -> object:
    """A table row `prefix + case`; a case given as pytest.param keeps its marks (a known bug, xfail)."""
    values, marks = (case.values, case.marks) if hasattr(case, "marks") else (tuple(case), ())
    return pytest.param(*prefix, *values, marks=marks, id=" ".join(map(str, [*prefix, values[0]])))


DISTILL_CASES = [
    *[(flag(f), v, w) for f in FLOATS for v, w in [("abc", "invalid float value: 'abc'"), ("nan", "must be finite"),
                                                   ("inf", "must be finite"), ("-inf", "must be finite")]],
    *[(flag(f), v, w) for f in INTS for v, w in [("abc", "invalid int value: 'abc'"), ("1.5", "invalid int value")]],
    *[row([flag(f)], c) for f, cases in OUT_OF_RANGE.items() for c in cases],
    ("--preset", "cifar100", "invalid choice: 'cifar100'"),
    ("--workers", "0", "--workers must be >= 1"),
    ("--workers", "two", "invalid int value: 'two'"),
    ("--gpus-per-worker", "-1", "--gpus-per-worker must be >= 0"),
    ("--gpus-per-worker", "nan", "--gpus-per-worker must be >= 0"),
    ("--device", "gpu", "--device: unknown device 'gpu'"),
    ("--device", "cuda:7", "--device: device 'cuda:7': this machine has"),
    ("--out", "FILE", "FILE exists and is not a folder"),
    ("--out", "FILE/run", "FILE exists and is not a folder"),
    ("--resume", None, "holds no checkpoint.pt to continue from"),
    ("--out", "HELD", "already holds a run; pass --resume"),
    ("--resume --out", "TORN", "TORN/checkpoint.pt: not a training checkpoint of this project"),
]


def test_every_config_field_has_out_of_range_cases_or_is_declared_unconstrained():
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    assert set(OUT_OF_RANGE) | UNCONSTRAINED == fields and not set(OUT_OF_RANGE) & UNCONSTRAINED


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with a file where a folder is expected, a folder holding a run (HELD) and one holding a
    torn checkpoint (TORN); returns a function listing what is there, to show that a case wrote nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    (tmp_path / "HELD").mkdir()
    (tmp_path / "HELD" / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "TORN").mkdir()
    (tmp_path / "TORN" / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut off by a power loss")
    return lambda: sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))


def expect_one_error(run, capsys, written, words: str) -> None:
    before = written()
    with pytest.raises(SystemExit) as exited:
        run()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and words in last, last
    assert written() == before  # nothing written
    assert not ray.is_initialized()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, value, words", DISTILL_CASES)
def test_distill_flag_with_a_bad_value_is_one_error_with_exit_code_2(workdir, monkeypatch, capsys, name, value,
                                                                      words):
    def started(*args, **kwargs):
        raise AssertionError("validation let a bad value through: training started")

    monkeypatch.setattr(sid.run, "train", started)  # after the teacher and statistics loaded
    argv = name.split()
    if value is not None:
        argv[-1] += f"={value}"  # --alpha=-inf: argparse would take a separate '-inf' for a flag
    expect_one_error(lambda: sid.commands.distill.main(argv), capsys, workdir, words)


# ---------------------------------------------------------------------------------------------- study scripts
COMMON = [
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--storage", "FILE"], "FILE exists and is not a folder"),
    (["--storage", "FILE/results"], "FILE exists and is not a folder"),
    (["--storage", "s3://bucket/sid"], "local or mounted shared folder"),
    (["--resume"], "holds no study to continue"),
    (["--name", "HELD"], "already holds a study; pass --resume"),
    (["--name", "../up"], "plain folder name"),
    (["--name", ".hidden"], "plain folder name"),
    (["--max-concurrent", "0"], "max_concurrent must be >= 1"),
    (["--max-concurrent", "many"], "invalid int value: 'many'"),
    (["--workers", "0"], "workers must be >= 1"),
    (["--workers-per-trial", "2"], "--workers-per-trial is no longer accepted: use --workers"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker must be > 0"),
    (["--cpus-per-worker", "0.005"], "cpus_per_worker must leave room"),  # 0.01 of each trial's CPUs is its driver's
    (["--cpus-per-worker", "nan"], "--cpus-per-worker must be > 0"),
    (["--cpus-per-worker", "inf"], "--cpus-per-worker must be > 0"),
    (["--gpus-per-worker", "-1"], "--gpus-per-worker must be >= 0"),
    (["--placement", "ANYWHERE"], "invalid choice: 'ANYWHERE'"),
    (["--max-failures", "-1"], "--max-failures must be >= 0"),
    (["--noise-z", "-1"], "noise_z must be a finite number >= 0"),
    (["--noise-z", "nan"], "noise_z must be a finite number >= 0"),
    (["--gpus-per-worker", "2"], "each DDP rank drives one GPU"),
    (["--gpus-per-worker", "nan"], "--gpus-per-worker must be >= 0, got nan"),
    (["--duration-kimg", "-1"], "DistillConfig.duration_kimg: must be > 0"),
    (["--fid-images", "abc"], "invalid int value: 'abc'"),
    (["--seed", "-1"], "DistillConfig.seed: must be >= 0"),
    (["--beta2", "nan"], "DistillConfig.beta2: must be finite"),
    (["--teacher", "/nowhere/teacher.pt"], "no such file"),
]
SPECIFIC = {
    "alpha_sweep": [
        (["--alphas", ""], "comma-separated list of numbers"), (["--alphas", "1.0,,1.2"], "comma-separated"),
        (["--alphas", "1.0,abc"], "'abc' is not a number"), (["--alphas", "1.0,1.0"], "repeat"),
        (["--alphas", "nan"], "--alphas: 'nan' is not a finite number"),
        (["--alphas", "1.0,inf"], "--alphas: 'inf' is not a finite number"),
        (["--seeds", "0"], "--seeds: expected a count >= 1"), (["--seeds", "-2"], "--seeds: expected a count >= 1"),
        (["--seeds", "x"], "invalid int value: 'x'"), (["--lr", "0"], "DistillConfig.lr: must be > 0"),
    ],
    "sigma_init_sweep": [
        (["--sigma-inits", ""], "comma-separated list of numbers"),
        (["--sigma-inits", "0,2.5"], "DistillConfig.sigma_init: must be > 0"),
        (["--sigma-inits", "-1"], "DistillConfig.sigma_init: must be > 0"),
        (["--sigma-inits", "nan"], "--sigma-inits: 'nan' is not a finite number"),
        (["--seeds", "0"], "--seeds: expected a count >= 1"),
    ],
    "hpo": [
        (["--alpha-range", "1.0"], "--alpha-range: expected LOW,HIGH"),
        (["--alpha-range", "1.5,0.5"], "LOW < HIGH"), (["--alpha-range", "0.5,0.5"], "repeat"),
        (["--alpha-range", "0.5,nan"], "--alpha-range: 'nan' is not a finite number"),
        (["--lr-range", "0,1e-3"], "LOW > 0 (log scale)"), (["--glr-range", "-1,1"], "LOW > 0 (log scale)"),
        (["--sigma-init-range", "0,4"], "DistillConfig.sigma_init: must be > 0"),
        (["--num-samples", "0"], "--num-samples: expected a count >= 1"),
        (["--num-samples", "ten"], "invalid int value: 'ten'"),
        (["--optuna-seed", "-1"], "--optuna-seed: expected 0 <= seed < 2**32"),
        (["--lr", "1e-4"], "unrecognized arguments: --lr"),  # searched: no fixed-value flag, no abbreviation
        (["--sampler", "cma"], "invalid choice: 'cma'"),
        (["--optuna-storage", "sqlite:////no/such/folder/hpo.db"], "cannot open the Optuna storage"),
        (["--points-to-evaluate", "alpha=1"], "--points-to-evaluate: expected 'preset', 'none' or a JSON list"),
        (["--points-to-evaluate", '{"alpha": 1}'], "--points-to-evaluate: expected a JSON list of objects"),
        (["--points-to-evaluate", '[{"tmax": 500}]'], "points_to_evaluate: each point must give values of searched"),
    ],
}
STUDY_CASES = [row([script, []], c) for script in ("alpha_sweep", "sigma_init_sweep", "hpo")
               for c in [*COMMON, *SPECIFIC[script]]]
# A dry run validates the same study; only the study folder and --resume differ: it writes <name>-dry-run (so HELD is
# no obstacle) and has nothing to resume.
STUDY_CASES += [row(["alpha_sweep", ["--dry-run"]], c) for c in COMMON
                if c[0] not in (["--resume"], ["--name", "HELD"])]
STUDY_CASES += [row(["alpha_sweep", ["--dry-run"]], (["--resume"], "nothing to --resume"))]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script, mode, argv, words", STUDY_CASES)
def test_study_flag_with_a_bad_value_is_one_error_with_exit_code_2(workdir, monkeypatch, capsys, script, mode, argv,
                                                                    words):
    import sid.cluster.dry_run  # noqa: PLC0415 (imports Ray: only this path needs it)

    def started(*args, **kwargs):
        raise AssertionError("validation let a bad value through: Ray was about to start")

    monkeypatch.setattr(sid.cluster.study, "connect", started)
    monkeypatch.setattr(sid.cluster.dry_run, "connect", started)  # its own import of it
    main = importlib.import_module(f"studies.{script}").main
    storage = [] if "--storage" in argv else ["--storage", "."]
    argv = [f"{argv[0]}={argv[1]}", *argv[2:]] if len(argv) > 1 else argv  # --glr-range=-1,1 (see above)
    expect_one_error(lambda: main([*mode, *argv, *storage]), capsys, workdir, words)
