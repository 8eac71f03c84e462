"""sid.datasets and `sid ref`: the three dataset kinds (image folder and EDM dataset_tool zip with dataset.json labels,
npz NHWC or NCHW with labels) and the shipped digits read back exactly; `sid ref` statistics and class counts against
independent float64 numpy; every kind of bad data one line naming the file, nothing written; and `sid ref` ->
`sid distill --fid-ref` / `sid evaluate --fid-ref` scoring a run."""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
import yaml

from sid.commands import distill as distill_cli
from sid.commands import evaluate as eval_cli
from sid.commands import ref as ref_cli
from sid.commands.cli import config_from_args, parse
from sid.config import PRESETS, preset
from sid.datasets import MAX_LABELS_BYTES, open_dataset
from sid.digits import DigitsDetector, load_digits_labels
from sid.metrics import load_class_counts, load_reference_stats
from sid.results import read_evaluations, read_scores
from sid.teachers import load_teacher
from sid.testing.fixtures import TINY, flags, write_dataset

KINDS = ("folder", "zip", "npz", "npz-nchw")


def digits_like(n: int = 40, channels: int = 1, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def features(images: np.ndarray) -> np.ndarray:
    """The digits detector's features of uint8 NHWC images, float64."""
    with torch.no_grad():
        return DigitsDetector()(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).double().numpy()


# ---------------------------------------------------------------------------------------------- the three kinds
@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_kind_reads_back_its_images_labels_and_class_counts(tmp_path, kind, labelled, channels):
    images = digits_like(23, channels=channels)
    labels = np.random.default_rng(1).choice([0, 1, 3], size=23) if labelled else None  # class 2 has no image
    dataset = open_dataset(write_dataset(kind, tmp_path / f"data.{'npz' if kind.startswith('npz') else kind}",
                                         images, labels))
    info = dataset.info
    assert (info.kind, info.images, info.shape, info.channels, info.resolution) == \
           (kind.split("-")[0], 23, (channels, 8, 8), channels, 8)
    batches = list(dataset.batches(batch_size=5))
    assert [len(b) for b, _ in batches] == [5, 5, 5, 5, 3] and all(b.dtype == torch.uint8 for b, _ in batches)
    got = torch.cat([b for b, _ in batches]).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, images)
    if labelled:
        np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), labels)
        assert info.label_dim == 4 and info.class_counts.tolist() == np.bincount(labels, minlength=4).tolist()
    else:
        assert all(y is None for _, y in batches) and info.label_dim == 0 and info.class_counts is None


def test_digits_are_the_shipped_images_with_their_labels():
    info = open_dataset("digits").info
    assert (info.kind, info.images, info.shape, info.label_dim) == ("digits", 1797, (1, 8, 8), 10)
    assert info.class_counts.tolist() == np.bincount(load_digits_labels().numpy()).tolist()


