"""The fake score's encoder as SiDA's discriminator, for every preset's architecture scaled down: encoder-only and
encoder+decoder forwards, their logits against the last encoder feature map read by a hook, and where gradients go."""

from __future__ import annotations

import pytest
import torch

from sid.config import PRESETS
from sid.networks.layers import FORWARD_MODES
from sid.testing.fixtures import random_teacher

NAMES = [name for name in PRESETS if name != "digits-ddpm"]  # a VP teacher has no encoder to reuse (SiD only)


def inputs(net, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=g)
    sigma = torch.exp(torch.randn(n, generator=g))
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.randint(net.label_dim, (n,), generator=g), net.label_dim).float()
    return x, sigma, labels


@pytest.mark.parametrize("name", NAMES)
def test_logits_are_the_channel_mean_of_the_last_encoder_feature_map_at_the_lowest_resolution(name):
    net = random_teacher(name, scaled=True)
    x, sigma, labels = inputs(net)
    captured = []
    last = list(net.model.enc.values())[-1]
    handle = last.register_forward_hook(lambda module, args, out: captured.append(out.detach().double()))
    try:
        logits = net(x, sigma, labels, mode="encoder")
    finally:
        handle.remove()
    lowest = net.img_resolution >> (len(net.init_kwargs["channel_mult"]) - 1)
    assert logits.dtype == torch.float32 and logits.shape == (3, 1, lowest, lowest)
    expected = captured[-1].mean(dim=1, keepdim=True)
    assert torch.allclose(logits.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_one_encoder_decoder_pass_gives_the_denoiser_and_the_encoder_only_logits(name):
    net = random_teacher(name, scaled=True)
    x, sigma, labels = inputs(net)
    denoised, logits = net(x, sigma, labels, mode="encoder_decoder")
    assert torch.equal(denoised, net(x, sigma, labels))
    assert torch.equal(logits, net(x, sigma, labels, mode="encoder"))
    assert denoised.shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_encoder_only_logits_send_gradient_to_the_encoder_and_input_only(name):
    net = random_teacher(name, scaled=True).requires_grad_(True)
    x, sigma, labels = inputs(net)
    x.requires_grad_(True)
    net(x, sigma, labels, mode="encoder").square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for key, p in net.named_parameters():
        if key.startswith("model.dec.") or key.startswith("model.out_"):
            assert p.grad is None, key  # the decoder is not part of the discriminator
        elif key.startswith("model.enc.") and "aux" not in key:
            assert p.grad is not None and p.grad.isfinite().all(), key


@pytest.mark.parametrize("name", NAMES)
def test_both_outputs_of_one_pass_reach_the_decoder_and_encoder(name):
    net = random_teacher(name, scaled=True).requires_grad_(True)
    x, sigma, labels = inputs(net)
    denoised, logits = net(x, sigma, labels, mode="encoder_decoder")
    (denoised.square().sum() + logits.sum()).backward()
    assert all(p.grad is not None for key, p in net.named_parameters() if "map_augment" not in key)


def test_an_unknown_mode_is_refused_naming_the_modes():
    net = random_teacher("digits", scaled=True)
    x, sigma, labels = inputs(net)
    with pytest.raises(ValueError, match="|".join(FORWARD_MODES)):
        net(x, sigma, labels, mode="discriminator")
