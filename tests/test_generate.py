"""`sid generate` and sid.generators: seeds, per-seed images, every generator source, files, sharding, bad input."""

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from sid.commands import COMMANDS
from sid.commands import generate as gen_cli
from sid.generators import format_seeds, generate, load_generator, official_inputs, parse_seeds, seed_inputs
from sid.metrics import quantize
from sid.teachers import load_teacher
from sid.testing.edm_pickles import ADM, dump, edm_snapshot, random_net

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return load_teacher("digits")


def snapshot(net, **extra) -> dict:
    """A generator file as the run folder stores it (plain data, weights_only-loadable)."""
    return dict(init_kwargs=dict(net.init_kwargs), state_dict=net.state_dict(), sigma_init=2.5, **extra)


def perturbed(net, scale=0.01, seed=1):
    """A copy with different weights, to tell files apart by their images."""
    other = type(net)(**net.init_kwargs)
    other.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return other.eval().requires_grad_(False)


def images_of(net, seeds, **kw):
    return torch.cat(list(generate(net, seeds, sigma_init=kw.pop("sigma_init", 2.5), **kw)))


@pytest.mark.parametrize("text, want", [
    ("0-3", [0, 1, 2, 3]), ("7", [7]), ("0-2,10,20-21", [0, 1, 2, 10, 20, 21]), (" 5 - 6 ", [5, 6]),
    ("4294967295", [2**32 - 1]),
])
def test_parse_seeds_ranges_and_lists(text, want):
    assert parse_seeds(text) == want
    assert parse_seeds(format_seeds(want)) == want


@pytest.mark.parametrize("text, match", [
    ("a-b", "ranges and lists"), ("-1", "ranges and lists"), ("", "ranges and lists"), ("3-1", "ascending"),
    ("0-4294967296", "within 0-4294967295"), ("1,1", "each seed once"), ("0-9,5", "each seed once"),
])
def test_parse_seeds_rejects_malformed_and_out_of_range(text, match):
    with pytest.raises(ValueError, match=match):
        parse_seeds(text)


def test_image_of_a_seed_depends_on_that_seed_only(digits):
    seeds = [3, 11, 12, 40, 41, 99, 100]
    z, labels = seed_inputs(seeds, digits, 2.5)
    z_rev, _ = seed_inputs(seeds[::-1], digits, 2.5)
    assert labels is None and torch.equal(z, z_rev.flip(0))
    want = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(40)) * 2.5
    assert torch.equal(z[3:4], want)
    one_by_one = quantize(images_of(digits, seeds, batch=1))
    assert torch.equal(quantize(images_of(digits, seeds, batch=3)), one_by_one)
    assert torch.equal(quantize(images_of(digits, seeds[2:5], batch=64)), one_by_one[2:5])


def test_random_and_fixed_classes_of_a_conditional_generator():
    net = random_net(ADM)
    z, labels = seed_inputs(range(200), net, 2.5)
    classes = labels.argmax(1)
    assert labels.shape == (200, 10) and labels.sum(1).eq(1).all() and len(set(classes.tolist())) == 10
    z5, labels5 = seed_inputs(range(200), net, 2.5, class_idx=5)
    assert torch.equal(z5, z) and labels5.argmax(1).eq(5).all()  # the class does not change the noise


def official_reference(seeds, shape, label_dim, sigma_init, class_idx=None):
    """generate_onestep.py's inputs on a CPU generator, in float64: per seed a generator seeded with seed mod 2^32,
    its latents first, then its class (drawn even when --class fixes it); z = sigma_init * latents in float64."""
    zs, classes = [], []
    for seed in seeds:
        rng = torch.Generator("cpu").manual_seed(seed % 2**32)
        zs.append(torch.randn(shape, generator=rng, dtype=torch.float32).to(torch.float64) * sigma_init)
        if label_dim:
            drawn = int(torch.randint(label_dim, size=[], generator=rng))
            classes.append(drawn if class_idx is None else class_idx)
    labels = torch.eye(label_dim, dtype=torch.float64)[classes] if label_dim else None
    return torch.stack(zs), labels


