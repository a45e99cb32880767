"""Flux training math (T1-T4): pipeline smoke, packing and ids, a one-step oracle, sigma draws."""

from __future__ import annotations

import math

import pytest
import torch
from flux_helpers import flux_config

from lorastudio.models.families.flux import image_ids, pack_latents, unpack_latents
from lorastudio.training.loss import hash_seed
from lorastudio.training.objectives import FlowMatchObjective, flux_mu


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_tiny_pipelines_load_offline_and_render(variant, flux_dev_dir, flux_schnell_dir):
    from diffusers import FluxPipeline

    folder = flux_dev_dir if variant == "dev" else flux_schnell_dir
    pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.guidance_embeds == (variant == "dev")
    assert pipe.tokenizer_2("a photo").input_ids[-1] == 1  # T5's </s>
    for height, width in ((32, 32), (48, 32)):
        image = pipe("a photo of bibimbap", height=height, width=width, num_inference_steps=2, max_sequence_length=32,
                     guidance_scale=3.5 if variant == "dev" else 0.0, output_type="pt",
                     generator=torch.Generator().manual_seed(0)).images
        assert image.shape == (1, 3, height, width) and torch.isfinite(image).all()


def test_packing_and_ids_match_the_pipeline():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 4)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 4))
    assert torch.equal(unpack_latents(packed, 6, 4), latents)
    assert torch.equal(unpack_latents(packed, 6, 4), FluxPipeline._unpack_latents(packed, 48, 32, 8))
    assert torch.equal(image_ids(6, 4), FluxPipeline._prepare_latent_image_ids(2, 3, 2, "cpu", torch.float32))


def _session(tmp_path, model_dir, dataset, **sections):
    from accelerate import Accelerator

    from lorastudio.config.train import TrainConfig
    from lorastudio.training import recipe
    from lorastudio.training.preflight import preflight

    cfg = TrainConfig.model_validate(flux_config(model_dir, dataset, tmp_path / "out", tmp_path / "cache", **sections))
    return recipe.setup(cfg, preflight(cfg, audit=False), Accelerator(cpu=True), show_progress=False)


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_one_step_matches_a_hand_written_flow_matching_loss(variant, tmp_path, flux_dataset, flux_dev_dir, flux_schnell_dir):
    from diffusers import AutoencoderKL, FluxPipeline

    from lorastudio.data.dataset import collate_pixels
    from lorastudio.training import recipe

    folder = flux_dev_dir if variant == "dev" else flux_schnell_dir
    session = _session(tmp_path, folder, flux_dataset, train={"seed": 7})
    assert session.prediction_type == "flow" and session.family.variant == variant
    assert session.family.t5_max_length == (512 if variant == "dev" else 256)
    examples, positions = recipe.next_examples(session)
    seen = {}
    session.unet.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    loss = recipe.forward_loss(session, examples, positions, micro=0)

    # Latents: (z - 0.1159) * 0.3611 exactly once, from the VAE's mode.
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae")
    with torch.no_grad():
        z = vae.encode(collate_pixels(examples)).latent_dist.mode()
    x0 = (z - 0.1159) * 0.3611
    assert torch.allclose(session.features.latents(examples), x0, atol=1e-6)
    # Noise and sigma from the per-sample generator; logit-normal shifted by e^mu(tokens).
    b, _, h, w = x0.shape
    tokens = (h // 2) * (w // 2)
    noise, sigmas = [], []
    for pos in positions:
        gen = torch.Generator().manual_seed(hash_seed(7, 0, pos))
        noise.append(torch.randn(x0.shape[1:], generator=gen))
        s = torch.sigmoid(torch.randn((), generator=gen, dtype=torch.float64))
        shift = math.exp(0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256))
        sigmas.append(float(shift * s / (1 + (shift - 1) * s)))
    noise, sigma = torch.stack(noise), torch.tensor(sigmas)
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    target = noise - x0
    assert torch.allclose(seen["timestep"], sigma)  # sigma, not sigma*1000: the model scales it
    if variant == "dev":
        assert torch.equal(seen["guidance"], torch.ones(b))
    else:
        assert seen["guidance"] is None
    assert seen["encoder_hidden_states"].shape[1] == session.family.t5_max_length
    assert torch.equal(seen["txt_ids"], torch.zeros(session.family.t5_max_length, 3))
    with torch.no_grad():
        out = session.unet(hidden_states=FluxPipeline._pack_latents(x_t, b, 16, h, w), timestep=sigma,
                           guidance=seen["guidance"], pooled_projections=seen["pooled_projections"],
                           encoder_hidden_states=seen["encoder_hidden_states"], txt_ids=seen["txt_ids"],
                           img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                           return_dict=False)[0]
    pred = FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)
    expected = ((pred - target) ** 2).mean()
    assert torch.allclose(loss.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens", [256, 4096])
def test_flux_shift_median_matches_the_closed_form(tokens):
    objective = FlowMatchObjective("flux_shift")
    draws = torch.tensor([objective.sigma_from_generator(torch.Generator().manual_seed(i), tokens) for i in range(20000)])
    shift = math.exp(flux_mu(tokens))
    assert flux_mu(256) == pytest.approx(0.5) and flux_mu(4096) == pytest.approx(1.15)
    # logit-normal median 0.5, pushed through the monotone shift: s / (1 + s)
    assert float(draws.median()) == pytest.approx(shift / (1 + shift), abs=0.01)
    assert 0 < float(draws.min()) and float(draws.max()) < 1


def test_uniform_passes_a_ks_test_and_shift_options_differ():
    draws = torch.tensor([FlowMatchObjective("uniform").sigma_from_generator(torch.Generator().manual_seed(i), 1024)
                          for i in range(20000)]).sort().values
    ecdf = torch.arange(1, len(draws) + 1) / len(draws)
    assert float((ecdf - draws).abs().max()) < 1.36 / math.sqrt(len(draws))  # KS at 5%
    plain = FlowMatchObjective("logit_normal").sigma_from_generator(torch.Generator().manual_seed(3), 4096)
    fixed = FlowMatchObjective("shift", shift=3.0).sigma_from_generator(torch.Generator().manual_seed(3), 4096)
    assert fixed == pytest.approx(3 * plain / (1 + 2 * plain))


def test_same_seed_and_step_give_the_same_sigmas():
    objective = FlowMatchObjective()
    latents = torch.zeros(2, 16, 8, 8)
    a = objective.draw(latents, [0, 1], seed=3, step=5, scheduler=None, noise_offset=0.0)
    b = objective.draw(latents, [0, 1], seed=3, step=5, scheduler=None, noise_offset=0.0)
    c = objective.draw(latents, [0, 1], seed=3, step=6, scheduler=None, noise_offset=0.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


@pytest.mark.parametrize(("override", "message"), [
    ({"train": {"mixed_precision": "fp16"}}, "fp16"),
    ({"model": {"dtype": "float16"}}, "fp16"),
    ({"flux": {"prediction": "sigma_scaled"}}, "sigma_scaled"),
    ({"train": {"min_snr_gamma": 5.0}}, "min_snr_gamma"),
    ({"model": {"prediction_type": "epsilon"}}, "velocity"),
])
def test_config_refuses_what_breaks_flux(tmp_path, override, message):
    from lorastudio.config.train import TrainConfig

    cfg = flux_config(tmp_path / "m", tmp_path / "d", tmp_path / "o", tmp_path / "c")
    for section, values in override.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    with pytest.raises(ValueError, match=message):
        TrainConfig.model_validate(cfg)
