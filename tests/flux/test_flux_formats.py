"""Flux LoRA files: every writer reloaded by diffusers, by a ComfyUI port and by our reader (T6-T8)."""

from __future__ import annotations

import json

import pytest
import torch
from comfy_port import apply, bfl_shapes, diffusers_to_bfl, truth_in_bfl
from flux_helpers import attach_random_lora, peft_deltas
from safetensors.torch import load_file

from lorastudio.models import flux_formats as ff
from lorastudio.models.lora import LoraModule

RANK, ALPHA = 4, 2.0  # alpha != rank everywhere, so a lost alpha shows


def _pipe(model_dir):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(model_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _table(transformer):
    cfg = transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    return diffusers_to_bfl(cfg.num_layers, cfg.num_single_layers, hidden, hidden * 4)


def _linear_weights(transformer):
    return {n: getattr(m, "base_layer", m).weight.detach().clone() for n, m in transformer.named_modules()
            if isinstance(getattr(m, "base_layer", m), torch.nn.Linear) and not n.endswith(("lora_A.default", "lora_B.default"))}


@pytest.fixture(scope="module", params=["attn", "all_linear"])
def exported(request, tmp_path_factory, flux_dev_dir):
    """A random LoRA on the tiny dev transformer, written by every writer."""
    pipe = _pipe(flux_dev_dir)
    attach_random_lora(pipe.transformer, request.param, rank=RANK, alpha=ALPHA)
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    written = ff.export_flux_adapter(out, variant="dev", transformer=pipe.transformer, text_encoders=[], rank=RANK,
                                     alpha=ALPHA, formats=("kohya", "diffusers"), metadata={"ss_guidance_scale": "1.0"})
    return request.param, pipe.transformer, peft_deltas(pipe.transformer), written


@pytest.mark.parametrize("writer", ["diffusers", "kohya", "baked"])
def test_every_writer_gives_the_same_delta_in_comfyui(exported, writer):
    preset, transformer, truth, written = exported
    table = _table(transformer)
    shapes = bfl_shapes(transformer, table)
    lora = load_file(str(written[writer]))
    got, not_loaded = apply(lora, table, shapes)
    want = truth_in_bfl(truth, table, shapes)
    if writer == "diffusers":
        # diffusers keeps alpha in its header only, which ComfyUI does not read: it applies
        # scale 1. That is why the kohya and the alpha-baked files exist; check the factor.
        assert not_loaded == []
        for bfl in want:
            assert torch.allclose(got[bfl] * (ALPHA / RANK), want[bfl], atol=1e-5), bfl
        return
    assert not_loaded == [], f"ComfyUI would skip {not_loaded[:3]}"
    for bfl in want:
        assert torch.allclose(got[bfl], want[bfl], atol=1e-5), f"{writer} {preset}: {bfl}"
    assert not any(k.startswith(("lora_unet_final_layer", "transformer.proj_out", "transformer.norm_out")) for k in lora)


@pytest.mark.parametrize("writer", ["diffusers", "kohya", "baked"])
def test_every_writer_reloads_in_diffusers_with_the_same_delta(exported, writer, flux_dev_dir):
    preset, _, truth, written = exported
    pipe = _pipe(flux_dev_dir)
    before = _linear_weights(pipe.transformer)
    if writer == "kohya":
        # diffusers' kohya converter hard-codes FLUX.1's 19/38 blocks and 3072 width, so a
        # tiny model goes through our reader into the PEFT layout diffusers loads natively.
        modules, report, _ = ff.read_flux_file(written[writer])
        assert report.layout == "kohya" and report.modules == len(truth)
        state, config = ff.peft_state_dict(modules, bake_alpha=True)
        pipe.load_lora_weights(state, adapter_name="x")
    else:
        pipe.load_lora_weights(str(written[writer].parent), weight_name=written[writer].name, adapter_name="x")
    pipe.fuse_lora(adapter_names=["x"])
    after = _linear_weights(pipe.transformer)
    for path, delta in truth.items():
        assert torch.allclose(after[path] - before[path], delta, atol=1e-5), f"{writer} {preset}: {path}"
    untouched = [p for p in before if p not in truth and not torch.equal(before[p], after[p])]
    assert untouched == []


@pytest.mark.parametrize("writer", ["diffusers", "kohya", "baked"])
def test_our_reader_round_trips_every_writer(exported, writer):
    _, _, truth, written = exported
    modules, report, _ = ff.read_flux_file(written[writer])
    got: dict[str, torch.Tensor] = {}
    for m in modules:
        got[m.path] = got.get(m.path, 0) + m.delta()
    assert set(got) == set(truth)
    for path, delta in truth.items():
        assert torch.allclose(got[path], delta, atol=1e-5), path
    assert "every key mapped" in report.line()


def test_kohya_metadata_and_fused_alpha(exported):
    preset, transformer, _, written = exported
    lora = load_file(str(written["kohya"]))
    from safetensors import safe_open

    with safe_open(str(written["kohya"]), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["ss_base_model_version"] == "flux1" and meta["ss_network_alpha"] == str(ALPHA)
    # sd-scripts#2204: a fused q|k|v of three rank-r parts stores rank 3r and alpha 3·alpha.
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert lora[qkv + ".lora_down.weight"].shape[0] == 3 * RANK
    assert float(lora[qkv + ".alpha"]) == pytest.approx(3 * ALPHA)
    linear1 = "lora_unet_single_blocks_0_linear1"
    expected = 4 * RANK if preset == "all_linear" else 3 * RANK
    assert lora[linear1 + ".lora_down.weight"].shape[0] == expected
    assert float(lora[linear1 + ".alpha"]) == pytest.approx(expected * ALPHA / RANK)


def test_diffusers_metadata_has_float_alpha_and_loads(exported):
    _, _, _, written = exported
    from safetensors import safe_open

    with safe_open(str(written["diffusers"]), framework="pt") as fh:
        meta = fh.metadata()
        keys = list(fh.keys())
    config = json.loads(meta["lora_adapter_metadata"])
    assert isinstance(config["transformer.lora_alpha"], float) and config["transformer.lora_alpha"] == ALPHA
    assert config["transformer.r"] == RANK
    assert not any(k.endswith(".alpha") for k in keys)  # diffusers refuses alpha tensors next to metadata


def test_dense_kohya_qkv_with_rank_divisible_by_three_is_not_chunked():
    """mflux#458: a shared down (dense up) must be copied to q, k and v, never split."""
    torch.manual_seed(0)
    hidden, rank = 8, 6
    down, up = torch.randn(rank, hidden), torch.randn(3 * hidden, rank)
    modules = ff.from_bfl("double_blocks.0.img_attn.qkv", down, up, 3.0)
    assert [m.path for m in modules] == [f"transformer_blocks.0.attn.to_{x}" for x in "qkv"]
    for k, m in enumerate(modules):
        assert m.rank == rank
        assert torch.allclose(m.delta(), 0.5 * up[k * hidden:(k + 1) * hidden] @ down, atol=1e-6)


def test_final_adaln_halves_are_swapped_both_ways():
    torch.manual_seed(0)
    down, up = torch.randn(2, 8), torch.randn(16, 2)
    module = LoraModule("unet", "norm_out.linear", down, up, 2.0)
    (_, bfl, _, bfl_up, _), = ff.to_bfl_modules([module])
    assert bfl == "final_layer.adaLN_modulation.1"
    assert torch.equal(bfl_up[:8], up[8:]) and torch.equal(bfl_up[8:], up[:8])
    back = ff.from_bfl(bfl, down, bfl_up, 2.0)[0]
    assert back.path == "norm_out.linear" and torch.equal(back.up, up)


def test_bfl_named_peft_and_xlabs_files_import(exported):
    """diffusers silently drops BFL-named PEFT files; we map them (and XLabs' processor keys)."""
    _, _, truth, written = exported
    kohya = load_file(str(written["kohya"]))
    bfl_peft = {}
    for key, value in kohya.items():
        stem, _, suffix = key.partition(".")
        body = stem.removeprefix("lora_unet_")
        bfl = ff._bfl_from_kohya(body)
        new = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}[suffix]
        bfl_peft[f"diffusion_model.{bfl}.{new}"] = value
    modules, report = ff.parse_flux_lora(bfl_peft)
    assert report.layout == "bfl-peft" and {m.path for m in modules} == set(truth)

    xlabs = {"double_blocks.0.processor.qkv_lora1.down.weight": kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"],
             "double_blocks.0.processor.qkv_lora1.up.weight": kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]}
    modules, report = ff.parse_flux_lora(xlabs)
    assert report.layout == "xlabs" and sorted(m.path for m in modules) == [f"transformer_blocks.0.attn.to_{x}" for x in "kqv"]


