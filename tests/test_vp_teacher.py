"""A discrete-time VP (DDPM) teacher in EDM's convention, checked against diffusers' own scheduler arithmetic: for
an integer timestep t, D(x_t / sqrt(abar_t); sigma_t) must equal the x0 that `DDPMScheduler.step` derives from the
same UNet output (`pred_original_sample`, clip_sample off), for epsilon-, v- and sample-prediction."""


import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from sid.config import preset
from sid.networks.vp import VPDenoiser, load_diffusers, sigmas_of, timestep_of
from sid.teachers import sigma_range
from sid.testing.fixtures import TINY_UNET as UNET
from sid.testing.fixtures import save_pipeline


def tiny_vp(prediction_type: str, num_class_embeds: int | None = None,
            beta_schedule: str = "linear") -> tuple[VPDenoiser, DDPMScheduler]:
    torch.manual_seed(0)
    unet = UNet2DModel(**UNET, num_class_embeds=num_class_embeds)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=False,
                              prediction_type=prediction_type)
    net = VPDenoiser(unet=dict(unet.config), alphas_cumprod=scheduler.alphas_cumprod.tolist(),
                     prediction_type=prediction_type)
    net.unet.load_state_dict(unet.state_dict())
    return net.eval(), scheduler


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoiser_matches_the_x0_of_diffusers_ddpm_scheduler(prediction_type, beta_schedule):
    net, scheduler = tiny_vp(prediction_type, beta_schedule=beta_schedule)
    gen = torch.Generator().manual_seed(1)
    for t in (0, 1, 17, 250, 500, 998, 999):
        x_t = torch.randn(3, 1, 8, 8, generator=gen)
        abar = scheduler.alphas_cumprod[t].double()
        sigma = float(((1 - abar) / abar).sqrt())
        with torch.no_grad():
            out = net.unet(x_t, torch.tensor([t] * 3)).sample
            expected = scheduler.step(out, t, x_t).pred_original_sample
            got = net(x_t / abar.sqrt().float(), torch.full((3,), sigma))
        assert net.timestep(torch.tensor([sigma], dtype=torch.float64)).item() == pytest.approx(t, abs=1e-9)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, sigma))


def test_fractional_timesteps_interpolate_in_log_sigma_and_clamp_outside_the_trained_range():
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    sigmas = sigmas_of(abar).numpy()
    query = np.array([1e-4, 0.002, sigmas[0], 0.5, 2.5, 80.0, sigmas[-1], 1e4])
    expected = np.interp(np.log(query), np.log(sigmas), np.arange(len(sigmas)))  # clamps at both ends
    got = timestep_of(torch.tensor(query), torch.tensor(np.log(sigmas))).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert got[0] == 0 and got[-1] == len(sigmas) - 1


def test_class_labels_are_one_hot_and_the_network_rebuilds_from_its_init_kwargs():
    net, _ = tiny_vp("epsilon", num_class_embeds=10)
    assert (net.img_resolution, net.img_channels, net.label_dim) == (8, 1, 10)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 3, 9]), 10).float()
    again = VPDenoiser(**net.init_kwargs)
    again.load_state_dict(net.state_dict())
    with torch.no_grad():
        a, b = net(x, 2.5, labels), again.eval()(x, 2.5, labels)
        other = net(x, 2.5, torch.nn.functional.one_hot(torch.tensor([1, 3, 3, 9]), 10).float())
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[0], other[0]) and torch.equal(a[1:], other[1:])  # labels reach the network, per sample
    assert VPDenoiser(**{**net.init_kwargs, "dropout": 0.2}).unet.config.dropout == 0.2


@pytest.mark.parametrize("change, words", [
    (dict(prediction_type="flow"), "not mapped"),
    (dict(unet={**UNET, "out_channels": 2}), "same number in and out"),
    (dict(unet={**UNET, "time_embedding_type": "fourier"}), "only 'positional'"),
    (dict(alphas_cumprod=[0.5, 0.9]), "decreasing"),
])
def test_unsupported_vp_networks_are_one_clear_error(change, words):
    kwargs = dict(unet=UNET, alphas_cumprod=[0.99, 0.5, 0.1], prediction_type="epsilon", **{})
    with pytest.raises(ValueError, match=words):
        VPDenoiser(**{**kwargs, **change})


@pytest.mark.parametrize("sigma_init, tmax, refused", [(2.5, 800, False), (80.0, 1000, False), (200.0, 800, True)])
def test_a_run_asking_for_more_noise_than_the_teacher_knows_is_refused(sigma_init, tmax, refused):
    net, _ = tiny_vp("epsilon")  # linear DDPM: largest sigma ~157
    config = preset("digits", sigma_init=sigma_init, tmax=tmax)
    if refused:
        with pytest.raises(ValueError, match="largest trained sigma 157"):
            sigma_range(net, config)
    else:
        assert sigma_range(net, config) == [f"teacher digits: below sigma {net.sigma_min:.4g} (its smallest trained "
                                            f"sigma) its timestep clamps to the first, as discrete-time denoisers do "
                                            f"(SiD asks down to sigma 0.002)"]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_saved_diffusers_pipeline_loads_as_the_same_denoiser(tmp_path, prediction_type):
    unet = save_pipeline(tmp_path / "pipe", prediction_type)
    net = load_diffusers(tmp_path / "pipe")
    reference, _ = tiny_vp(prediction_type)
    reference.unet.load_state_dict(unet.state_dict())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(net(x, 1.7), reference(x, 1.7), rtol=0, atol=0)
    assert net.prediction_type == prediction_type and not any(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("setup, words", [
    ("not a folder", "no such diffusers folder"),
    ("empty folder", "no config.json"),
    ("pickled weights", "pickle, which this project never loads"),
    ("VE scheduler", "not a discrete-time VP scheduler"),
    ("text UNet", "is not supported"),
    ("torn config", "not a diffusers model config"),
])
def test_a_folder_that_is_not_a_usable_diffusers_vp_model_is_one_clear_error(tmp_path, setup, words):
    folder = tmp_path / "pipe"
    if setup == "not a folder":
        folder = tmp_path / "nothing"
    elif setup == "empty folder":
        folder.mkdir()
    else:
        save_pipeline(folder, weights=setup != "pickled weights",
                      scheduler_class="ScoreSdeVeScheduler" if setup == "VE scheduler" else "DDPMScheduler")
        config = folder / "unet" / "config.json"
        if setup == "text UNet":
            config.write_text(config.read_text().replace('"UNet2DModel"', '"UNet2DConditionModel"'))
        if setup == "torn config":
            config.write_text(config.read_text()[:40])
    with pytest.raises(ValueError, match=words):
        load_diffusers(folder)
