"""The feature networks of sid/detectors.py: DINOv2 (EDM2's FD_DINOv2) and a user's TorchScript detector.

DINOv2 is tested at a tiny size with random weights (no download): its forward against an explicit float64
transcription of the same equations, its position-embedding resampling, its weights read through the file gate, and
EDM2's preprocessing against PIL's bicubic resize (EDM2's slow reference mode). The FD of each detector is checked
against scipy on its own features; hostile TorchScript files are one clear error each."""

from __future__ import annotations

import math
import os
import pickle
import warnings

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch

from sid.commands.evaluate import main as evaluate_main
from sid.config import DINOV2, preset
from sid.detectors import DetectorFile, DinoV2Detector, load_dinov2
from sid.metrics import (
    FeatureStats,
    feature_stats,
    frechet_distance,
    get_detector,
    reference_stats_for_images,
    save_reference_stats,
)
from sid.networks.dinov2 import VITL14, DinoVisionTransformer
from sid.results import read_parquet
from sid.run import run_local
from sid.testing.crafted import RunsCommand
from sid.testing.fixtures import make_teacher, tiny_config

TINY_VIT = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0)


def tiny_vit(seed: int = 0) -> DinoVisionTransformer:
    """A tiny DINOv2 ViT with every parameter random (LayerNorms and LayerScales too), in eval mode."""
    torch.manual_seed(seed)
    net = DinoVisionTransformer(**TINY_VIT)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == 32 else 0.0))
    return net.eval().requires_grad_(False)