def test_unmapped_keys_fail_loudly():
    good = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 4),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(4, 2)}
    bad = {**good, "transformer.pos_embed.lora_A.weight": torch.zeros(2, 4), "transformer.pos_embed.lora_B.weight": torch.zeros(4, 2)}
    assert len(ff.parse_flux_lora(good)[0]) == 1
    with pytest.raises(ff.FluxLoraError, match="map to no FLUX.1 module.*pos_embed"):
        ff.parse_flux_lora(bad)
    with pytest.raises(ff.FluxLoraError, match="stray"):
        ff.parse_flux_lora({**good, "stray": torch.zeros(1)})


def test_t5_keys_survive_a_kohya_round_trip_and_warn_on_diffusers_export(tmp_path):
    torch.manual_seed(0)
    t5 = LoraModule("text_encoder_2", "encoder.block.0.layer.0.SelfAttention.q", torch.randn(2, 8), torch.randn(8, 2), 1.0)
    clip = LoraModule("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", torch.randn(2, 8), torch.randn(8, 2), 1.0)
    q = LoraModule("unet", "transformer_blocks.0.attn.to_q", torch.randn(2, 8), torch.randn(8, 2), 1.0)
    modules = [q, clip, t5]
    header = ff.flux_metadata("schnell", 2, 1.0, modules, {})
    with pytest.warns(UserWarning, match="T5"):
        written = ff.write_flux_files(tmp_path, modules, formats=("kohya", "diffusers"), metadata=header)
    kohya = load_file(str(written["kohya"]))
    from safetensors import safe_open

    with safe_open(str(written["kohya"]), framework="pt") as fh:
        assert fh.metadata()["modelspec.architecture"] == "flux-1-schnell/lora"
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in kohya
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in kohya
    modules, report = ff.parse_flux_lora(kohya)
    by_path = {m.path: m for m in modules}
    assert torch.allclose(by_path[t5.path].delta(), t5.delta()) and by_path[t5.path].component == "text_encoder_2"
    assert torch.allclose(by_path[clip.path].delta(), clip.delta())
    assert report.by_component == {"transformer": 1, "text_encoder": 1, "text_encoder_2": 1}


