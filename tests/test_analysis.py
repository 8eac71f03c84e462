"""analysis/: figures and tables rendered from a small Parquet fixture, checked against values computed here
independently from the fixture's rows; the official-log importer on files written in the official format."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from analysis import ablation, best_table, common, fid_vs_images, hpo_report, import_official_logs, searches
from sid.results import read_evaluations, write_evaluations
from sid.testing.results import ALPHAS, DIVERGED, ERRORED, KIMG, NAN_ROW, SEEDS, distance, gid, row, write_results

ROOT = Path(__file__).resolve().parent.parent

DIGITS_LABEL = "FD on digits-features-v1 (2,048 images)"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def sweep(results):
    with pytest.warns(UserWarning, match="zz_cut.parquet"):
        return common.load([results.alpha_sweep])


@pytest.fixture(scope="module")
def hpo(results):
    return common.load([results.hpo])




# ---------------------------------------------------------------- loading


def test_load_skips_the_cut_file_and_keeps_every_readable_row(results, sweep):
    evals, trials = sweep
    expected = results.evals[results.evals["study"] == "alpha_sweep"]
    assert len(evals) == len(expected) and "cut" not in set(evals["trial_id"])
    assert len(trials) == len(ALPHAS) * len(SEEDS) + 1  # + the trial that failed before any evaluation
    errored = trials.set_index("trial_id").loc[ERRORED[1]]
    assert errored["state"] == "error" and errored["fid_images"] == 2048 and math.isnan(errored["best_fid"])


def test_summary_without_trials_file_matches_the_rows(results, hpo):
    _, trials = hpo
    rows = results.evals[results.evals["study"] == "hpo"]
    best = rows.groupby("trial_id")["fid"].min()  # pandas skips NaN
    got = trials.set_index("trial_id")
    np.testing.assert_allclose(got.loc[best.index, "best_fid"], best, rtol=0, atol=0)
    assert got["diverged"].sum() == 1 and not np.isfinite(got.loc[got["diverged"], "best_fid"]).any()


def test_final_value_is_last_finite_and_nan_for_a_diverged_trial(results, sweep):
    trials = sweep[1].set_index("trial_id")
    assert math.isnan(trials.loc[DIVERGED[1], "final_fid"])
    assert trials.loc[DIVERGED[1], "state"] == "diverged" and np.isfinite(trials.loc[DIVERGED[1], "best_fid"])
    rows = results.evals[(results.evals["trial_id"] == NAN_ROW[1]) & np.isfinite(results.evals["fid"])]
    assert trials.loc[NAN_ROW[1], "final_fid"] == rows.sort_values("kimg")["fid"].iloc[-1]


@pytest.mark.parametrize("detector, images, label", [
    ("inception-2015-12-05", 50_000, "FID (Inception, 50k)"),
    ("inception-2015-12-05", 10_000, "FID (Inception, 10k)"),
    ("digits-features-v1", 2048, DIGITS_LABEL),
    ("digits-features-v1", 2000, "FD on digits-features-v1 (2k images)"),
])
def test_metric_label_calls_only_inception_fid(detector, images, label):
    assert common.metric_label(detector, images) == label


def test_mixed_metrics_need_a_choice(results):
    evals, _ = common.load([results.cifar_run, results.hpo])
    with pytest.raises(common.AnalysisError, match="--fid-detector"):
        common.select_metric(evals)
    chosen, label = common.select_metric(evals, "inception-2015-12-05")
    assert label == "FID (Inception, 50k)" and set(chosen["study"]) == {""}


# ---------------------------------------------------------------- figures


def test_fid_vs_images_one_curve_per_alpha_at_the_seed_mean(results, sweep):
    evals, trials = sweep
    fig = fid_vs_images.plot(evals, trials, teacher_fid=3.0)
    ax = fig.axes[0]
    curves = gid(ax.get_lines(), "curve:")
    assert len(curves) == len(ALPHAS)
    colours = common.palette(evals["alpha"])
    rows = results.evals[(results.evals["study"] == "alpha_sweep") & (results.evals["kimg"] > 0)]
    for line in curves:
        alpha = float(line.get_gid().split(":")[1])
        want = rows[rows["alpha"] == alpha].groupby("kimg")["fid"].mean().dropna()  # mean of finite seeds
        np.testing.assert_allclose(line.get_xdata(), want.index, rtol=1e-12)
        np.testing.assert_allclose(line.get_ydata(), want.to_numpy(), rtol=1e-12)
        assert line.get_color() == colours[alpha]
    assert [tuple(t.get_ydata()) for t in gid(ax.get_lines(), "teacher")] == [(3.0, 3.0)]
    crosses = gid(ax.collections, "diverged")[0].get_offsets()
    last_finite = rows.query("trial_id == @DIVERGED[1] and kimg == 6.4")["fid"].item()
    assert crosses.tolist() == [[6.4, pytest.approx(last_finite)]]
    assert ax.get_ylabel() == DIGITS_LABEL and ax.get_xscale() == ax.get_yscale() == "log"


def test_fid_vs_images_large_runs_in_mimg_with_inception_label(results):
    evals, trials = common.load([results.cifar_run])
    ax = fid_vs_images.plot(evals, trials, teacher_fid=1.97).axes[0]
    (curve,) = gid(ax.get_lines(), "curve:")
    assert "Mimg" in ax.get_xlabel() and ax.get_ylabel() == "FID (Inception, 50k)"
    np.testing.assert_allclose(curve.get_xdata(), evals["kimg"][evals["kimg"] > 0] / 1000)


# Without a finite value: the failed alpha-1.0 trial always, the diverged alpha-1.5 trial for its final value.
@pytest.mark.parametrize("stat, column, missing", [("best", "best_fid", [1.0]), ("final", "final_fid", [1.0, 1.5])])
def test_ablation_one_point_per_trial_and_diverged_pinned_on_top(sweep, stat, column, missing):
    trials = sweep[1]
    ax = ablation.plot(trials, x="alpha", stat=stat).axes[0]
    points = gid(ax.collections, "trials")[0].get_offsets()
    finite = trials[np.isfinite(trials[column])]
    assert sorted(map(tuple, points.tolist())) == sorted(zip(finite["alpha"], finite[column]))
    (pinned,) = gid(ax.collections, "no-value")
    assert pinned.get_offsets().tolist() == [[a, ablation.TOP] for a in missing]
    mean = gid(ax.get_lines(), "mean")[0]
    np.testing.assert_allclose(mean.get_ydata(), finite.groupby("alpha")[column].mean().to_numpy())


def test_ablation_over_a_log_parameter(hpo):
    ax = ablation.plot(hpo[1], x="lr").axes[0]
    assert ax.get_xscale() == "log" and len(gid(ax.collections, "trials")[0].get_offsets()) == 9
    assert not gid(ax.get_lines(), "mean")  # no value has repeats: no mean line through single trials


def test_hpo_report_history_importances_and_parallel_view(hpo):
    trials = hpo[1]
    fig = hpo_report.plot(trials)
    ordered = trials.sort_values("first_written")["best_fid"].to_numpy()
    history, importance, parallel = fig.axes[:3]
    assert len(gid(history.collections, "history")[0].get_offsets()) == np.isfinite(ordered).sum()
    np.testing.assert_allclose(gid(history.get_lines(), "best-so-far")[0].get_ydata(),
                               pd.Series(ordered).cummin().ffill())
    bars = gid(importance.patches, "importance")
    assert len(bars) == 3 and sum(b.get_width() for b in bars) == pytest.approx(1.0)
    assert len(gid(parallel.collections, "parallel")[0].get_segments()) == 9
    assert len(gid(parallel.collections, "parallel-failed")[0].get_segments()) == 1


def test_optuna_study_from_trials_table(hpo):
    trials = hpo[1]
    study = searches.to_optuna(trials, searches.searched(trials))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 9 and states.count("PRUNED") == 1  # the diverged trial, as the study tells it
    assert study.best_value == trials["best_fid"].min()
    assert set(study.best_params) == {"alpha", "lr", "glr"}
    assert study.best_params["lr"] == trials.loc[trials["best_fid"].idxmin(), "lr"]


def test_best_table_best_value_is_the_fixture_minimum(results, sweep):
    frame = best_table.table(sweep[1])
    rows = results.evals[results.evals["study"] == "alpha_sweep"]
    per_seed = rows.groupby(["alpha", "seed"])["fid"].min()
    per_alpha = per_seed.groupby("alpha").agg(["mean", "std"])
    assert frame["best_mean"].iloc[0] == pytest.approx(per_alpha["mean"].min(), rel=1e-12)
    assert frame["best_std"].iloc[0] == pytest.approx(per_alpha.loc[per_alpha["mean"].idxmin(), "std"], rel=1e-12)
    counts = frame.set_index("alpha")[["runs", "diverged", "seeds_finite"]]
    assert counts.loc[1.5].tolist() == [2, 1, 2] and counts.loc[1.0].tolist() == [3, 0, 2]
    md, tex = best_table.to_markdown(frame), best_table.to_latex(frame)
    assert f"**{per_alpha['mean'].min():.3f} ± " in md and f"best {DIGITS_LABEL}" in md
    assert r"\textbf{" in tex and r"alpha\_sweep" in tex and r"$\pm$" in tex


PAPER_FIGURE = {"fid_vs_images": "SiD paper's Figs. 2-6", "ablation": "SiD paper's appendix ablations",
                "hpo_report": "The SiD paper has no such figure", "best_table": "SiD paper's results tables",
                "import_official_logs": "SiD paper's Figs. 2-6"}


SCRIPTS = {"fid_vs_images": ["--teacher-fid", "3"], "ablation": ["--stat", "final"], "hpo_report": [],
           "best_table": []}


@pytest.mark.filterwarnings("ignore:skipping unreadable results file")
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_writes_valid_non_blank_files(results, tmp_path, name):
    study = results.hpo if name == "hpo_report" else results.alpha_sweep
    sys.modules[f"analysis.{name}"].main([str(study), "--out", str(tmp_path), *SCRIPTS[name]])
    files = sorted(tmp_path.iterdir())
    if name == "best_table":
        assert [f.suffix for f in files] == [".md", ".tex"] and "|---|" in files[0].read_text()
        return
    tables = [f for f in files if f.suffix == ".md"]
    assert sorted(f.suffix for f in files if f not in tables) == [".pdf", ".png"]
    assert [f.name for f in tables] == (["hpo_report_hpo.md"] if name == "hpo_report" else [])
    for f in (f for f in files if f not in tables):
        data = f.read_bytes()
        if f.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            assert matplotlib.image.imread(f)[..., :3].var() > 0.01  # blank or near-blank images fail
        else:
            assert data[:5] == b"%PDF-" and data.rstrip().endswith(b"%%EOF") and len(data) > 5000


@pytest.mark.parametrize("name", PAPER_FIGURE)
def test_empty_folder_is_one_clear_error_with_exit_code_2(tmp_path, capsys, name):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        sys.modules[f"analysis.{name}"].main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert ("no evaluation rows" if name != "import_official_logs" else "no metric-fid") in err


def test_missing_folder_is_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        fid_vs_images.main([str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "no such results file or folder" in capsys.readouterr().err


def test_help_of_every_script_names_its_paper_figure():
    code = "; ".join(f"import analysis.{n}; print('@@{n}'); analysis.{n}.build_parser().print_help()"
                     for n in PAPER_FIGURE)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    helps = dict(part.split("\n", 1) for part in done.stdout.split("@@")[1:])
    for name, phrase in PAPER_FIGURE.items():
        assert phrase in " ".join(helps[name].split()), name
    # Run as a file, the way users call it: the repo root must become importable by itself.
    one = subprocess.run([sys.executable, "analysis/ablation.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert one.returncode == 0 and PAPER_FIGURE["ablation"] in " ".join(one.stdout.split())


# ---------------------------------------------------------------- official logs


def write_official_run(run: Path, *, alpha: float = 1.2, snapshot: str = "fakes_{a}_{k:06d}.png",
                       stats: bool = True, fids=(12.5, 4.25, 2.0)) -> list[dict]:
    """An official run folder in the line formats of sid_training_loop.py / sid_metric_main.py: one metric line
    per evaluation, one stats object per tick followed by a blank line, training_options.json."""
    run.mkdir(parents=True)
    a = f"{alpha:03f}"
    ticks = [dict(kimg=0.256 * (1 + 40 * i), total=100.0 + 50 * i, maintenance=30.0 + i, sec_per_kimg=0.5 + i)
             for i in range(len(fids))]
    with open(run / f"metric-fid50k_full-alpha-{a}.jsonl", "w") as f:
        for t, fid in zip(ticks, fids):
            f.write(json.dumps(dict(results=dict(fid50k_full=fid), metric="fid50k_full", total_time=20.0,
                                    total_time_str="20s", num_gpus=4, timestamp=1.7e9 + t["total"],
                                    snapshot_pkl=snapshot.format(a=a, k=int(t["kimg"])))) + "\n")
    if stats:
        with open(run / f"stats_{a}.jsonl", "w") as f:
            for i, t in enumerate(ticks):
                stat = {"Progress/tick": dict(num=1, mean=float(i), std=0.0),
                        "Progress/kimg": dict(num=1, mean=t["kimg"], std=0.0),
                        "Timing/total_sec": dict(num=1, mean=t["total"], std=0.0),
                        "Timing/sec_per_kimg": dict(num=1, mean=t["sec_per_kimg"], std=0.0),
                        "Timing/maintenance_sec": dict(num=1, mean=t["maintenance"], std=0.0),
                        "fake_score_Loss/loss": dict(num=41, mean=0.1 * i, std=0.01),
                        "G_Loss/loss": dict(num=41, mean=-0.2 * i, std=0.01)}
                f.write(json.dumps(dict(stat, timestamp=1.7e9)) + "\n" + "\n")
            f.write('{"Progress/tick": {"num": 1, "me')  # killed while writing
    (run / "training_options.json").write_text(json.dumps(dict(
        batch_size=256, batch_gpu=16, loss_scaling=1, loss_scaling_G=100,
        seed=7, tmax=800, init_sigma=2.5, alpha=alpha, network_kwargs=dict(use_fp16=False),
        fake_score_optimizer_kwargs=dict(lr=1e-5), g_optimizer_kwargs=dict(lr=2e-5),
        resume_pkl="https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl")))
    return ticks


@pytest.mark.parametrize("snapshot", ["fakes_{a}_{k:06d}.png", "network-snapshot-{a}-{k:06d}.pkl",
                                      "../../elsewhere/fakes_{a}_{k:06d}.png"])
def test_import_official_logs_into_the_schema(tmp_path, snapshot):
    ticks = write_official_run(tmp_path / "00003-cifar10-uncond", snapshot=snapshot)
    with pytest.warns(UserWarning, match="cut-off last line"):
        import_official_logs.main([str(tmp_path / "00003-cifar10-uncond"), "--out", str(tmp_path / "official")])
    rows = read_evaluations(tmp_path / "official").sort_values("kimg")
    maintenance = np.cumsum([t["maintenance"] for t in ticks])
    wall = np.array([t["total"] for t in ticks]) - maintenance
    np.testing.assert_allclose(rows["kimg"], [t["kimg"] for t in ticks])
    np.testing.assert_allclose(rows["wall_s"], wall)
    np.testing.assert_allclose(rows["device_s"], wall * 4)
    np.testing.assert_allclose(rows["images_per_s"], [1000 / t["sec_per_kimg"] for t in ticks])
    assert rows["fid"].tolist() == [12.5, 4.25, 2.0] and rows["iteration"].tolist() == [1, 41, 81]
    assert set(rows["trial_id"]) == {"00003-cifar10-uncond-alpha1.2"} and set(rows["study"]) == {"official"}
    first = rows.iloc[0]
    assert (first["preset"], first["teacher"], first["batch"], first["seed"], first["glr"], first["world_size"]) == (
        "cifar10-uncond", "edm:cifar10-uncond", 256, 7, 2e-5, 4)
    assert (first["fid_detector"], first["fid_images"], first["status"]) == ("inception-2015-12-05", 50_000, "ok")
    # Official losses: the last micro-batch's (16 images) sum x ls or lsg / per-GPU batch (256 / 4 GPUs = 64); ours:
    # the per-image mean, unscaled. 0.1 * i logged -> 0.1 * i * 64 / (1 * 16); -0.2 * i -> -0.2 * i * 64 / (100 * 16).
    np.testing.assert_allclose(rows["loss_fake_score"], [0.1 * i * 4 for i in range(3)])
    np.testing.assert_allclose(rows["loss_generator"], [-0.2 * i * 0.04 for i in range(3)])


def test_imported_run_without_stats_uses_snapshot_kimg_and_flags(tmp_path):
    write_official_run(tmp_path / "run", alpha=1.0, stats=False, fids=(9.0, float("nan")))
    (tmp_path / "run" / "training_options.json").unlink()
    frames = import_official_logs.import_run(tmp_path / "run", study="old", overrides={"batch": 512})
    rows = frames["run-alpha1"]
    assert rows["kimg"].tolist() == [0.0, 10.0] and rows["iteration"].tolist() == [0, 20]
    assert rows["status"].tolist() == ["ok", "diverged"] and rows["wall_s"].isna().all()
    assert (rows["batch"].iloc[0], rows["tmax"].iloc[0], rows["lr"].iloc[0]) == (512, 800, 1e-5)  # official defaults


def test_imported_run_plots_beside_ours(tmp_path):
    write_official_run(tmp_path / "run")
    with pytest.warns(UserWarning):
        import_official_logs.main([str(tmp_path / "run"), "--out", str(tmp_path / "official")])
    evals, trials = common.load([tmp_path / "official"])
    ax = fid_vs_images.plot(evals, trials).axes[0]
    assert ax.get_ylabel() == "FID (Inception, 50k)" and len(gid(ax.get_lines(), "curve:")) == 1


@pytest.mark.parametrize("name", ["ablation", "fid_vs_images", "best_table"])
def test_one_seed_per_alpha_and_nothing_diverged_renders(tmp_path, name):
    # The shape of the default digits sweep: the ablation then has no legend entry at all.
    for alpha in ALPHAS:
        rows = [row("sweep", f"a{alpha}", alpha=alpha, seed=0, kimg=k, fid=distance(alpha, 0, k)) for k in KIMG]
        write_evaluations(tmp_path / "sweep" / "evaluations" / f"a{alpha}.parquet", rows)
    sys.modules[f"analysis.{name}"].main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    assert any((tmp_path / "out").iterdir())