@pytest.mark.parametrize("kind", ["unconditional", "conditional", "fixed class"])
def test_official_rng_draws_each_seeds_latents_then_its_class_as_generate_onestep(digits, kind):
    net = digits if kind == "unconditional" else random_net(ADM)
    seeds, class_idx = [0, 1, 7, 123456, 2**32 - 1], 3 if kind == "fixed class" else None
    z, labels = official_inputs(seeds, net, 2.3, class_idx, device="cpu")  # 2.3: not a float32 number
    want_z, want_labels = official_reference(seeds, (net.img_channels, net.img_resolution, net.img_resolution),
                                             net.label_dim, 2.3, class_idx)
    assert z.dtype == torch.float64 and torch.equal(z, want_z)
    assert (labels is None) == (want_labels is None) and (labels is None or torch.equal(labels.double(), want_labels))
    # On a CPU generator the draws are the project's own (rng 'sid'): only the CUDA generator tells them apart.
    sid_z, sid_labels = seed_inputs(seeds, net, 2.5, class_idx)
    assert torch.equal(official_inputs(seeds, net, 2.5, class_idx, device="cpu")[0].float(), sid_z)
    assert sid_labels is None or torch.equal(sid_labels, labels)


def test_official_rng_is_refused_without_cuda(digits):
    with pytest.raises(ValueError, match="--rng official needs a CUDA device"):
        next(generate(digits, [0], sigma_init=2.5, rng="official", device="cpu"))


def test_load_generator_resolves_run_folders_snapshots_checkpoints_and_names(tmp_path, digits):
    best, last = perturbed(digits, seed=1), perturbed(digits, seed=2)
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    torch.save(snapshot(last, kimg=1.28), run / "generator.pt")
    net, info = load_generator(run)  # a legacy folder: generator.pt
    assert info.source == str(run / "generator.pt") and info.sigma_init == 2.5 and info.kimg == 1.28
    torch.save(snapshot(best, kimg=0.64, fid=12.5, fid_detector="digits-features-v1", fid_images=2048),
               run / "best.pt")
    torch.save(snapshot(best, kimg=0.64), run / "snapshots" / f"generator-{0.64:010.3f}.pt")
    seeds = [0, 1, 2, 3]
    want = images_of(best, seeds)
    for source in (run, run / "best.pt", run / "snapshots" / "generator-000000.640.pt"):
        net, info = load_generator(source)
        assert not net.training and torch.equal(images_of(net, seeds), want)
    assert load_generator(run)[1].fid == 12.5
    # A training checkpoint holds G_ema among the rest of the state.
    torch.save(dict(config=dict(sigma_init=2.0), generator_ema=best.state_dict(),
                    generator_init_kwargs=dict(best.init_kwargs), iteration=5), tmp_path / "checkpoint.pt")
    net, info = load_generator(tmp_path / "checkpoint.pt")
    assert info.sigma_init == 2.0 and torch.equal(images_of(net, seeds), want)
    # A teacher name is the teacher-initialised generator (SiD's starting point).
    assert torch.equal(images_of(load_generator("digits")[0], seeds), images_of(digits, seeds))


def test_official_snapshot_pickle_loads_its_ema_as_a_generator_without_running_code(tmp_path):
    net, marker = random_net(ADM), tmp_path / "code-was-executed"
    pkl = dump(tmp_path / "network-snapshot-001.pkl", edm_snapshot(net), marker)
    loaded, info = load_generator(pkl)
    assert not marker.exists() and info.sigma_init is None
    assert torch.equal(images_of(loaded, [0, 1], class_idx=3), images_of(net, [0, 1], class_idx=3))


@pytest.mark.parametrize("make, match", [
    (lambda p: p.mkdir(), "not a run folder"),
    (lambda p: p.with_suffix(".pt").write_bytes(b"torn"), "not a generator file"),
    (lambda p: torch.save(dict(state_dict={}), p.with_suffix(".pt")), "not a generator file"),
    (lambda p: None, "no such file or folder"),
])
def test_load_generator_names_what_it_expected(tmp_path, make, match):
    path = tmp_path / "thing"
    make(path)
    source = path.with_suffix(".pt") if path.with_suffix(".pt").exists() else path
    with pytest.raises(ValueError, match=match):
        load_generator(source)