def test_explicit_targets_never_catch_top_level_modules_by_accident(flux_dev_dir, tmp_path):
    from lorastudio.models.families import get_family

    pipe = _pipe(flux_dev_dir)
    family = get_family("flux")
    bare = family.target_modules(pipe.transformer, ["proj_out"])
    assert bare == ["single_transformer_blocks.0.proj_out", "single_transformer_blocks.1.proj_out"]
    for preset in ("attn", "all_linear"):
        names = family.target_modules(pipe.transformer, preset)
        assert not [n for n in names if "transformer_blocks." not in n]
    assert len(family.target_modules(pipe.transformer, "all_linear")) == 2 * 14 + 2 * 6
    assert len(family.target_modules(pipe.transformer, "attn")) == 2 * 12 + 2 * 3
    top = family.target_modules(pipe.transformer, [r"^proj_out$", r"^norm_out\.linear$", "x_embedder", "context_embedder"])
    assert top == ["proj_out", "norm_out.linear", "x_embedder", "context_embedder"]
    with pytest.raises(ValueError, match="matches no Linear"):
        family.target_modules(pipe.transformer, ["to_nothing"])


def test_top_level_modules_export_with_the_adaln_swap(flux_dev_dir, tmp_path):
    from lorastudio.models.lora import attach_lora

    pipe = _pipe(flux_dev_dir)
    targets = ["proj_out", "norm_out.linear", "x_embedder", "context_embedder",
               "time_text_embed.timestep_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2"]
    torch.manual_seed(0)
    attach_lora(pipe.transformer, rank=RANK, alpha=ALPHA, target_modules=targets, init_lora_weights=False)
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    truth = peft_deltas(pipe.transformer)
    written = ff.export_flux_adapter(tmp_path, variant="dev", transformer=pipe.transformer, text_encoders=[], rank=RANK,
                                     alpha=ALPHA, formats=("kohya", "diffusers"))
    kohya = load_file(str(written["kohya"]))
    assert "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight" in kohya and "lora_unet_img_in.alpha" in kohya
    table = _table(pipe.transformer)
    shapes = bfl_shapes(pipe.transformer, table)
    for writer in ("kohya", "baked"):
        got, not_loaded = apply(load_file(str(written[writer])), table, shapes)
        want = truth_in_bfl(truth, table, shapes)
        assert not_loaded == []
        for bfl in want:
            assert torch.allclose(got[bfl], want[bfl], atol=1e-5), (writer, bfl)
    modules, _, _ = ff.read_flux_file(written["kohya"])
    assert {m.path for m in modules} == set(truth)
    for m in modules:
        assert torch.allclose(m.delta(), truth[m.path], atol=1e-5), m.path


