"""`sid evaluate`: FD and IS against independent float64 computations (scipy), draws, rows, bad input, and the issue's
end-to-end check on a real short digits run."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from sid import metrics
from sid.commands import evaluate as eval_cli
from sid.commands import generate as gen_cli
from sid.config import INCEPTION, preset
from sid.files import BEST, RUNS_DIR, SCORES_FILE
from sid.metrics import InceptionDetector, inception_score, save_reference_stats, score_generated
from sid.results import SCORE_SCHEMA, read_evaluations, read_scores
from sid.run import run_local
from sid.saved import SavedGenerator
from sid.scoring import rescore
from sid.teachers import load_teacher
from sid.testing.fixtures import scipy_inception_score, study_of_generators

W_FEATURES = torch.randn(16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
W_CLASSES = torch.randn(16, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


class StandIn(torch.nn.Module):
    """A small deterministic detector for 4x4 gray images: 12 features and 5-class probabilities, both linear in the
    pixels, so every statistic can be recomputed independently in float64 numpy."""

    name, feature_dim = "standin-v1", 12

    def forward(self, images):
        if images.dtype != torch.uint8 or images.shape[1:] != (1, 4, 4):
            raise ValueError(f"{self.name} expects uint8 images [N, 1, 4, 4], got {tuple(images.shape)}")
        return images.flatten(1).double() / 255 @ W_FEATURES

    def probabilities(self, images):
        return torch.softmax(images.flatten(1).double() / 64 @ W_CLASSES, dim=1)


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setitem(metrics._DETECTORS, "standin-v1", lambda device: StandIn())


def scipy_fd(mu1, s1, mu2, s2) -> float:
    """EDM's calculate_fid_from_inception_stats, float64."""
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2))))


@pytest.mark.parametrize("n, splits", [(100, 10), (103, 10), (37, 3)])
def test_inception_score_matches_scipy_entropy(n, splits):
    p = np.random.default_rng(n).dirichlet(np.full(7, 0.3), size=n)
    got = inception_score(p, splits)
    assert got == pytest.approx(scipy_inception_score(p, splits), rel=1e-12)


def test_inception_score_closed_forms():
    one_hot = np.eye(4)[np.arange(40) % 4]
    assert inception_score(one_hot, 10) == pytest.approx((4.0, 0.0))        # 4 sure, equally frequent classes
    assert inception_score(np.full((40, 4), 0.25), 10) == pytest.approx((1.0, 0.0))  # no class information
    with pytest.raises(ValueError, match="splits"):
        inception_score(one_hot[:5], 10)


def write_npz(path, arr):
    np.savez(path, arr_0=arr)
    return str(path)


def test_evaluate_npz_draws_match_scipy_fd_and_is(tmp_path, standin, capsys):
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
    mu_ref, a = rng.standard_normal(12), rng.standard_normal((12, 30))
    save_reference_stats(tmp_path / "ref.npz", mu_ref, a @ a.T / 30)
    eval_cli.main([write_npz(tmp_path / "x.npz", arr), "--fid-detector", "standin-v1",
                   "--fid-ref", str(tmp_path / "ref.npz"), "--fid-images", "20", "--repeats", "2",
                   "--batch-per-device", "7", "--out", str(tmp_path / "s.parquet"), "--no-progress"])
    rows = read_scores(tmp_path / "s.parquet")
    assert list(rows.columns) == SCORE_SCHEMA.names and rows["repeat"].tolist() == [0, 1]
    assert rows["seeds"].tolist() == ["images 0-19", "images 20-39"] and rows["fid_images"].eq(20).all()
    pixels = arr.reshape(50, 16).astype(np.float64)
    for r, row in rows.iterrows():
        part = pixels[20 * r: 20 * (r + 1)]
        feats = part / 255 @ W_FEATURES.numpy()
        want = scipy_fd(feats.mean(0), np.cov(feats, rowvar=False, bias=True), mu_ref, a @ a.T / 30)
        assert row["fid"] == pytest.approx(want, rel=1e-9)
        logits = part / 64 @ W_CLASSES.numpy()
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        assert (row["is_mean"], row["is_std"]) == pytest.approx(scipy_inception_score(probs, 10), rel=1e-6)
    out = capsys.readouterr().out
    assert "FD (standin-v1, 20 images)" in out and "mean +- std over 2 draws" in out and "IS (10 splits)" in out


