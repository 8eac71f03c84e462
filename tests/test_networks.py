"""EDM-compatible networks: parity with EDM's own outputs, full-size manifests, and the behaviour SiD relies on."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sid.networks.dhariwal import DhariwalUNet
from sid.networks.layers import Conv2d, UNetBlock
from sid.networks.precond import EDMPrecond
from sid.networks.songunet import SongUNet

PARITY = Path(__file__).resolve().parent / "data" / "parity"  # EDM's own outputs; see its README.md
PARITY_CASES = ["songunet_ddpmpp_uncond_16px", "songunet_ddpmpp_cond_16px", "dhariwalunet_adm_cond_16px"]
MANIFESTS = ["manifest_cifar10_ddpmpp_uncond", "manifest_ffhq64_ddpmpp_uncond", "manifest_imagenet64_adm_cond"]

# The embedded default: 1-channel 8x8 digits.
DIGITS_SONG = dict(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=32, channel_mult=[1, 2, 2],
                   num_blocks=1, attn_resolutions=[4], dropout=0.1, augment_dim=9)
DIGITS_ADM = dict(img_resolution=8, img_channels=1, label_dim=10, model_type="DhariwalUNet", model_channels=32,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1)


def small_net(config: dict, seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    net = EDMPrecond(**config).eval()
    with torch.no_grad():  # EDM initialises output layers near 0; randomise everything so outputs depend on all weights
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("case", PARITY_CASES)
def test_edm_weights_load_strictly_and_reproduce_edm_outputs(case):
    data = np.load(PARITY / f"{case}.npz")
    constructor = json.loads((PARITY / f"{case}.json").read_text())["constructor"]
    net = EDMPrecond(**constructor).eval()
    net.load_state_dict({k.removeprefix("param/"): torch.from_numpy(data[k]) for k in data.files
                         if k.startswith("param/")}, strict=True)
    x = torch.from_numpy(data["x"])
    labels = torch.from_numpy(data["class_labels"]) if "class_labels" in data.files else None
    augment = torch.zeros(len(x), constructor["augment_dim"]) if constructor.get("augment_dim") else None
    with torch.no_grad():
        out = net(x, torch.from_numpy(data["sigma"]), labels, augment)
    assert out.dtype == torch.float32
    assert relative_error(out, torch.from_numpy(data["out"])) <= 1e-5


@pytest.mark.parametrize("name", MANIFESTS)
def test_full_size_networks_match_edm_names_shapes_and_parameter_counts(name):
    manifest = json.loads((PARITY / f"{name}.json").read_text())
    with torch.device("meta"):
        net = EDMPrecond(**manifest["constructor"])
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == manifest["tensors"]
    assert list(net.state_dict()) == list(manifest["tensors"])  # same order too, so dumps diff cleanly
    assert sum(p.numel() for p in net.parameters()) == manifest["n_params"]


@pytest.mark.parametrize("config", [DIGITS_SONG, DIGITS_ADM], ids=["song", "adm"])
def test_network_rebuilt_from_json_init_kwargs_computes_the_same_function(config):
    net = small_net(config)
    kwargs = json.loads(json.dumps(net.init_kwargs))
    assert kwargs["dropout"] == 0.1 and kwargs["num_blocks"] == 1 and "channel_mult_emb" in kwargs  # defaults kept
    clone = EDMPrecond(**kwargs).eval()
    clone.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(net(x, 1.3), clone(x, 1.3))


@pytest.mark.parametrize("sigma", [0.7, torch.tensor(0.7), torch.full([4], 0.7), torch.full([4, 1, 1, 1], 0.7)],
                         ids=["float", "0d", "N", "N111"])
def test_sigma_may_be_a_scalar_or_per_sample(sigma):
    net = small_net(DIGITS_SONG)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x, sigma), net(x, torch.full([4], 0.7)), rtol=0, atol=1e-6)


def test_sigma_with_the_wrong_number_of_values_is_refused():
    with pytest.raises(ValueError, match="one value per sample"):
        small_net(DIGITS_SONG)(torch.randn(4, 1, 8, 8), torch.ones(3))


def test_preconditioning_matches_hand_derived_coefficients_at_sigma_init():
    # docs/sid-facts.md section 1: at sigma = 2.5, c_skip = 0.03846, c_out = 0.49029, c_in = 0.39223, c_noise = 0.22907.
    net = small_net(DIGITS_SONG)
    seen = {}
    net.model.register_forward_hook(lambda m, args, kwargs, out: seen.update(x=args[0], noise=args[1], out=out),
                                    with_kwargs=True)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = net(x, 2.5)
    assert torch.allclose(seen["x"], x * 0.39223, atol=1e-4)
    assert torch.allclose(seen["noise"], torch.full([2], 0.22907), atol=1e-5)
    assert torch.allclose(out, 0.03846 * x + 0.49029 * seen["out"], atol=1e-4)


@pytest.mark.parametrize("config", [DIGITS_SONG, DIGITS_ADM], ids=["song", "adm"])
def test_gradients_flow_to_the_input_through_a_frozen_network(config):
    net = small_net(config).requires_grad_(False)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    net(x, torch.tensor([0.5, 3.0])).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("config", [DIGITS_SONG, DIGITS_ADM], ids=["song", "adm"])
def test_a_nan_sample_does_not_leak_into_the_other_samples(config):
    net = small_net(config)
    x = torch.randn(3, 1, 8, 8)
    x_nan = x.clone()
    x_nan[1, 0, 2, 3] = float("nan")
    with torch.no_grad():
        out, out_nan = net(x, 1.0), net(x_nan, 1.0)
    assert out_nan[1].isnan().any()
    assert torch.allclose(out_nan[[0, 2]], out[[0, 2]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("embedding_type,channel_mult_noise,encoder_type,decoder_type,resample_filter", [
    ("positional", 1, "standard", "standard", [1, 1]),  # DDPM++
    ("fourier", 2, "residual", "standard", [1, 3, 3, 1]),  # NCSN++
    ("fourier", 2, "skip", "skip", [1, 3, 3, 1]),
    ("positional", 1, "residual", "skip", [1, 1]),
])
def test_song_unet_variants_run_on_1_channel_8x8(embedding_type, channel_mult_noise, encoder_type, decoder_type,
                                                  resample_filter):
    config = dict(DIGITS_SONG, embedding_type=embedding_type, channel_mult_noise=channel_mult_noise,
                  encoder_type=encoder_type, decoder_type=decoder_type, resample_filter=resample_filter)
    net = small_net(config)
    names = set(net.state_dict())
    assert ("model.map_noise.freqs" in names) == (embedding_type == "fourier")
    assert ("model.enc.4x4_aux_residual.weight" in names) == (encoder_type == "residual")
    assert ("model.enc.4x4_aux_skip.weight" in names) == (encoder_type == "skip")
    assert ("model.dec.4x4_aux_conv.weight" in names) == (decoder_type == "skip")
    assert net.state_dict()["model.enc.4x4_down.conv0.resample_filter"].shape[-1] == len(resample_filter)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = net(x, 0.8, augment_labels=torch.zeros(2, 9))
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert torch.equal(out, net(x, 0.8, augment_labels=torch.zeros(2, 9)))  # eval: dropout off
        net.train()
        assert not torch.equal(out, net(x, 0.8, augment_labels=torch.zeros(2, 9)))  # train: dropout on


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1]])
def test_resampling_filters_match_a_direct_float64_computation(taps):
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    f = np.outer(taps, taps) / np.sum(taps) ** 2
    pad = (len(taps) - 1) // 2
    xp = np.pad(x.numpy(), [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    down = np.zeros([1, 2, 4, 4])
    for i in range(4):
        for j in range(4):
            down[..., i, j] = (xp[..., 2 * i:2 * i + len(taps), 2 * j:2 * j + len(taps)] * f).sum((-1, -2))
    layer = Conv2d(2, 2, kernel=0, down=True, resample_filter=taps).double()
    assert np.allclose(layer(x).numpy(), down, atol=1e-12)
    # Upsampling is the adjoint of downsampling scaled by 4: <up(y), x> = 4 <y, down(x)>.
    y = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    up = Conv2d(2, 2, kernel=0, up=True, resample_filter=taps).double()(y)
    assert up.shape == (1, 2, 8, 8)
    assert math.isclose((up * x).sum().item(), 4 * (y.numpy() * down).sum(), rel_tol=1e-10)


def test_multi_head_attention_uses_edm_interleaved_qkv_layout():
    torch.manual_seed(0)
    block = UNetBlock(128, 128, emb_channels=8, attention=True, channels_per_head=32).double().eval()  # 4 heads
    assert block.num_heads == 4
    x = torch.randn(2, 128, 4, 4, dtype=torch.float64)
    # EDM: qkv reshaped to (N*heads, C/heads, 3, HW); logits q.k / sqrt(C/heads), softmax over keys.
    q, k, v = block.qkv(x).reshape(2 * 4, 32, 3, 16).unbind(2)
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(32)).softmax(dim=2)
    expected = torch.einsum("nqk,nck->ncq", w, v).reshape(x.shape)
    assert torch.allclose(block._attention(x), expected, atol=1e-12)


def test_class_labels_none_means_all_zero_labels():
    net = small_net(DIGITS_ADM)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x, 1.0), net(x, 1.0, torch.zeros(2, 10)))
        assert not torch.allclose(net(x, 1.0), net(x, 1.0, F.one_hot(torch.tensor([3, 7]), 10)))


def test_use_fp16_is_ignored_on_cpu():
    net, net16 = small_net(DIGITS_SONG), small_net(dict(DIGITS_SONG, use_fp16=True))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x, 1.0), net16(x, 1.0))


@pytest.mark.parametrize("change,message", [
    (dict(model_type="VPNet"), "model_type must be one of"),
    (dict(encoder_type="fancy"), "encoder_type must be"),
    (dict(decoder_type="residual"), "decoder_type must be"),
    (dict(embedding_type="learned"), "embedding_type must be"),
    (dict(img_resolution=6, channel_mult=[1, 2, 2]), "must be divisible by 2\\*\\*2"),
])
def test_bad_configs_are_refused_with_a_clear_message(change, message):
    with pytest.raises(ValueError, match=message):
        EDMPrecond(**dict(DIGITS_SONG, **change))


def test_unets_are_exported_and_usable_directly():
    torch.manual_seed(0)
    for unet in (SongUNet(8, 1, 1, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]),
                 DhariwalUNet(8, 1, 1, model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])):
        assert unet(torch.randn(2, 1, 8, 8), torch.zeros(2), None).shape == (2, 1, 8, 8)