def reference_forward(net: DinoVisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The class token, transcribed in float64 from the equations (no nn module is called)."""
    p = {k: v.double() for k, v in net.state_dict().items()}
    x = x.double()
    n, patch, dim = x.shape[0], net.patch_size, net.embed_dim
    h, w = x.shape[2] // patch, x.shape[3] // patch
    cells = x.reshape(n, 3, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, -1)
    tokens = cells @ p["patch_embed.proj.weight"].reshape(dim, -1).T + p["patch_embed.proj.bias"]
    tokens = torch.cat([p["cls_token"].expand(n, 1, dim), tokens], dim=1) + p["pos_embed"]

    def norm(t, name):
        mean, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        return (t - mean) / torch.sqrt(var + 1e-6) * p[f"{name}.weight"] + p[f"{name}.bias"]

    def linear(t, name):
        return t @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    heads = len(net.blocks[0].attn.qkv.weight) // 3 // (dim // TINY_VIT["num_heads"])
    for i in range(len(net.blocks)):
        b = f"blocks.{i}"
        q, k, v = linear(norm(tokens, f"{b}.norm1"), f"{b}.attn.qkv").reshape(n, -1, 3, heads, dim // heads).unbind(2)
        scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(dim // heads)
        mixed = torch.einsum("nhqk,nkhd->nqhd", scores.softmax(-1), v).reshape(n, -1, dim)
        tokens = tokens + linear(mixed, f"{b}.attn.proj") * p[f"{b}.ls1.gamma"]
        hidden = linear(norm(tokens, f"{b}.norm2"), f"{b}.mlp.fc1")
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU
        tokens = tokens + linear(hidden, f"{b}.mlp.fc2") * p[f"{b}.ls2.gamma"]
    return norm(tokens, "norm")[:, 0]


def test_dinov2_forward_matches_a_float64_transcription_of_its_equations():
    net = tiny_vit()
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(net(x).double(), reference_forward(net, x), rtol=1e-4, atol=1e-4)


def test_position_embeddings_are_kept_at_the_trained_grid_and_resampled_elsewhere():
    net = tiny_vit()
    assert net.position_embedding(28, 28) is net.pos_embed
    with torch.no_grad():
        net.pos_embed[:, 1:] = 0.5  # a constant field stays constant under bicubic resampling
    for side in (14, 56, 224):
        grid = side // 14
        resampled = net.position_embedding(side, side)
        assert resampled.shape == (1, 1 + grid * grid, 32)
        torch.testing.assert_close(resampled[:, 0], net.pos_embed[:, 0])
        torch.testing.assert_close(resampled[:, 1:], torch.full((1, grid * grid, 32), 0.5))
    assert net(torch.zeros(2, 3, 224, 224)).shape == (2, 32)


def test_the_full_size_network_is_vit_large_14_with_the_official_parameter_names():
    with torch.device("meta"):
        net = DinoVisionTransformer(**VITL14)
        out = net(torch.zeros(2, 3, 224, 224))
    state = net.state_dict()
    assert out.shape == (2, 1024) and net.embed_dim == 1024
    # patches 603,136 + class 1,024 + positions 1,370 x 1,024 + mask 1,024 + 24 blocks x 12,598,272 + norm 2,048
    assert sum(t.numel() for t in state.values()) == 304_368_640  # the "304M" of DINOv2's model card
    assert state["pos_embed"].shape == (1, 37 * 37 + 1, 1024) and state["mask_token"].shape == (1, 1024)
    assert {"blocks.23.ls2.gamma", "blocks.0.attn.qkv.bias", "patch_embed.proj.weight", "norm.bias"} <= set(state)


def test_dinov2_weights_load_through_the_gate(tmp_path):
    net = tiny_vit()
    path = tmp_path / "dinov2.pth"
    torch.save(net.state_dict(), path)
    loaded = load_dinov2(path, **TINY_VIT)
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(loaded(x), net(x))



@pytest.mark.parametrize("case, match", [
    ("missing weight", "1 missing \\(norm.bias\\)"),
    ("wrong shape", "pos_embed has shape \\[1, 4, 32\\], the architecture \\[1, 5, 32\\]"),
    ("zero stride", "cls_token of shape \\[1, 1, 32\\]|zero stride"),
    ("code", "not a DINOv2 weights file"),
    ("torn", "not a DINOv2 weights file"),
])
def test_a_bad_dinov2_weights_file_is_one_error_naming_it(tmp_path, case, match):
    state, marker = tiny_vit().state_dict(), tmp_path / "marker"
    path = tmp_path / "dinov2.pth"
    if case == "missing weight":
        del state["norm.bias"]
    elif case == "wrong shape":
        state["pos_embed"] = state["pos_embed"][:, :4].clone()
    elif case == "zero stride":
        state["mask_token"] = torch.zeros(1).expand(1, 32)
    if case == "code":
        path.write_bytes(pickle.dumps({"cls_token": RunsCommand(marker)}))
    elif case == "torn":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        torch.save(state, path)
    with pytest.raises(ValueError, match=match) as error:
        load_dinov2(path, **TINY_VIT)
    assert str(path) in str(error.value) and "\n" not in str(error.value) and not marker.exists()


def test_dinov2_preprocessing_is_edm2s_bicubic_resize_close_to_pil():
    """EDM2's default 'torch' mode (antialiased bicubic on 0..255) against its slow 'pil' reference mode."""
    rng = np.random.default_rng(2)
    smooth = PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((32, 32), PIL.Image.BILINEAR)
    images = torch.from_numpy(np.asarray(smooth).copy()).permute(2, 0, 1)[None]
    detector = DinoV2Detector(net=tiny_vit())
    x = detector.preprocess(images)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    pil = np.asarray(smooth.resize((224, 224), PIL.Image.Resampling.BICUBIC)).astype(np.float64) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = torch.from_numpy(((pil - mean) / std).transpose(2, 0, 1))[None]
    assert (x.double() - want).abs().mean() * 0.229 * 255 < 0.5  # under half a grey level on average
    gray = images[:, :1]
    torch.testing.assert_close(detector(gray), detector(gray.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="expects uint8 images"):
        detector(images.float())


class TinyFeatures(torch.nn.Module):
    """A TorchScript feature network as a user would write one: uint8 [N, 3, H, W] -> float [N, 7]."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(3, 7, generator=torch.Generator().manual_seed(3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(torch.float32).mean(dim=[2, 3]) / 255) @ self.proj


class Raises(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this detector refuses every image")


class OneDimensional(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32).mean(dim=[1, 2, 3])


class Integers(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :5].to(torch.int64)


def script(module: torch.nn.Module, path) -> str:
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def test_a_torchscript_detector_reads_its_size_from_a_probe_and_names_itself_by_digest(tmp_path):
    path = script(TinyFeatures(), tmp_path / "mine.pt")
    detector = get_detector(path)
    assert isinstance(detector, DetectorFile) and detector.feature_dim == 7
    assert detector.name.startswith("mine.pt@sha256:") and len(detector.name) == len("mine.pt@sha256:") + 16
    images = torch.randint(0, 256, (4, 3, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    want = (images.float().mean(dim=[2, 3]) / 255) @ TinyFeatures().proj.detach()
    torch.testing.assert_close(detector(images), want)
    assert preset("digits", fid_detector=path).fid_detector == path  # accepted by the config as any detector


def dinov2_tiny(tmp_path):
    return DinoV2Detector(net=tiny_vit())


def torchscript_tiny(tmp_path):
    return DetectorFile(script(TinyFeatures(), tmp_path / "mine.pt"))


@pytest.mark.parametrize("make", [dinov2_tiny, torchscript_tiny], ids=["dinov2", "torchscript"])
def test_fd_with_each_detector_matches_scipy_on_its_features(tmp_path, make):
    detector = make(tmp_path)
    gen = torch.Generator().manual_seed(5)
    real = [torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=gen) for _ in range(3)]
    fake = [torch.randint(0, 200, (4, 1, 16, 16), dtype=torch.uint8, generator=gen) for _ in range(3)]
    mu1, s1 = feature_stats(real, detector).mean_cov()
    mu2, s2 = feature_stats(fake, detector).mean_cov()
    f1 = np.concatenate([detector(b).double().numpy() for b in real])
    f2 = np.concatenate([detector(b).double().numpy() for b in fake])
    assert f1.shape[1] == detector.feature_dim and isinstance(feature_stats(real, detector), FeatureStats)
    m1, c1, m2, c2 = f1.mean(0), np.cov(f1.T, bias=True), f2.mean(0), np.cov(f2.T, bias=True)
    want = np.square(m1 - m2).sum() + np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2)))
    np.testing.assert_allclose(mu1, m1, rtol=1e-6, atol=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("case, match", [
    ("no such file", "cannot read it"),
    ("random bytes", "not a TorchScript feature network"),
    ("a pickle that runs a command", "not a TorchScript feature network"),
    ("torch.save of weights", "not a TorchScript feature network"),
    ("forward raises", "its forward failed on uint8 images \\(2, 3, 64, 64\\)"),
    ("returns one number per image", "returned \\(2,\\) for 2 images"),
    ("returns integers", "returned \\(2, 5\\) for 2 images"),
])
def test_a_hostile_or_wrong_torchscript_detector_is_one_clear_error(tmp_path, case, match):
    path, marker = tmp_path / "detector.pt", tmp_path / "marker"
    if case == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif case == "a pickle that runs a command":
        path.write_bytes(pickle.dumps(RunsCommand(marker)))
    elif case == "torch.save of weights":
        torch.save({"net": RunsCommand(marker)}, path)
    elif case != "no such file":
        script({"forward raises": Raises, "returns one number per image": OneDimensional,
                "returns integers": Integers}[case](), path)
    with pytest.raises(ValueError, match=match) as error:
        get_detector(str(path))
    message = str(error.value)
    assert str(path) in message and "\n" not in message and "Traceback" not in message and not marker.exists()


def test_dinov2_is_a_registered_detector_name():
    assert DINOV2 == "dinov2-vitl14" and preset("digits", fid_detector=DINOV2).fid_detector == DINOV2


def test_a_run_scored_by_a_torchscript_detector_names_it_in_every_row(tmp_path):
    """Rows carry the detector's name (a file's with its digest), here through a whole tiny run and its reference."""
    path = script(TinyFeatures(), tmp_path / "mine.pt")
    detector = DetectorFile(path)
    gen = torch.Generator().manual_seed(6)
    mu, sigma = reference_stats_for_images([torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=gen)],
                                           detector)
    save_reference_stats(tmp_path / "ref.npz", mu, sigma)
    config = tiny_config(make_teacher(tmp_path / "teacher.pt"), fid_detector=path, fid_ref=str(tmp_path / "ref.npz"),
                         fid_images=16)
    rows = read_parquet(run_local(config, tmp_path / "run", device=torch.device("cpu"), resume=False, progress=False))
    assert len(rows) == 3 and set(rows["fid_detector"]) == {detector.name} and rows["fid"].notna().all()


def test_sid_evaluate_with_a_hostile_torchscript_detector_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "evil.pt"
    torch.save({"net": RunsCommand(tmp_path / "marker")}, bad)
    with pytest.raises(SystemExit) as exit_code:
        evaluate_main(["digits", "--fid-detector", str(bad), "--fid-images", "16", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_code.value.code == 2 and "not a TorchScript feature network" in err[-1] and str(bad) in err[-1]
    assert not (tmp_path / "marker").exists()
