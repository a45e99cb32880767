"""Training Flux through the real CLI (T5, T9, T10): it learns, resumes bit-exactly, caches honestly."""

from __future__ import annotations

import json

import torch
from flux_helpers import flux_config
from train_helpers import adapter_tensors, make_dataset, read_metrics, run_cli, write_config


def _train(tmp_path, cfg, name, *extra):
    return run_cli(["train", str(write_config(tmp_path / f"{name}.yaml", cfg)), "--no-progress", "--skip-audit", *extra])


def test_tiny_flux_lora_learns_and_changes_the_image(tmp_path, flux_dev_dir):
    from diffusers import FluxPipeline

    data = make_dataset(tmp_path / "ds", [(32, 32)] * 2, scene="backdrop")
    cfg = flux_config(flux_dev_dir, data, tmp_path / "run", tmp_path / "cache",
                      train={"max_steps": 40, "lr": 3e-3, "batch_size": 2}, save={"every_n_steps": None},
                      network={"rank": 4, "alpha": 8.0})
    result = _train(tmp_path, cfg, "learn")
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    # The tiny transformer squeezes 64 packed channels into 32, so the loss has a high floor;
    # seeded, the last ten steps still average 15% below the first ten.
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10]), losses
    lora = adapter_tensors(tmp_path / "run" / "final" / "diffusers" / "pytorch_lora_weights.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora.items())

    pipe = FluxPipeline.from_pretrained(str(flux_dev_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="ohwx_kfood_style, a photo of bibimbap", height=32, width=32, num_inference_steps=2,
              max_sequence_length=32, guidance_scale=3.5, output_type="pt")
    base = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(str(tmp_path / "run" / "final" / "diffusers"))
    tuned = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert (tuned - base).abs().max() > 1e-3


def test_killed_and_resumed_flux_run_equals_straight_run(tmp_path, flux_dataset, flux_dev_dir):
    common = {"train": {"max_steps": 5, "scheduler": "cosine", "warmup_steps": 1, "noise_offset": 0.05},
              "save": {"every_n_steps": None}, "flux": {"sigma_sampling": "flux_shift"}}
    straight = flux_config(flux_dev_dir, flux_dataset, tmp_path / "straight", tmp_path / "cache", **common)
    assert _train(tmp_path, straight, "straight").exit_code == 0
    resumed = flux_config(flux_dev_dir, flux_dataset, tmp_path / "resumed", tmp_path / "cache", **common)
    resumed["train"]["debug_stop_after_step"] = 2
    assert _train(tmp_path, resumed, "resumed").exit_code == 130
    assert not (tmp_path / "resumed" / "final").exists()
    del resumed["train"]["debug_stop_after_step"]
    second = _train(tmp_path, resumed, "resumed", "--resume", "auto")
    assert second.exit_code == 0 and "at step 2" in second.output
    a = adapter_tensors(tmp_path / "straight" / "checkpoints" / "step_5" / "trainer_state" / "adapter.safetensors")
    b = adapter_tensors(tmp_path / "resumed" / "checkpoints" / "step_5" / "trainer_state" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = tmp_path / "straight" / "checkpoints" / "step_5" / "trainer_state"
    opt_b = tmp_path / "resumed" / "checkpoints" / "step_5" / "trainer_state"
    names = sorted(p.name for p in opt_a.glob("optimizer*.safetensors"))
    assert names
    for name in names:
        oa, ob = adapter_tensors(opt_a / name), adapter_tensors(opt_b / name)
        assert all(torch.equal(oa[k], ob[k]) for k in oa), name
    assert [r["loss"] for r in read_metrics(tmp_path / "straight")] == [r["loss"] for r in read_metrics(tmp_path / "resumed")]


def test_nan_guard_skips_the_step_and_checkpoints_are_complete(tmp_path, flux_dataset, flux_dev_dir):
    cfg = flux_config(flux_dev_dir, flux_dataset, tmp_path / "run", tmp_path / "cache",
                      train={"max_steps": 3, "debug_nan_at_steps": [2], "gradient_checkpointing": True},
                      save={"every_n_steps": 1})
    result = _train(tmp_path, cfg, "nan")
    assert result.exit_code == 0 and "non-finite" in result.output
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["skipped_steps"] == 1
    step = tmp_path / "run" / "checkpoints" / "step_3"
    complete = json.loads((step / "COMPLETE.json").read_text())
    assert "lora.safetensors" in json.dumps(complete) and (step / "diffusers" / "pytorch_lora_weights.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(str(step / "lora.safetensors"), framework="pt") as fh:
        header = fh.metadata()
    assert header["ss_guidance_scale"] == "1.0" and header["ss_timestep_sampling"] == "flux_shift"
    assert header["ss_t5xxl_max_token_length"] == "512" and header["modelspec.architecture"] == "flux-1-dev/lora"


def test_caches_are_exact_and_keyed_by_t5_length(tmp_path, flux_dataset, flux_schnell_dir):
    from lorastudio.config.train import TrainConfig
    from lorastudio.models.families import get_family, load_text_parts
    from lorastudio.training.preflight import preflight

    cfg = flux_config(flux_schnell_dir, flux_dataset, tmp_path / "a", tmp_path / "cache", train={"max_steps": 1})
    first = _train(tmp_path, cfg, "a")
    assert first.exit_code == 0 and "text cache: 4 computed" in first.output and "latent cache: 4 computed" in first.output
    cfg["output_dir"] = str(tmp_path / "b")
    again = _train(tmp_path, cfg, "b")
    assert "text cache: 0 computed, 4 reused" in again.output and "latent cache: 0 computed" in again.output
    cfg["output_dir"], cfg["flux"] = str(tmp_path / "c"), {"t5_max_length": 128}
    longer = _train(tmp_path, cfg, "c")
    assert "text cache: 4 computed" in longer.output and "latent cache: 0 computed" in longer.output

    # A cached entry equals a fresh encode at schnell's default T5 length (256).
    parsed = TrainConfig.model_validate({**cfg, "flux": {}})
    family = get_family("flux").configured(parsed)
    assert family.variant == "schnell" and family.t5_max_length == 256
    assert family.pipeline_kwargs() == {"max_sequence_length": 256}  # samples encode as training did
    encoders, tokenizers = load_text_parts(family, parsed.model)
    caption = preflight(parsed, audit=False)[0].caption
    with torch.no_grad():
        fresh = family.encode_captions(encoders, tokenizers, [caption])
    from lorastudio.data.cache import TensorCache, module_hash, text_key, tokenizer_hash

    digest = module_hash(*encoders, extra=family.text_cache_tag + tokenizer_hash(tokenizers))
    cached = TensorCache("text", digest, root=tmp_path / "cache").get(text_key(caption))
    assert cached is not None and cached["hidden"].shape == (256, 32)
    assert torch.equal(cached["hidden"], fresh["hidden"][0]) and torch.equal(cached["pooled"], fresh["pooled"][0])


def test_optional_clip_and_t5_lora_train_and_export(tmp_path, flux_dataset, flux_dev_dir):
    from safetensors.torch import load_file

    cfg = flux_config(flux_dev_dir, flux_dataset, tmp_path / "clip", tmp_path / "cache", train={"max_steps": 2},
                      network={"train_text_encoder": True, "text_encoder_rank": 2, "text_encoder_alpha": 1.0})
    assert _train(tmp_path, cfg, "clip").exit_code == 0
    clip_only = load_file(str(tmp_path / "clip" / "final" / "lora.safetensors"))
    assert any(k.startswith("lora_te1_text_model_encoder_layers_") for k in clip_only)
    assert not any(k.startswith("lora_te3_") for k in clip_only)
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(flux_dev_dir), local_files_only=True)
    ids = pipe.tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        before = pipe.text_encoder(ids).pooler_output
    pipe.load_lora_weights(str(tmp_path / "clip" / "final" / "diffusers"))
    with torch.no_grad():
        after = pipe.text_encoder(ids).pooler_output
    assert (after - before).abs().max() > 0  # diffusers applied the CLIP LoRA from our file

    cfg = flux_config(flux_dev_dir, flux_dataset, tmp_path / "t5", tmp_path / "cache", train={"max_steps": 2},
                      network={"train_text_encoder": True, "text_encoder_rank": 2, "text_encoder_alpha": 1.0},
                      flux={"train_t5": True})
    result = _train(tmp_path, cfg, "t5")
    assert result.exit_code == 0, result.output
    both = load_file(str(tmp_path / "t5" / "final" / "lora.safetensors"))
    t5_keys = [k for k in both if k.startswith("lora_te3_encoder_block_")]
    assert t5_keys and any(v.abs().max() > 0 for k, v in both.items() if k.startswith("lora_te3_") and "lora_up" in k)


def test_two_process_ddp_matches_single_process(tmp_path, flux_dataset, flux_dev_dir):
    import os
    import subprocess
    import sys

    common = {"train": {"max_steps": 2}, "save": {"every_n_steps": None}}
    single = flux_config(flux_dev_dir, flux_dataset, tmp_path / "single", tmp_path / "cache", **common)
    assert _train(tmp_path, single, "single").exit_code == 0
    ddp = flux_config(flux_dev_dir, flux_dataset, tmp_path / "ddp", tmp_path / "cache", **common)
    ddp["train"]["batch_size"] = 1  # per process: the same global batch of 2
    cmd = [sys.executable, "-m", "lorastudio", "train", str(write_config(tmp_path / "ddp.yaml", ddp)), "--num-processes", "2",
           "--no-progress", "--skip-audit"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    a = adapter_tensors(tmp_path / "single" / "checkpoints" / "step_2" / "trainer_state" / "adapter.safetensors")
    b = adapter_tensors(tmp_path / "ddp" / "checkpoints" / "step_2" / "trainer_state" / "adapter.safetensors")
    assert a.keys() == b.keys()
    learned = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k)
    assert learned > 1e-4
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=learned * 1e-2)