class TinyInception(torch.nn.Module):
    """NVIDIA's TorchScript Inception in structure: `layers` give the 2048 pool features (returned with
    return_features), `output` is the 1008-class linear layer, whose bias is left out with no_output_bias; else
    the softmax of the logits."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.proj = torch.nn.Parameter(torch.randn(3, 2048, generator=g))
        self.output = torch.nn.Linear(2048, 1008)
        with torch.no_grad():
            self.output.weight.copy_(torch.randn(1008, 2048, generator=g) / 10)
            self.output.bias.copy_(100.0 * torch.arange(1008) / 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        features = (img.to(torch.float32).mean(dim=[2, 3]) / 255) @ self.proj
        if return_features:
            return features
        logits = torch.nn.functional.linear(features, self.output.weight) if no_output_bias else self.output(features)
        return torch.softmax(logits, dim=1)


def tiny_inception_detector(tmp_path) -> InceptionDetector:
    path = tmp_path / "inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TinyInception()), str(path))
    return InceptionDetector(str(path))


def test_inception_detector_gives_an_fid_and_an_is_without_output_bias(tmp_path, monkeypatch):
    detector = tiny_inception_detector(tmp_path)
    monkeypatch.setitem(metrics._DETECTORS, INCEPTION, lambda device: detector)
    arr = np.random.default_rng(4).integers(0, 256, (30, 5, 5, 3), dtype=np.uint8)
    save_reference_stats(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048))
    rows = eval_cli.evaluate(write_npz(tmp_path / "x.npz", arr), detector_name=INCEPTION,
                             ref=str(tmp_path / "ref.npz"), images=30, repeats=1, progress=False,
                             groups=2)  # each group is one more 2048-d distance: few here, this is about the IS
    net = TinyInception()
    probs = net(torch.from_numpy(arr).permute(0, 3, 1, 2), no_output_bias=True).detach().double().numpy()
    assert (rows[0]["is_mean"], rows[0]["is_std"]) == pytest.approx(scipy_inception_score(probs, 10), rel=1e-5)
    assert "FID (inception-2015-12-05, 30 images)" in eval_cli.summary(rows)


def test_inception_features_and_probabilities_come_from_one_pass_as_the_networks_own_calls(tmp_path):
    detector = tiny_inception_detector(tmp_path)
    images = torch.from_numpy(np.random.default_rng(6).integers(0, 256, (9, 3, 5, 5), dtype=np.uint8))
    features, probs = detector.features_and_probabilities(images)
    torch.testing.assert_close(features, detector.net(images, return_features=True))
    torch.testing.assert_close(probs, detector.net(images, no_output_bias=True))  # the is50k call: no output bias
    torch.testing.assert_close(detector.probabilities(images), probs)


class OnePassStandIn(StandIn):
    """StandIn whose features and probabilities come from one call, counted; its separate calls are refused."""

    name = "standin-one-pass"

    def __init__(self):
        super().__init__()
        self.passes = 0

    def forward(self, images):
        raise AssertionError("a second pass: features asked for separately")

    def probabilities(self, images):
        raise AssertionError("a second pass: probabilities asked for separately")

    def features_and_probabilities(self, images):
        self.passes += 1
        return StandIn.forward(self, images), StandIn.probabilities(self, images)


@pytest.mark.parametrize("num_images, batch", [(50, 7), (40, 40)])
def test_fd_and_is_of_training_evaluations_come_from_one_detector_pass(num_images, batch):
    # The IS of the same images as the FD (the official CIFAR-10 run's fid50k_full,is50k), each batch through the
    # detector once: FD and its error as score_generated's, IS as scipy's entropies over 10 splits.
    rng = np.random.default_rng(num_images)
    pixels = rng.uniform(-1, 1, (num_images, 1, 4, 4))
    mu_ref, a = rng.standard_normal(12), rng.standard_normal((12, 30))

    def generate(index, n):
        return torch.from_numpy(pixels[index * batch: index * batch + n])

    detector = OnePassStandIn()
    both = score_generated(generate, num_images, detector, mu_ref, a @ a.T / 30, batch_size=batch, with_is=True)
    fd, fd_std, is_mean, is_std = both.fd, both.fd_std, both.is_mean, both.is_std
    assert detector.passes == -(-num_images // batch)
    score = score_generated(generate, num_images, StandIn(), mu_ref, a @ a.T / 30, batch_size=batch)
    assert (fd, fd_std) == pytest.approx((score.fd, score.fd_std), rel=1e-12)
    uint8 = np.clip(pixels * 127.5 + 128, 0, 255).astype(np.uint8).reshape(num_images, 16).astype(np.float64)
    feats = uint8 / 255 @ W_FEATURES.numpy()
    assert fd == pytest.approx(scipy_fd(feats.mean(0), np.cov(feats, rowvar=False, bias=True), mu_ref, a @ a.T / 30),
                               rel=1e-9)
    logits = uint8 / 64 @ W_CLASSES.numpy()
    probs = np.exp(logits - logits.max(1, keepdims=True))
    # probabilities kept in float32, as the official code keeps them
    assert (is_mean, is_std) == pytest.approx(scipy_inception_score(probs / probs.sum(1, keepdims=True), 10), rel=1e-6)


def test_fd_and_is_refuse_a_detector_without_class_probabilities():
    class FeaturesOnly(torch.nn.Module):
        name = "features-only"

        def forward(self, images):
            return images.flatten(1).double()

    with pytest.raises(ValueError, match="detector features-only gives no class probabilities: no Inception Score"):
        score_generated(lambda i, n: torch.zeros(n, 1, 4, 4), 20, FeaturesOnly(), np.zeros(16), np.eye(16),
                        with_is=True)


def save_pngs(folder, arr):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(arr):
        PIL.Image.fromarray(image[:, :, 0]).save(folder / f"{i:06d}.png")
    return str(folder)


@pytest.mark.parametrize("case, match", [
    ("small-folder", "images of shape [1, 4, 4] (C, H, W) do not fit: digits-features-v1 expects"),
    ("rgb-npz", "images of shape [3, 8, 8] (C, H, W) do not fit"),
    ("no-arr_0", "expected images under arr_0 or images, found ['pixels']"),
    ("float-npz", "expected arr_0 as uint8 images [N, H, W, C] or [N, C, H, W]"),
    ("mismatch", "reference inception.npz has 2048-d statistics but detector digits-features-v1 gives 64-d"),
    ("too-few", "expected at least 40 images (2 draws of 20), found 30"),
    ("class", "--class and --sigma-init apply to generators"),
    ("device", "--device: unknown device 'gpu0': expected auto, cpu, cuda or cuda:N"),
    ("metrics", "--metrics: expected a comma list of distinct metrics from fd, is, pr that includes fd, got 'fid'"),
    ("is-digits", "--metrics is: detector digits-features-v1 gives no class probabilities (no Inception Score)"),
    ("pr-no-ref", "--metrics pr and --pr-ref go together: precision/recall compares with real images"),
    ("pr-too-many", "--pr-images: {source} holds 30 images, fewer than the 100 asked for"),
])
def test_evaluate_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case, match):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    digits = rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8)
    source = write_npz(tmp_path / "d.npz", digits)
    argv = ["--fid-images", "20", "--no-progress"]
    if case == "small-folder":
        source = save_pngs(tmp_path / "small", rng.integers(0, 256, (30, 4, 4, 1), dtype=np.uint8))
    elif case == "rgb-npz":
        source = write_npz(tmp_path / "rgb.npz", np.repeat(digits, 3, axis=3))
    elif case == "no-arr_0":
        np.savez(tmp_path / "n.npz", pixels=digits)
        source = str(tmp_path / "n.npz")
    elif case == "float-npz":
        source = write_npz(tmp_path / "f.npz", digits.astype(np.float32))
    elif case == "mismatch":
        save_reference_stats(tmp_path / "inception.npz", np.zeros(2048), np.eye(2048))
        argv += ["--fid-ref", "inception.npz"]
    elif case == "too-few":
        argv += ["--repeats", "2"]
    elif case == "class":
        argv += ["--class", "1"]
    elif case == "device":
        argv += ["--device", "gpu0"]
    elif case == "metrics":
        argv += ["--metrics", "fid"]
    elif case == "is-digits":
        argv += ["--metrics", "fd,is"]
    elif case == "pr-no-ref":
        argv += ["--metrics", "fd,pr"]
    elif case == "pr-too-many":
        argv += ["--metrics", "fd,pr", "--pr-ref", source, "--pr-images", "100"]
        match = match.format(source=source)
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main([source, *argv])
    assert exit_info.value.code == 2 and match in capsys.readouterr().err.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("*.parquet"))


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A real default-preset digits run, shortened: 10 iterations, evaluated at kimg 0 and 1.28 on 2048 images."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    config = preset("digits", duration_kimg=1.28, eval_every_kimg=1.28)
    run_local(config, out, device=torch.device("cpu"), resume=False, progress=False)
    return out


def test_generated_files_and_repeated_draws_reproduce_the_runs_last_evaluation(short_run, tmp_path, capsys):
    last = read_evaluations(short_run).iloc[-1]
    assert last["fid_detector"] == "digits-features-v1" and last["fid_images"] == 2048
    assert (short_run / "best.pt").exists() or (short_run / "generator.pt").exists()
    gen_cli.main(["--network", str(short_run), "--seeds", "0-2047", "--out", str(tmp_path / "png"),
                  "--npz", str(tmp_path / "g.npz"), "--batch-per-device", "256", "--no-progress"])
    capsys.readouterr()
    eval_cli.main([str(short_run), "--repeats", "5", "--batch-per-device", "256", "--no-progress"])
    table = capsys.readouterr().out
    assert "FD (digits-features-v1, 2048 images): " in table and "(mean +- std over 5 draws)" in table
    assert f"run's last evaluation (kimg 1.28, its own noise): FD (digits-features-v1, 2048 images) " \
           f"{last['fid']:.4f}" in table
    rows = read_scores(short_run)  # default: scores.parquet in the run folder
    assert rows["seeds"].tolist() == ["0-2047", "2048-4095", "4096-6143", "6144-8191", "8192-10239"]
    assert rows["fid_detector"].eq("digits-features-v1").all() and rows["fid_images"].eq(2048).all()
    assert rows["fid_ref"].eq("digits").all() and rows["sigma_init"].eq(2.5).all() and rows["is_mean"].isna().all()
    assert len(read_evaluations(short_run)) == 2  # the scores file is not mistaken for evaluation rows
    # The PNGs and the npz hold exactly the images of draw 0 (equal up to the detector's float32 rounding, which
    # depends on its batch size).
    for source in ("g.npz", "png"):
        eval_cli.main([str(tmp_path / source), "--fid-images", "2048", "--out", str(tmp_path / "s.parquet"),
                       "--no-progress"])
    files = read_scores(tmp_path / "s.parquet")
    assert files["fid"].tolist() == pytest.approx([rows["fid"].iloc[0]] * 2, rel=1e-6)
    # The run's own evaluation used other noise: it lies within the spread of independent draws.
    fds = rows["fid"].to_numpy()
    mean, std = fds.mean(), fds.std(ddof=1)
    assert 0 < std < 0.2 * mean and abs(last["fid"] - mean) <= 4 * std, (last["fid"], fds)
    print(f"\nrun's last FD {last['fid']:.3f}; sid evaluate 5 x 2048: {mean:.3f} +- {std:.3f} ({np.round(fds, 3)})")


@pytest.mark.parametrize("args, match", [
    (["--class", "2"], "the network is unconditional (label_dim 0); leave --class out"),
    (["--sigma-init", "0"], "--sigma-init: expected a number > 0"),
    (["--seed-start", "4294967295", "--fid-images", "2"],
     "expected seeds within 0-4294967295, got 4294967295-4294967296"),
    (["--repeats", "0"], "--repeats >= 1"),
])
def test_bad_generator_settings_exit_2_and_write_nothing(short_run, capsys, tmp_path, args, match):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main([str(short_run), *args, "--out", str(tmp_path / "s.parquet")])
    assert exit_info.value.code == 2 and match in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "s.parquet").exists()


def test_a_generator_with_non_finite_images_scores_nan_not_the_fd_of_black_images(tmp_path):
    net = load_teacher("digits")
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    torch.save(dict(init_kwargs=net.init_kwargs, state_dict=net.state_dict()), tmp_path / "nan.pt")
    rows = eval_cli.evaluate(str(tmp_path / "nan.pt"), detector_name="digits-features-v1", ref="digits", images=8,
                             repeats=1, progress=False)
    assert np.isnan(rows[0]["fid"]) and rows[0]["fid_images"] == 8


def test_a_distillation_started_from_the_run_begins_where_the_run_ended(short_run, tmp_path):
    """--init-generator: at kimg 0 the new run's G_ema is the old run's generator; same run seed, same eval noise."""
    config = preset("digits", duration_kimg=0.128, eval_every_kimg=0.128, init_generator=str(short_run))
    run_local(config, tmp_path / "more", device=torch.device("cpu"), resume=False, progress=False)
    source = read_evaluations(short_run)  # the folder resolves to best.pt (lowest FD), else generator.pt (last)
    want = source.loc[source["fid"].idxmin()] if (short_run / "best.pt").exists() else source.iloc[-1]
    first = read_evaluations(tmp_path / "more").iloc[0]
    assert first["kimg"] == 0 and first["fid"] == pytest.approx(want["fid"], rel=1e-9)


# ---------------------------------------------------------------------------------------------- precision/recall
def sklearn_precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al.'s definition in float64: each vector's ball reaches its k-th nearest other vector of its
    set; precision = generated vectors in some real ball, recall = real vectors in some generated ball."""
    shares = []
    for manifold, probes in ((real, generated), (generated, real)):
        radii = NearestNeighbors(n_neighbors=k + 1).fit(manifold).kneighbors(manifold)[0][:, k]  # [0]: itself
        shares.append(float((cdist(probes, manifold) <= radii[None, :]).any(axis=1).mean()))
    return shares[0], shares[1]