def test_onetrainer_and_prefixed_peft_files_import_with_their_alpha(exported):
    """OneTrainer `lora_transformer_*` and `transformer.base_model.model.*` PEFT keys with `.alpha` (ComfyUI#4347)."""
    _, transformer, truth, written = exported
    baked = load_file(str(written["baked"]))
    onetrainer, prefixed = {}, {}
    for key, value in baked.items():
        path, _, suffix = key.removeprefix("transformer.").rpartition(".lora_")
        stem = "lora_transformer_" + path.replace(".", "_")
        new_suffix = {"A.weight": ".lora_down.weight", "B.weight": ".lora_up.weight"}[suffix]
        # store the un-baked up and the real alpha: scale alpha / rank must come back
        onetrainer[stem + new_suffix] = value if suffix == "A.weight" else value * (RANK / ALPHA)
        onetrainer[stem + ".alpha"] = torch.tensor(ALPHA)
        prefixed[f"transformer.base_model.model.{path}.lora_{suffix}"] = onetrainer[stem + new_suffix]
        prefixed[f"transformer.base_model.model.{path}.alpha"] = torch.tensor(ALPHA)
    for state, layout in ((onetrainer, "onetrainer"), (prefixed, "diffusers")):
        modules, report = ff.parse_flux_lora(state)
        assert report.layout == layout
        got = {m.path: m.delta() for m in modules}
        assert set(got) == set(truth)
        assert all(torch.allclose(got[p], truth[p], atol=1e-5) for p in truth)
    table = _table(transformer)
    shapes = bfl_shapes(transformer, table)
    got, not_loaded = apply(onetrainer, table, shapes)
    want = truth_in_bfl(truth, table, shapes)
    assert not_loaded == [] and all(torch.allclose(got[b], want[b], atol=1e-5) for b in want)


def test_diffusers_own_kohya_converter_reads_our_fused_file_at_real_width():
    """diffusers' converter hard-codes FLUX.1's widths, so this runs on LoRA-only tensors at width 3072,
    with one part of a fused qkv at another alpha (its scale is baked, alpha' = r')."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    torch.manual_seed(0)
    h, r = 3072, 2
    shapes = {"transformer_blocks.0.attn.to_q": (h, h), "transformer_blocks.0.attn.to_k": (h, h),
              "transformer_blocks.0.attn.to_v": (h, h), "transformer_blocks.0.attn.add_q_proj": (h, h),
              "transformer_blocks.0.ff.net.0.proj": (h, 4 * h), "transformer_blocks.0.norm1.linear": (h, 6 * h),
              "single_transformer_blocks.0.attn.to_q": (h, h), "single_transformer_blocks.0.attn.to_k": (h, h),
              "single_transformer_blocks.0.attn.to_v": (h, h), "single_transformer_blocks.0.proj_mlp": (h, 4 * h),
              "single_transformer_blocks.0.proj_out": (5 * h, h)}
    modules = [LoraModule("unet", p, torch.randn(r, i) * 0.1, torch.randn(o, r) * 0.1, 2.0 if p.endswith("to_k") else 1.0)
               for p, (i, o) in shapes.items()]
    converted = _convert_kohya_flux_lora_to_diffusers(ff.kohya_state_dict(modules))
    for m in modules:  # ΔW compared on random probes: full 3072-wide products are slow on a CPU
        a, b = converted[f"transformer.{m.path}.lora_A.weight"], converted[f"transformer.{m.path}.lora_B.weight"]
        probe = torch.randn(m.down.shape[1], 3)
        want = (m.alpha / m.rank) * (m.up @ (m.down @ probe))
        assert torch.allclose(b.float() @ (a.float() @ probe), want, atol=1e-5), m.path
