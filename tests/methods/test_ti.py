"""Textual inversion: only the new rows train, files load in diffusers, triggers are checked."""

from __future__ import annotations

import torch
from method_helpers import TRIGGER, method_config, train
from safetensors.torch import load_file


def test_ti_trains_only_new_rows_and_round_trips_through_diffusers(tmp_path, dataset_dir, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    run = tmp_path / "run"
    cfg = method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "ti", train={"max_steps": 6})
    result = train(tmp_path, cfg, "ti")
    assert result.exit_code == 0, result.output
    assert "latent cache: 4 computed" in result.output and "text cache:" not in result.output  # latents cached, text live
    final = run / "final"
    emb = load_file(str(final / f"{TRIGGER}.safetensors"))
    assert list(emb) == ["emb_params"] and emb["emb_params"].shape == (2, 32)

    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None)
    table = base.text_encoder.get_input_embeddings().weight.detach().clone()
    init = table[base.tokenizer("food", add_special_tokens=False).input_ids[0]]
    assert not torch.equal(emb["emb_params"][0], init), "the vectors did not train"

    state = load_file(str(run / "checkpoints" / "step_6" / "trainer_state" / "adapter.safetensors"))
    assert sorted(state) == ["embedding_0"], "only the [N, D] vectors are trainable state"
    opt = load_file(str(run / "checkpoints" / "step_6" / "trainer_state" / "optimizer.safetensors"))
    assert all(t.numel() <= 2 * 32 for t in opt.values()), "optimizer state covers more than the new rows"

    # diffusers' own loader, named after the file; the prompt expands to the N tokens.
    base.load_textual_inversion(str(final / f"{TRIGGER}.safetensors"), token=TRIGGER)
    assert base.maybe_convert_prompt(f"{TRIGGER}, a photo", base.tokenizer) == f"{TRIGGER} {TRIGGER}_1, a photo"
    loaded = base.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(loaded[: table.shape[0]], table), "a base row changed"
    assert torch.equal(loaded[table.shape[0]:], emb["emb_params"])
    # diffusers' own TI file loads by folder with no arguments.
    fresh = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None)
    fresh.load_textual_inversion(str(final / "diffusers"))
    assert TRIGGER in fresh.tokenizer.get_vocab()
    assert (final / "README.md").read_text().count(f"embedding:{TRIGGER}") == 1


def _parts(model_dir, family):
    from lorastudio.config.train import ModelSection
    from lorastudio.models.families import get_family, load_text_parts

    fam = get_family(family)
    encoders, tokenizers = load_text_parts(fam, ModelSection(family=family, path=str(model_dir)))
    return fam, encoders, tokenizers


def test_twenty_steps_change_only_the_new_rows(tiny_sd15_dir):
    from lorastudio.models.embeddings import add_trigger, init_rows

    fam, (encoder,), (tokenizer,) = _parts(tiny_sd15_dir, "sd15")
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    rows = init_rows(encoder, tokenizer, "food dish", 3, torch.Generator().manual_seed(0))
    assert torch.equal(rows[0], rows[2]), "multi-word init repeats the words' rows to N"
    param = add_trigger(encoder, tokenizer, TRIGGER, rows)
    start = param.detach().clone()
    opt = torch.optim.AdamW([param], lr=1e-2)
    assert [p.shape for g in opt.param_groups for p in g["params"]] == [(3, 32)]
    for _ in range(20):
        cond = fam.encode_captions([encoder], [tokenizer], [f"{TRIGGER} {TRIGGER}_1 {TRIGGER}_2, a photo of food"])
        cond["hidden"].pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    after = dict(encoder.named_parameters())
    for name, value in before.items():
        key = "text_model.embeddings.token_embedding.base.weight" if name.endswith("token_embedding.weight") else name
        key = key if key in after else name.replace("token_embedding.weight", "token_embedding.base.weight")
        assert torch.equal(after[key], value), f"base parameter {name} changed"
    assert not torch.equal(param, start) and all(not torch.equal(param[i], start[i]) for i in range(3))


def test_in_memory_vectors_equal_what_diffusers_loads_sdxl(tmp_path, tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    from lorastudio.evaluation.loading import load_embeddings_file
    from lorastudio.models.embeddings import add_trigger, expand_trigger, init_rows, write_embedding

    fam, encoders, tokenizers = _parts(tiny_sdxl_dir, "sdxl")
    gen = torch.Generator().manual_seed(1)
    vectors = [add_trigger(e, t, TRIGGER, init_rows(e, t, "random", 2, gen)) for e, t in zip(encoders, tokenizers)]
    path = write_embedding(tmp_path / f"{TRIGGER}.safetensors", "sdxl", vectors)
    assert sorted(load_file(str(path))) == ["clip_g", "clip_l"]
    prompt = f"{TRIGGER}, a photo of food"
    with torch.no_grad():
        ours = fam.encode_captions(encoders, tokenizers, [expand_trigger(prompt, TRIGGER, 2)])
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir))
    load_embeddings_file(pipe, path)
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        assert pipe.maybe_convert_prompt(prompt, tok) == f"{TRIGGER} {TRIGGER}_1, a photo of food"
    with torch.no_grad():
        hidden, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    assert torch.equal(hidden, ours["hidden"]) and torch.equal(pooled, ours["pooled"])
