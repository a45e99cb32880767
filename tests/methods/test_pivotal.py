"""Pivotal tuning: a real freeze at the pivot, exact resume across it, bundle only on request,
and one loader (generate) that loads the LoRA + embedding pair."""

from __future__ import annotations

import re

import pytest
import torch
from method_helpers import TRIGGER, method_config, read_metrics, run_cli, train
from safetensors.torch import load_file


def _state(run, step):
    return load_file(str(run / "checkpoints" / f"step_{step}" / "trainer_state" / "adapter.safetensors"))


def test_vectors_are_frozen_from_the_pivot_while_the_lora_trains(tmp_path, dataset_dir, tiny_sd15_dir):
    run = tmp_path / "run"
    cfg = method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "pivotal",
                        train={"max_steps": 6}, ti={"pivot_fraction": 0.5}, save={"every_n_steps": 1, "keep_last": 10})
    result = train(tmp_path, cfg, "piv")
    assert result.exit_code == 0, result.output
    assert "step 3: pivot" in result.output
    states = {s: _state(run, s) for s in range(1, 7)}
    lora_keys = [k for k in states[1] if k.startswith("unet.")]
    assert lora_keys and "embedding_0" in states[1]
    assert not torch.equal(states[1]["embedding_0"], states[3]["embedding_0"]), "vectors train before the pivot"
    for s in (4, 5, 6):
        assert torch.equal(states[s]["embedding_0"], states[3]["embedding_0"]), f"vectors moved after the pivot (step {s})"
    assert all(torch.equal(states[1][k], states[3][k]) for k in lora_keys), "the LoRA trained before the pivot"
    assert any(not torch.equal(states[3][k], states[6][k]) for k in lora_keys), "the LoRA did not train after the pivot"
    final = run / "final"
    assert (final / "lora.safetensors").is_file() and (final / f"{TRIGGER}.safetensors").is_file()
    assert not list(final.glob("*.bundle.safetensors")), "no bundle unless asked"
    assert not any(k.startswith("bundle_emb") for k in load_file(str(final / "lora.safetensors")))


@pytest.mark.parametrize("method,stop_at,after", [("pivotal", 3, "freeze"), ("pivotal", 2, "freeze"), ("pivotal", 4, "continue"), ("ti", 2, "freeze")])
def test_killed_and_resumed_run_equals_straight_run(tmp_path, dataset_dir, tiny_sd15_dir, method, stop_at, after):
    def cfg(name):
        return method_config(tiny_sd15_dir, dataset_dir, tmp_path / name, tmp_path / "cache", method,
                             train={"max_steps": 5, "scheduler": "cosine"}, ti={"pivot_step": 3, "after_pivot": after} if method == "pivotal" else {})

    assert train(tmp_path, cfg("straight"), "straight").exit_code == 0
    resumed = cfg("resumed")
    resumed["train"]["debug_stop_after_step"] = stop_at
    assert train(tmp_path, resumed, "resumed").exit_code == 130
    del resumed["train"]["debug_stop_after_step"]
    second = train(tmp_path, resumed, "resumed", "--resume", "auto")
    assert second.exit_code == 0, second.output
    a, b = _state(tmp_path / "straight", 5), _state(tmp_path / "resumed", 5)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the straight run"
    assert [r["loss"] for r in read_metrics(tmp_path / "straight")] == [r["loss"] for r in read_metrics(tmp_path / "resumed")]


def test_bundle_on_request_and_one_loader_for_pairs_and_bundles(tmp_path, dataset_dir, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    from lorastudio.evaluation.loading import apply_loras, lora_specs

    run = tmp_path / "run"
    cfg = method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "pivotal", ti={"bundle": True, "pivot_step": 2})
    assert train(tmp_path, cfg, "b").exit_code == 0
    final = run / "final"
    bundle = final / "lora.bundle.safetensors"
    emb_keys = [k for k in load_file(str(bundle)) if k.startswith("bundle_emb")]
    assert emb_keys and all(re.match(rf"^bundle_emb\.{TRIGGER}\.(emb_params|clip_l|clip_g|string_to_param\.\*)$", k) for k in emb_keys)

    plain = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None)
    plain.load_lora_weights(str(final / "lora.safetensors"))  # the default file: plain kohya, diffusers reads it
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
        StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None).load_lora_weights(str(bundle))

    for arg in (str(bundle), str(final), str(final / "lora.safetensors")):
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None)
        specs = lora_specs([arg])
        apply_loras(pipe, specs)
        assert TRIGGER in pipe.tokenizer.get_vocab() and f"{TRIGGER}_1" in pipe.tokenizer.get_vocab(), arg
        assert pipe.get_list_adapters(), arg