def test_one_hot_npz_labels_are_class_indices(tmp_path):
    labels = np.array([2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", arr_0=digits_like(4), arr_1=np.eye(3, dtype=np.uint8)[labels])
    assert open_dataset(tmp_path / "d.npz").info.class_counts.tolist() == [1, 1, 2]


@pytest.mark.parametrize("teacher, match", [
    (dict(resolution=8, channels=1, label_dim=0), None),
    (dict(resolution=8, channels=1, label_dim=4), None),
    (dict(resolution=16, channels=1, label_dim=0), "images of shape [1, 8, 8] (C, H, W) do not match the teacher's "
                                                   "[1, 16, 16]"),
    (dict(resolution=8, channels=3, label_dim=0), "do not match the teacher's [3, 8, 8]"),
    (dict(resolution=8, channels=1, label_dim=10), "the teacher is conditional on 10 classes but the dataset has "
                                                   "labels of 4 classes"),
])
def test_a_dataset_that_does_not_fit_the_teacher_is_named(tmp_path, teacher, match):
    labelled = open_dataset(write_dataset("zip", tmp_path / "d.zip", digits_like(8), np.arange(8) % 4)).info
    unlabelled = open_dataset(write_dataset("npz", tmp_path / "u.npz", digits_like(8))).info
    if match is None:
        labelled.check_matches(**teacher)
    else:
        with pytest.raises(ValueError, match=r"d\.zip: ") as err:
            labelled.check_matches(**teacher)
        assert match in str(err.value)
    if teacher["label_dim"]:
        with pytest.raises(ValueError, match=f"u.npz: the teacher is conditional on {teacher['label_dim']} classes "
                                             f"but the dataset has no labels"):
            unlabelled.check_matches(**teacher)


# ---------------------------------------------------------------------------------------------- sid ref
@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_sid_ref_writes_float64_statistics_and_class_counts(tmp_path, capsys, kind, labelled):
    images = digits_like(40)
    labels = np.arange(40) % 3 if labelled else None
    source = write_dataset(kind, tmp_path / ("d.npz" if kind.startswith("npz") else f"d.{kind}"), images, labels)
    ref_cli.main([source, "--fid-detector", "digits-features-v1", "--out", str(tmp_path / "ref.npz"),
                  "--batch-per-device", "16"])
    assert "40 images" in capsys.readouterr().out
    mu, sigma = load_reference_stats(tmp_path / "ref.npz")
    want = features(images)
    np.testing.assert_allclose(mu, want.mean(0), rtol=1e-6, atol=1e-9)
    # unbiased, as EDM's reference files; the float32 detector's rounding depends on batch and layout
    np.testing.assert_allclose(sigma, np.cov(want, rowvar=False), rtol=1e-5, atol=1e-5)
    counts = load_class_counts(tmp_path / "ref.npz")
    assert (counts.tolist() == [14, 13, 13]) if labelled else counts is None


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG of width x height gray pixels in its header, with almost no pixel data: what a huge image costs
    before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _bad_data(case: str, root) -> tuple[str, str]:
    """(DATA, the text the error line must hold) of one kind of bad data."""
    folder = root / "data"
    if case in ("mixed-sizes", "mixed-channels", "corrupt", "huge"):
        write_dataset("folder", folder, digits_like(3))
        bad = folder / "00000" / "img00000002.png"
        if case == "mixed-sizes":
            write_dataset("folder", root / "other", digits_like(1, size=6))
        elif case == "mixed-channels":
            write_dataset("folder", root / "other", digits_like(1, channels=3))
        if case in ("mixed-sizes", "mixed-channels"):
            bad.write_bytes((root / "other" / "00000" / "img00000000.png").read_bytes())
        else:
            bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image" if case == "corrupt" else _png_header(20_000, 20_000))
        return str(folder), f"{bad}"
    if case == "missing-label":
        write_dataset("folder", folder, digits_like(3), np.array([0, 1, 2]))
        (folder / "dataset.json").write_text(json.dumps({"labels": [["00000/img00000000.png", 0]]}))
        return str(folder), f"{folder}: dataset.json has no label for {folder / '00000' / 'img00000001.png'}"
    if case == "vector-labels":
        write_dataset("folder", folder, digits_like(3), np.array([0, 1, 2]))
        (folder / "dataset.json").write_text(json.dumps({"labels": [["00000/img00000000.png", [0.5, 1.0]]]}))
        return str(folder), f"{folder / 'dataset.json'}: expected {{\"labels\": [[image name, class index"
    if case == "labels-bomb":  # a dataset.json that inflates past MAX_LABELS_BYTES from a small zip
        write_dataset("folder", folder, digits_like(3))
        path = str(root / "d.zip")
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for png in sorted(folder.rglob("*.png")):
                archive.write(png, png.relative_to(folder).as_posix())
            with archive.open("dataset.json", "w", force_zip64=True) as f:
                for _ in range(MAX_LABELS_BYTES // 2 ** 24 + 1):
                    f.write(b" " * 2 ** 24)
        assert os.path.getsize(path) < MAX_LABELS_BYTES // 100
        return path, f"{path}: dataset.json ({MAX_LABELS_BYTES + 2 ** 24:,} bytes, compression method 8) is not"
    if case == "labels-fifo":
        write_dataset("folder", folder, digits_like(3))
        (folder / "dataset.json").unlink()
        os.mkfifo(folder / "dataset.json")
        return str(folder), f"{folder / 'dataset.json'} is not a regular file"
    if case == "fifo":
        os.mkfifo(root / "d.npz")
        return str(root / "d.npz"), f"{root / 'd.npz'} is not a regular file"
    if case == "pickled-npz":
        np.savez(root / "d.npz", arr_0=np.array([object()], dtype=object))
        return str(root / "d.npz"), f"{root / 'd.npz'}: "  # refused by sid.metrics.read_npz, whose words may change
    if case == "float-npz":
        np.savez(root / "d.npz", arr_0=digits_like(3).astype(np.float32))
        return str(root / "d.npz"), f"{root / 'd.npz'}: expected arr_0 as uint8 images"
    if case == "label-count":
        np.savez(root / "d.npz", arr_0=digits_like(3), arr_1=np.array([0, 1]))
        return str(root / "d.npz"), f"{root / 'd.npz'}: arr_1: expected 3 class indices"
    if case == "empty":
        folder.mkdir()
        return str(folder), f"{folder}: no PNG/JPEG images found"
    if case == "detector":  # 3-channel 16 px images for the 1-channel 8 px digits detector
        return write_dataset("npz", root / "d.npz", digits_like(3, channels=3, size=16)), "expects"
    raise AssertionError(case)


BAD_DATA = ("mixed-sizes", "mixed-channels", "corrupt", "huge", "missing-label", "vector-labels", "labels-bomb",
            "labels-fifo", "fifo", "pickled-npz", "float-npz", "label-count", "empty", "detector")


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, capsys, case):
    source, match = _bad_data(case, tmp_path)
    out = tmp_path / "out" / "ref.npz"
    with pytest.raises(SystemExit) as exited:
        ref_cli.main([source, "--fid-detector", "digits-features-v1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and match in err[-1], err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- scoring a run
@pytest.fixture(scope="module")
def ref_run(tmp_path_factory):
    """`sid ref digits` and a tiny digits run (`sid distill`) scored against it at every evaluation."""
    root = tmp_path_factory.mktemp("ref_run")
    ref_cli.main(["digits", "--fid-detector", "digits-features-v1", "--out", str(root / "ref.npz")])
    distill_cli.main(["--preset", "digits", "--out", str(root / "run"), "--fid-ref", str(root / "ref.npz"),
                      "--no-progress", *flags(**TINY)])
    return root


def test_sid_ref_statistics_score_a_run_in_distill_and_evaluate(ref_run, capsys):
    counts = load_class_counts(ref_run / "ref.npz")
    assert counts.tolist() == np.bincount(load_digits_labels().numpy()).tolist()
    rows = read_evaluations(ref_run / "run")
    assert rows["fid_ref"].eq(str(ref_run / "ref.npz")).all() and np.isfinite(rows["fid"]).all()
    assert rows["labels"].eq("none").all()  # the digits teacher is unconditional
    for ref in (str(ref_run / "ref.npz"), "digits"):
        eval_cli.main([str(ref_run / "run"), "--fid-ref", ref, "--fid-images", "256", "--no-progress"])
    capsys.readouterr()
    scores = read_scores(ref_run / "run")
    assert scores["fid_ref"].tolist() == [str(ref_run / "ref.npz"), "digits"]
    # The same images against the same digits: sid ref's unbiased covariance of 1,797 images vs the shipped biased one
    fid_ref, fid_digits = scores["fid"].tolist()
    assert fid_ref == pytest.approx(fid_digits, rel=1e-2) and fid_ref != fid_digits


def test_a_runs_config_file_with_another_precision_follows_the_adam_eps_rule(ref_run):
    """config.yaml stores adam_eps unset (null): read back with --precision fp16 it is the official 1e-6, not the
    1e-8 the fp32 run resolved; a value set in the file or on the command line is kept."""
    config_file = ref_run / "run" / "config.yaml"
    assert yaml.safe_load(config_file.read_text())["adam_eps"] is None

    def config(*argv):
        parser = distill_cli.build_parser()
        return config_from_args(parser, parse(parser, ["--config", str(config_file), *argv]))

    assert config().adam_eps == 1e-8 and config("--precision", "fp16").adam_eps == 1e-6
    assert config("--precision", "fp16", "--adam-eps", "1e-8").adam_eps == 1e-8
    explicit = ref_run / "explicit.yaml"
    explicit.write_text(config_file.read_text().replace("adam_eps: null", "adam_eps: 1.0e-8"))
    parser = distill_cli.build_parser()
    assert config_from_args(parser, parse(parser, ["--config", str(explicit), "--precision", "fp16"])).adam_eps == 1e-8


def test_sid_evaluate_scores_every_kind_of_dataset_alike(tmp_path, capsys):
    images, fids = digits_like(40), []
    ref_cli.main([write_dataset("npz", tmp_path / "ref-data.npz", digits_like(40, seed=1)), "--fid-detector",
                  "digits-features-v1", "--out", str(tmp_path / "ref.npz")])
    for kind in KINDS:
        source = write_dataset(kind, tmp_path / f"{kind}.{'npz' if kind.startswith('npz') else kind}", images)
        eval_cli.main([source, "--fid-detector", "digits-features-v1", "--fid-ref", str(tmp_path / "ref.npz"),
                       "--fid-images", "20", "--repeats", "2", "--out", str(tmp_path / "s.parquet"), "--no-progress"])
        rows = read_scores(tmp_path / "s.parquet")
        rows = rows[rows["source"] == source]
        assert rows["kind"].tolist() == [kind.split("-")[0]] * 2 and rows["fid_ref"].eq(str(tmp_path / "ref.npz")).all()
        fids.append(rows["fid"].tolist())
    capsys.readouterr()
    assert all(f == pytest.approx(fids[0], rel=1e-5) for f in fids) and fids[0][0] != fids[0][1]


@pytest.mark.parametrize("name", [p for p in PRESETS if PRESETS[p].get("data")])
def test_a_preset_with_data_defaults_to_images_that_fit_its_teacher(name):
    config = preset(name)
    teacher = load_teacher(config.teacher)  # any kind (EDM, diffusers VP): the denoiser interface's three numbers
    assert config.data == "digits"
    open_dataset(config.data).info.check_matches(resolution=teacher.img_resolution, channels=teacher.img_channels,
                                                 label_dim=teacher.label_dim)
