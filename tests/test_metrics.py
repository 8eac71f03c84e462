"""Frechet distance, feature statistics, quantisation, reference .npz files, detectors and the `ref` command."""

import math
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch

from sid import metrics
from sid.commands import ref as ref_command
from sid.metrics import (
    FeatureStats,
    InceptionDetector,
    frechet_distance,
    get_detector,
    load_reference_stats,
    quantize,
    reference_stats_for_images,
    save_reference_stats,
    score_generated,
    score_images,
)


def random_spd(d: int, rng: np.random.Generator, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d + 3))
    return a @ a.T / a.shape[1]


def scipy_fd(mu1, s1, mu2, s2) -> float:
    """EDM's calculate_fid_from_inception_stats."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * root)))


@pytest.mark.parametrize("d, seed", [(1, 0), (4, 1), (16, 2), (64, 3)])
def test_frechet_distance_matches_scipy_sqrtm(d, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(d, rng), random_spd(d, rng)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float) and got == pytest.approx(scipy_fd(mu1, s1, mu2, s2), abs=1e-6)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(4)
    d = 12
    mu, s = rng.standard_normal(d), random_spd(d, rng)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    shift = rng.standard_normal(d)
    assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(np.square(shift).sum(), abs=1e-6)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    want = np.square(np.sqrt(a) - np.sqrt(b)).sum()
    assert frechet_distance(np.zeros(d), np.diag(a), np.zeros(d), np.diag(b)) == pytest.approx(want, abs=1e-9)
    # Commuting covariances with a shared eigenbasis, one of them singular (fewer images than features).
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a[:5] = 0
    got = frechet_distance(mu, q @ np.diag(a) @ q.T, mu + shift, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(np.square(shift).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum(), abs=1e-6)


def test_frechet_distance_of_rank_deficient_covariances_is_real_and_matches_scipy():
    rng = np.random.default_rng(5)
    s1, s2 = random_spd(32, rng, rank=10), random_spd(32, rng, rank=12)
    got = frechet_distance(np.zeros(32), s1, np.ones(32), s2)
    assert math.isfinite(got) and got == pytest.approx(scipy_fd(np.zeros(32), s1, np.ones(32), s2), abs=1e-5)


def test_frechet_distance_accepts_torch_tensors():
    rng = np.random.default_rng(6)
    mu, s = rng.standard_normal(5), random_spd(5, rng)
    assert frechet_distance(torch.tensor(mu), torch.tensor(s), mu * 0, s) == pytest.approx(np.square(mu).sum())


@pytest.mark.parametrize("args, match", [
    ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "expects mu"),
    ((np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "expects mu"),
    ((np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3)), "non-finite"),
    ((np.zeros(3), np.eye(3), np.zeros(3), np.diag([1, np.inf, 1])), "non-finite"),
])
def test_frechet_distance_rejects_bad_statistics(args, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(*args)


def test_feature_stats_match_numpy_over_uneven_batches():
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((103, 6)) * rng.uniform(0.5, 3, 6) + rng.standard_normal(6) * 4
    stats = FeatureStats()
    for chunk in np.split(feats, [1, 40, 41, 90]):
        stats.update(torch.tensor(chunk, dtype=torch.float32))
    assert stats.num_items == 103 and stats.sum.dtype == torch.float64
    f32 = feats.astype(np.float32).astype(np.float64)   # the features as the detector handed them over
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, f32.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f32, rowvar=False, bias=True), rtol=0, atol=1e-10)
    np.testing.assert_allclose(stats.mean_cov(unbiased=True)[1], np.cov(f32, rowvar=False), rtol=0, atol=1e-10)


def test_feature_stats_rejects_changed_width_and_empty():
    stats = FeatureStats()
    with pytest.raises(ValueError, match="at least 1"):
        stats.mean_cov()
    stats.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        stats.update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_cov(unbiased=True)


@pytest.mark.parametrize("x, want", [
    (-1.0, 0), (1.0, 255), (0.0, 128), (-1e-6, 127), (2.0, 255), (-3.0, 0),
    (-0.5 / 127.5, 127), (0.5 / 127.5, 128),           # 127.5 and 128.5 truncate down
    (127 / 127.5 - 1e-4, 254), (127 / 127.5 + 1e-4, 255),  # around the last step
    (0.99, 254), (-127 / 127.5 + 1e-4, 1),
    (math.nan, 0), (math.inf, 255), (-math.inf, 0),
])
def test_quantize_truncates_like_sid(x, want):
    out = quantize(torch.tensor([[[[x]]]], dtype=torch.float32))
    assert out.dtype == torch.uint8 and out.item() == want


def test_quantize_keeps_shape_and_rejects_integers():
    assert quantize(torch.zeros(2, 3, 4, 5, dtype=torch.bfloat16)).shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="float images"):
        quantize(torch.zeros(2, 3, dtype=torch.uint8))


def test_reference_stats_npz_round_trip_from_path_and_file_url(tmp_path, monkeypatch):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(8)
    mu, sigma = rng.standard_normal(7), random_spd(7, rng)
    path = save_reference_stats(tmp_path / "sub" / "ref.npz", torch.tensor(mu), sigma)
    with np.load(path) as data:
        assert sorted(data.keys()) == ["mu", "sigma"]
    for source in (path, path.as_uri()):
        got_mu, got_sigma = load_reference_stats(source)
        assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma) and got_mu.dtype == np.float64
    assert [p.name for p in path.parent.iterdir()] == ["ref.npz"]   # no temporary file left


def test_load_reference_stats_names_missing_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_reference_stats(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"mu \[D\] and sigma \[D, D\]"):
        save_reference_stats(tmp_path / "x.npz", np.zeros(3), np.eye(4))


class TinyInception(torch.nn.Module):
    """Same call signature as NVIDIA's TorchScript Inception: uint8 NCHW in, 2048 features with return_features."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(3, 2048, generator=torch.Generator().manual_seed(0)))

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert img.dtype == torch.uint8 and img.shape[1] == 3
        features = (img.to(torch.float32).mean(dim=[2, 3]) / 255) @ self.proj
        return features if return_features else features[:, :1008]