def test_generate_loads_a_ti_embedding_by_itself(tmp_path, dataset_dir, tiny_sd15_dir):
    run = tmp_path / "run"
    sample = {"at_start": True, "every_n_steps": 2, "steps": 2, "prompts": [{"prompt": f"{TRIGGER}, a photo of food", "width": 32, "height": 32}]}
    trained = train(tmp_path, method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "ti", train={"max_steps": 2}, sample=sample), "t")
    assert trained.exit_code == 0, trained.output
    assert (run / "samples" / "step_2").is_dir() and (run / "samples" / "step_0").is_dir()  # samples use the live vectors
    out = tmp_path / "img"
    result = run_cli(["generate", "--model", str(tiny_sd15_dir), "--prompt", f"{TRIGGER}, a photo of food", "--lora", str(run / "final"),
                      "--steps", "2", "--size", "32x32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert list(out.glob("*.png"))


def test_nan_step_is_skipped_without_touching_the_vectors(tmp_path, dataset_dir, tiny_sd15_dir):
    run = tmp_path / "run"
    cfg = method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "ti",
                        train={"max_steps": 3, "debug_nan_at_steps": [2]}, save={"every_n_steps": 1, "keep_last": 5})
    result = train(tmp_path, cfg, "nan")
    assert result.exit_code == 0, result.output
    assert "non-finite loss or gradient norm, update skipped" in result.output
    assert torch.equal(_state(run, 1)["embedding_0"], _state(run, 2)["embedding_0"])
    assert not torch.equal(_state(run, 2)["embedding_0"], _state(run, 3)["embedding_0"])
    assert read_metrics(run)[-1]["skipped_steps"] == 1


def test_sample_grid_loads_each_checkpoints_embedding(tmp_path, dataset_dir, tiny_sd15_dir):
    import json

    run = tmp_path / "run"
    cfg = method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "pivotal", train={"max_steps": 2},
                        save={"every_n_steps": 1, "keep_last": 5},
                        sample={"prompts": [{"prompt": f"{TRIGGER}, a photo of food", "width": 32, "height": 32}]})
    assert train(tmp_path, cfg, "s").exit_code == 0
    out = tmp_path / "grid"
    result = run_cli(["sample", str(run), "--scales", "0,1", "--steps", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert [c["label"] for c in index["checkpoints"]] == ["step_1", "step_2", "final"]
    assert len(index["cells"]) == 4


def test_sdxl_pivotal_writes_clip_l_and_clip_g_and_loads(tmp_path, dataset_dir, tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    from lorastudio.evaluation.loading import apply_loras, lora_specs

    run = tmp_path / "run"
    cfg = method_config(tiny_sdxl_dir, dataset_dir, run, tmp_path / "cache", "pivotal", family="sdxl", train={"max_steps": 2})
    result = train(tmp_path, cfg, "xl")
    assert result.exit_code == 0, result.output
    emb = load_file(str(run / "final" / f"{TRIGGER}.safetensors"))
    assert sorted(emb) == ["clip_g", "clip_l"] and emb["clip_l"].shape == (2, 32) and emb["clip_g"].shape == (2, 32)
    assert sorted(p.name for p in (run / "final" / "diffusers").glob("learned_embeds*")) == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))
    apply_loras(pipe, lora_specs([str(run / "final")]))
    n = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[n - 2:], emb["clip_l"])
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[n - 2:], emb["clip_g"])


def test_continue_keeps_training_the_vectors_at_their_own_lr(tmp_path, dataset_dir, tiny_sd15_dir):
    run = tmp_path / "run"
    cfg = method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "pivotal", train={"max_steps": 4},
                        ti={"pivot_step": 2, "after_pivot": "continue", "continue_lr": 1e-3}, save={"every_n_steps": 1, "keep_last": 5})
    result = train(tmp_path, cfg, "c")
    assert result.exit_code == 0, result.output
    assert "pivot, LoRA training starts; trigger vectors continue" in result.output
    assert not torch.equal(_state(run, 2)["embedding_0"], _state(run, 4)["embedding_0"])
    import json

    sched = json.loads((run / "checkpoints" / "step_4" / "trainer_state" / "scheduler.json").read_text())
    assert sched["base_lrs"][-1] == 1e-3


def test_enhance_loads_a_pivotal_pair_by_itself(tmp_path, dataset_dir, tiny_sd15_dir):
    import numpy as np
    from PIL import Image

    run = tmp_path / "run"
    assert train(tmp_path, method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "pivotal", train={"max_steps": 2}), "e").exit_code == 0
    photo = tmp_path / "dish.png"
    Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(photo)
    result = run_cli(["enhance", str(photo), "--model", str(tiny_sd15_dir), "--lora", str(run / "final" / "lora.safetensors"),
                      "--prompt", f"{TRIGGER}, a photo of food", "--steps", "4", "--strength", "0.5", "--resolution", "64", "--no-progress",
                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "dish.png").is_file()