def test_generate_writes_pngs_and_npz_of_the_quantised_images(tmp_path, digits):
    torch.save(snapshot(digits), tmp_path / "g.pt")
    gen_cli.main(["--network", str(tmp_path / "g.pt"), "--seeds", "998-1001,5", "--out", str(tmp_path / "png"),
                  "--subdirs", "--npz", str(tmp_path / "x.npz"), "--batch-per-device", "2", "--no-progress"])
    want = quantize(images_of(digits, [998, 999, 1000, 1001, 5])).permute(0, 2, 3, 1).numpy()
    with np.load(tmp_path / "x.npz") as data:
        assert list(data) == ["arr_0"] and data["arr_0"].dtype == np.uint8 and np.array_equal(data["arr_0"], want)
    names = sorted(str(p.relative_to(tmp_path / "png")) for p in (tmp_path / "png").rglob("*.png"))
    assert names == ["000000/000005.png", "000000/000998.png", "000000/000999.png", "001000/001000.png",
                     "001000/001001.png"]
    png = np.array(PIL.Image.open(tmp_path / "png" / "001000" / "001001.png"))
    assert png.shape == (8, 8) and np.array_equal(png, want[3, :, :, 0])


def test_sharding_over_two_processes_gives_the_same_images(tmp_path, digits):
    torch.save(snapshot(digits), tmp_path / "g.pt")
    for name, devices in (("one", "cpu"), ("two", "cpu,cpu")):
        gen_cli.main(["--network", str(tmp_path / "g.pt"), "--seeds", "0-6", "--npz", str(tmp_path / f"{name}.npz"),
                      "--out", str(tmp_path / name), "--device", devices, "--no-progress"])
    one, two = (np.load(tmp_path / f"{n}.npz")["arr_0"] for n in ("one", "two"))
    assert one.shape == (7, 8, 8, 1) and np.array_equal(one, two)
    assert len(list((tmp_path / "two").glob("*.png"))) == 7


@pytest.mark.parametrize("args, match", [
    (["--seeds", "0-x"], "expected ranges and lists"),
    (["--seeds", "0-4294967296"], "within 0-4294967295"),
    (["--class", "3"], "unconditional"),
    (["--batch-per-device", "0"], "--batch-per-device: expected >= 1"),
    (["--npz", "out.zip"], "ending in .npz"),
    (["--device", "tpu"], "--device"),
    (["--network", "nowhere.pkl"], "no such file"),
    (["--rng", "official", "--device", "cpu"], "--rng official needs a CUDA device (got cpu): the official "
                                              "generate_onestep.py draws each seed's latents from a CUDA generator"),
])
def test_generate_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, digits, capsys, args, match):
    torch.save(snapshot(digits), tmp_path / "g.pt")
    base = {"--network": str(tmp_path / "g.pt"), "--out": str(tmp_path / "out"), "--no-progress": None}
    flags = dict(base, **dict(zip(args[::2], args[1::2])))
    argv = [x for k, v in flags.items() for x in ([k] if v is None else [k, v])]
    with pytest.raises(SystemExit) as exit_info:
        gen_cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and match in err[-1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.zip").exists()


def test_class_beyond_the_label_dimension_is_refused(tmp_path, capsys):
    net = random_net(ADM)
    torch.save(snapshot(net), tmp_path / "c.pt")
    with pytest.raises(SystemExit) as exit_info:
        gen_cli.main(["--network", str(tmp_path / "c.pt"), "--class", "10", "--npz", str(tmp_path / "c.npz")])
    assert exit_info.value.code == 2 and "class index in 0-9 (label_dim 10), got 10" in capsys.readouterr().err
    assert not (tmp_path / "c.npz").exists()


def test_sid_console_script_dispatches_to_the_commands(tmp_path, digits):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sid"] == "sid.commands:main" and set(COMMANDS) == {"distill", "generate", "evaluate", "export",
                                                                           "phema", "ref", "digits"}
    assert {v for k, v in scripts.items() if k != "sid"} == {"studies.alpha_sweep:main",
                                                          "studies.sigma_init_sweep:main",
                                                          "studies.hpo:main", "studies.search:main"}  # studies
    torch.save(snapshot(digits), tmp_path / "g.pt")
    code = "from sid.commands import main; main()"
    done = subprocess.run([sys.executable, "-m", "sid", "generate", "--network", str(tmp_path / "g.pt"), "--seeds",
                           "0-3", "--npz", str(tmp_path / "a.npz"), "--no-progress"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "a.npz")["arr_0"].shape == (4, 8, 8, 1)
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert all(name in listed.stdout for name in COMMANDS)
    bad = subprocess.run([sys.executable, "-c", code, "sample"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command 'sample'" in bad.stderr
    distill = subprocess.run([sys.executable, "-c", code, "distill", "--help"], capture_output=True, text=True,
                             timeout=120)
    assert distill.returncode == 0 and "--init-generator" in distill.stdout