@pytest.fixture
def tiny_inception(tmp_path):
    path = tmp_path / "inception-tiny.pt"
    with warnings.catch_warnings():   # recent torch deprecates TorchScript; NVIDIA's detector is one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TinyInception()), str(path))
    return path


def test_inception_detector_loads_torchscript_and_requests_features(tiny_inception, tmp_path, monkeypatch):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    want = (images.float().mean(dim=[2, 3]) / 255) @ TinyInception().proj.detach()
    for source in (str(tiny_inception), tiny_inception.as_uri()):
        detector = InceptionDetector(source)
        assert detector.name == "inception-2015-12-05" and detector.feature_dim == 2048
        torch.testing.assert_close(detector(images), want)
    gray = images[:, :1]
    torch.testing.assert_close(detector(gray), detector(gray.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="expects uint8 images"):
        detector(images.float())


def test_registry_resolves_builtin_and_registered_detectors(monkeypatch, tiny_inception):
    assert {"inception-2015-12-05", "digits-features-v1"} <= set(metrics._DETECTORS)
    monkeypatch.setitem(metrics._DETECTORS, "tiny",
                        lambda device: InceptionDetector(str(tiny_inception), device=device))
    assert get_detector("tiny", "cpu").net is not None
    digits = get_detector("digits-features-v1")
    assert digits.name == "digits-features-v1" and digits(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 64)
    with pytest.raises(ValueError, match="unknown detector 'nope'; registered: .*inception-2015-12-05"):
        get_detector("nope")


class PixelDetector:
    """Features = the uint8 pixel values; makes every expected statistic computable by hand."""

    name, feature_dim = "pixels", 4

    def __call__(self, images):
        assert images.dtype == torch.uint8
        return images.flatten(1).to(torch.float32)


def test_score_generated_batches_quantizes_and_uses_biased_covariance():
    pool = torch.rand(10, 1, 2, 2, generator=torch.Generator().manual_seed(9)) * 2 - 1
    calls = []
    def generate(index, n):
        calls.append((index, n))
        return pool[index * 4: index * 4 + n]
    rng = np.random.default_rng(10)
    ref_mu, ref_sigma = rng.standard_normal(4) * 50 + 128, random_spd(4, rng) * 1000
    got = score_generated(generate, 10, PixelDetector(), ref_mu, ref_sigma, batch_size=4).fd
    assert calls == [(0, 4), (1, 4), (2, 2)]
    q = np.floor(np.clip(pool.double().numpy().reshape(10, 4) * 127.5 + 128, 0, 255))
    assert got == pytest.approx(scipy_fd(q.mean(0), np.cov(q, rowvar=False, bias=True), ref_mu, ref_sigma), abs=1e-6)
    biased_self = score_generated(generate, 10, PixelDetector(), q.mean(0), np.cov(q, rowvar=False, bias=True),
                                  batch_size=4).fd
    assert biased_self == pytest.approx(0.0, abs=1e-6)


def test_score_generated_rejects_wrong_batch_from_generate():
    with pytest.raises(ValueError, match=r"generate\(0, 4\) must return 4 images"):
        score_generated(lambda i, n: torch.zeros(n + 1, 1, 2, 2), 8, PixelDetector(), np.zeros(4), np.eye(4),
                        batch_size=4)


def write_pngs(folder, arrays):
    for i, arr in enumerate(arrays):
        sub = folder / f"{i % 2:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(arr).save(sub / f"img{i:03d}.png")


@pytest.fixture
def png_folder(tmp_path):
    arrays = [np.random.default_rng(i).integers(0, 256, (2, 2), dtype=np.uint8) for i in range(7)]
    write_pngs(tmp_path / "pngs", arrays)
    return tmp_path / "pngs", np.stack(arrays).reshape(7, 4).astype(np.float64)


def test_reference_stats_for_images_is_unbiased_like_edm(png_folder):
    folder, pixels = png_folder
    mu, sigma = reference_stats_for_images(metrics.iter_image_batches(folder, 3), PixelDetector())
    np.testing.assert_allclose(mu, pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(pixels, rowvar=False), atol=1e-9)


def test_ref_command_on_folder_and_zip(png_folder, tmp_path, monkeypatch):
    folder, pixels = png_folder
    monkeypatch.setitem(metrics._DETECTORS, "pixels", lambda device: PixelDetector())
    with zipfile.ZipFile(tmp_path / "pngs.zip", "w") as z:
        for png in folder.rglob("*.png"):
            z.write(png, png.relative_to(folder))
    for i, source in enumerate((folder, tmp_path / "pngs.zip")):
        ref_command.main([str(source), "--fid-detector", "pixels", "--out", str(tmp_path / f"{i}.npz"),
                      "--batch-per-device", "2"])
        mu, sigma = load_reference_stats(tmp_path / f"{i}.npz")
        np.testing.assert_allclose(mu, pixels.mean(0), atol=1e-9)
        np.testing.assert_allclose(sigma, np.cov(pixels, rowvar=False), atol=1e-9)


@pytest.mark.parametrize("setup, match", [
    ("mixed", "has shape"), ("empty", "no PNG/JPEG images found"), ("missing", "no such dataset"),
    ("detector", "unknown"),
])
def test_ref_command_reports_bad_input(setup, match, png_folder, tmp_path, monkeypatch, capsys):
    folder, _ = png_folder
    monkeypatch.setitem(metrics._DETECTORS, "pixels", lambda device: PixelDetector())
    if setup == "mixed":
        PIL.Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(folder / "zz.png")
    if setup == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
    images = str(tmp_path / "nothing") if setup == "missing" else str(folder)
    with pytest.raises(SystemExit) as exit_info:
        ref_command.main([images, "--fid-detector", "nope" if setup == "detector" else "pixels",
                      "--out", str(tmp_path / "out.npz")])
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_ref_command_runs_as_module_with_digits_detector(tmp_path):
    arrays = [np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8) for i in range(5)]
    write_pngs(tmp_path / "digits", arrays)
    out = tmp_path / "digits.npz"
    done = subprocess.run([sys.executable, "-m", "sid", "ref", str(tmp_path / "digits"),
                           "--fid-detector", "digits-features-v1", "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    detector = get_detector("digits-features-v1")
    want = detector(torch.from_numpy(np.stack(arrays)[:, None])).double().numpy()
    mu, sigma = load_reference_stats(out)
    np.testing.assert_allclose(mu, want.mean(0), rtol=1e-4, atol=1e-5)   # float32 nets, separate process
    np.testing.assert_allclose(sigma, np.cov(want, rowvar=False), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- fid_std (jackknife)
def numpy_jackknife(x: np.ndarray, groups: int, ref_mu, ref_sigma) -> tuple[float, float]:
    """Independent reference: leave each group (image i in group i mod K) out, refit the biased covariance."""
    full = scipy_fd(x.mean(0), np.cov(x, rowvar=False, bias=True), ref_mu, ref_sigma)
    idx = np.arange(len(x))
    loo = np.array([scipy_fd(x[idx % groups != g].mean(0), np.cov(x[idx % groups != g], rowvar=False, bias=True),
                             ref_mu, ref_sigma) for g in range(groups)])
    return full, float(np.sqrt((groups - 1) / groups * ((loo - loo.mean()) ** 2).sum()))


def test_fd_jackknife_matches_a_numpy_reference_whatever_the_batches():
    rng = np.random.default_rng(20)
    x = rng.standard_normal((103, 5)) * [1, 2, 3, 1, 1] + 0.3
    ref_mu, ref_sigma = np.zeros(5), random_spd(5, rng)
    grouped = metrics.GroupedFeatureStats(10)
    for lo, hi in [(0, 7), (7, 40), (40, 41), (41, 103)]:  # uneven batches: the groups follow the image index
        grouped.update(torch.from_numpy(x[lo:hi]))
    fd, se = metrics.fd_jackknife(grouped, ref_mu, ref_sigma)
    want_fd, want_se = numpy_jackknife(x, 10, ref_mu, ref_sigma)
    assert fd == pytest.approx(want_fd, rel=1e-9) and se == pytest.approx(want_se, rel=1e-6) and se > 0
    mu, sigma = grouped.total().mean_cov()
    assert np.allclose(mu, x.mean(0)) and np.allclose(sigma, np.cov(x, rowvar=False, bias=True))


def test_fd_jackknife_estimates_the_spread_over_independent_draws():
    """The point of fid_std: it predicts how much the FD of another draw of as many images would differ."""
    rng = np.random.default_rng(21)
    d, n = 6, 400
    ref_mu, ref_sigma = np.zeros(d), np.eye(d)
    shift = np.linspace(0.2, 0.6, d)
    draws, ses = [], []
    for _ in range(150):
        x = rng.standard_normal((n, d)) * 1.3 + shift
        grouped = metrics.GroupedFeatureStats(10)
        grouped.update(torch.from_numpy(x))
        fd, se = metrics.fd_jackknife(grouped, ref_mu, ref_sigma)
        draws.append(fd)
        ses.append(se)
    assert 0.75 < np.mean(ses) / np.std(draws, ddof=1) < 1.33


def test_score_is_the_distance_of_all_images_with_an_error_and_nan_error_without_enough_images():
    pool = torch.rand(40, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    def generate(index, n):
        return pool[index * 8: index * 8 + n]
    rng = np.random.default_rng(4)
    ref_mu, ref_sigma = rng.standard_normal(4) * 50 + 128, random_spd(4, rng) * 1000
    score = score_generated(generate, 40, PixelDetector(), ref_mu, ref_sigma, batch_size=8)
    whole = FeatureStats()
    whole.update(PixelDetector()(quantize(pool)))
    assert score.fd == pytest.approx(frechet_distance(*whole.mean_cov(), ref_mu, ref_sigma), rel=1e-12)
    assert score.fd_std > 0 and score.images == 40 and score.finite
    score = score_generated(generate, 5, PixelDetector(), ref_mu, ref_sigma, batch_size=8)
    assert math.isfinite(score.fd) and math.isnan(score.fd_std)  # 5 images cannot fill 10 groups


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_non_finite_image_makes_the_score_nan_where_stored_uint8_images_are_scored_as_they_are(bad):
    pool = torch.rand(40, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ref_mu, ref_sigma = np.full(4, 128.0), np.eye(4) * 1000
    poisoned = pool.clone()
    poisoned[17, 0, 1, 0] = bad  # one pixel of one image of the third batch
    score = score_images(poisoned.split(8), PixelDetector(), ref_mu, ref_sigma)
    assert math.isnan(score.fd) and math.isnan(score.fd_std) and not score.finite and score.images == 40
    stored = score_images(quantize(poisoned).split(8), PixelDetector(), ref_mu, ref_sigma)  # what quantize made
    assert stored.finite and math.isfinite(stored.fd)  # of it: black pixels, a (poor) image like any other
    clean = score_images(pool.split(8), PixelDetector(), ref_mu, ref_sigma)
    assert clean.finite and clean.fd == score_images(quantize(pool).split(8), PixelDetector(), ref_mu, ref_sigma).fd