def test_evaluate_precision_recall_matches_a_float64_nearest_neighbour_computation(tmp_path, standin, capsys):
    rng = np.random.default_rng(7)
    generated = rng.integers(0, 256, (60, 4, 4, 1), dtype=np.uint8)
    real = np.clip(rng.normal(160, 60, (45, 4, 4, 1)), 0, 255).astype(np.uint8)  # overlapping, not equal
    mu_ref, a = rng.standard_normal(12), rng.standard_normal((12, 30))
    save_reference_stats(tmp_path / "ref.npz", mu_ref, a @ a.T / 30)
    eval_cli.main([write_npz(tmp_path / "x.npz", generated), "--fid-detector", "standin-v1", "--fid-ref",
                   str(tmp_path / "ref.npz"), "--fid-images", "30", "--repeats", "2", "--metrics", "fd,pr",
                   "--pr-ref", write_npz(tmp_path / "real.npz", real), "--pr-images", "40", "--batch-per-device", "7",
                   "--out", str(tmp_path / "s.parquet"), "--no-progress"])
    rows = read_scores(tmp_path / "s.parquet")
    assert rows["pr_real_images"].eq(40).all() and rows["pr_ref"].eq(str(tmp_path / "real.npz")).all()
    assert rows["is_mean"].isna().all()  # not asked for
    features = lambda pixels: pixels.reshape(len(pixels), 16).astype(np.float64) / 255 @ W_FEATURES.numpy()  # noqa: E731
    for r, row in rows.iterrows():
        want = sklearn_precision_recall(features(real[:40]), features(generated[30 * r: 30 * (r + 1)]))
        assert 0 < want[0] < 1 and 0 < want[1] < 1
        # float16 distances, as the official metric: at most one borderline vector of a set on the other side
        assert abs(round(row["pr_precision"] * 30) - round(want[0] * 30)) <= 1
        assert abs(round(row["pr_recall"] * 40) - round(want[1] * 40)) <= 1
    assert "precision / recall (k = 3, 40 real images of" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- re-scores
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A real digits run of 2 iterations, evaluated on 256 images: its best.pt is what gets re-scored."""
    out = tmp_path_factory.mktemp("rescore") / "run"
    config = preset("digits", duration_kimg=0.256, eval_every_kimg=0.128, fid_images=256)
    run_local(config, out, device=torch.device("cpu"), resume=False, progress=False)
    return out


def rescored(run) -> pd.DataFrame:
    rows = read_scores(run / SCORES_FILE)
    return rows[rows["source"] == str(run / BEST)].sort_values("repeat").reset_index(drop=True)


def test_rescore_scores_best_pt_on_fresh_seeds_and_a_finished_draw_is_not_redone(small_run, capsys):
    eval_cli.main(["--rescore", str(small_run), "--repeats", "2", "--no-progress"])
    rows = rescored(small_run)
    best = SavedGenerator.load(small_run / BEST)
    start = 2**31  # apart from sid generate's and sid evaluate's default seeds 0..
    assert rows["seeds"].tolist() == [f"{start}-{start + 255}", f"{start + 256}-{start + 511}"]
    assert rows["generator_kimg"].tolist() == pytest.approx([best.kimg] * 2)
    assert rows["fid_images"].eq(256).all() and rows["fid_detector"].eq("digits-features-v1").all()
    assert rows["fid_ref"].eq("digits").all() and rows["fid"].map(np.isfinite).all()
    # draw 0 is sid evaluate's draw of the same seeds: the same images, the same score
    plain, = eval_cli.evaluate(str(small_run / BEST), detector_name="digits-features-v1", ref="digits", images=256,
                               repeats=1, seed_start=start, progress=False)
    assert rows["fid"].iloc[0] == pytest.approx(plain["fid"], rel=1e-9)
    assert "FD (digits-features-v1, 256 images)" in capsys.readouterr().out
    # Resumed with more draws: the two finished ones are kept as they are, one is added.
    eval_cli.main(["--rescore", str(small_run), "--repeats", "3", "--no-progress"])
    again = rescored(small_run)
    assert again["repeat"].tolist() == [0, 1, 2]
    assert again["written_at"].iloc[:2].tolist() == rows["written_at"].tolist()


@pytest.mark.parametrize("trials, rescored_trials", [("best", ["b"]), ("all", ["a", "b"])])
def test_rescore_of_a_study_scores_its_best_trial_or_every_trial(tmp_path, small_run, trials, rescored_trials):
    study = study_of_generators(tmp_path / "study", small_run / BEST, {"a": 30.0, "b": 20.0, "c": float("nan")})
    rows = rescore(study, trials=trials, repeats=1)
    assert sorted(Path(s).parent.name for s in rows["source"]) == rescored_trials
    assert [t for t in "abc" if (study / RUNS_DIR / t / SCORES_FILE).exists()] == rescored_trials


@pytest.mark.parametrize("argv, match", [
    (["--rescore", "{empty}"], "neither a run folder (best.pt) nor a study folder (trials.parquet)"),
    (["--rescore", "{run}", "--fid-images", "64"], "--rescore uses the run's own settings and seeds: leave out "
                                                   "--fid-images"),
    (["{run}", "--rescore", "{run}"], "expected SOURCE or --rescore RUN_OR_STUDY (one of them)"),
    (["--rescore", "{run}", "--repeats", "0"], "--repeats: expected >= 1, got 0"),
    (["{run}", "--rescore-trials", "all"], "--rescore-trials goes with --rescore RUN_OR_STUDY"),
])
def test_rescore_bad_input_exits_2_with_one_line(tmp_path, small_run, capsys, argv, match):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", run=small_run) for a in argv]
    before = read_scores(small_run / SCORES_FILE) if (small_run / SCORES_FILE).exists() else None
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main([*argv, "--no-progress"])
    assert exit_info.value.code == 2 and match in capsys.readouterr().err.strip().splitlines()[-1]
    after = read_scores(small_run / SCORES_FILE) if (small_run / SCORES_FILE).exists() else None
    assert (before is None and after is None) or before.equals(after)
