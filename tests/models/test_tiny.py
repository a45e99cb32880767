"""Tiny real pipelines and the shipped offline CLIP tokenizer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from lorastudio.cli.main import cli
from lorastudio.models import tiny
from lorastudio.models.tokenizer import load_tokenizer, tokenizer_files_dir, write_tokenizer


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- tokenizer -------------------------------------------------------------------------------


def test_shipped_tokenizer_is_small_clip_style_with_specials_last():
    tok = load_tokenizer()
    vocab = json.loads((tokenizer_files_dir() / "vocab.json").read_text(encoding="utf-8"))
    assert 512 < len(tok) == len(vocab) <= 4096
    assert tok.bos_token == "<|startoftext|>" and tok.bos_token_id == len(vocab) - 2
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == len(vocab) - 1
    assert tok.model_max_length == 77
    # CLIP's id order: the 256 byte symbols (printable first), then the same with "</w>".
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["Ā"] == 188
    assert (tokenizer_files_dir() / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    # Common corpus words are whole tokens, as in a real CLIP vocabulary.
    ids = tok("a photo of chicken").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "chicken</w>",
                                               "<|endoftext|>"]


@pytest.mark.parametrize("text", ["supercalifragilistic xylophone", "gochujang, 123 zzz", "café naïve"])
def test_tokenizer_spells_any_word_through_bytes(text):
    tok = load_tokenizer()
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_tokenizer_regeneration_matches_shipped_files(tmp_path):
    out = write_tokenizer(tmp_path / "tok")
    for name in ("vocab.json", "merges.txt"):
        assert (out / name).read_bytes() == (tokenizer_files_dir() / name).read_bytes(), name


# --- configs ---------------------------------------------------------------------------------


def test_sdxl_config_is_self_consistent():
    cfg = tiny.component_configs("sdxl")
    te1, te2, unet = cfg["text_encoder"], cfg["text_encoder_2"], cfg["unet"]
    assert unet["addition_embed_type"] == "text_time"
    assert unet["cross_attention_dim"] == te1["hidden_size"] + te2["hidden_size"]
    assert unet["projection_class_embeddings_input_dim"] == te2["projection_dim"] + 6 * unet["addition_time_embed_dim"]


def test_full_sd15_has_real_dimensions_on_meta_device():
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = tiny.component_configs("sd15", "full")
    assert cfg["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["unet"]["cross_attention_dim"] == cfg["text_encoder"]["hidden_size"] == 768
    assert cfg["vae"]["block_out_channels"] == [128, 256, 512, 512] and cfg["vae"]["scaling_factor"] == 0.18215
    assert cfg["text_encoder"]["vocab_size"] == 49408 and cfg["text_encoder"]["num_hidden_layers"] == 12
    # Build on the meta device: real module graphs and parameter counts, no 4 GB allocation.
    with torch.device("meta"):
        counts = [
            sum(p.numel() for p in diffusers.UNet2DConditionModel(**cfg["unet"]).parameters()),
            sum(p.numel() for p in diffusers.AutoencoderKL(**cfg["vae"]).parameters()),
            sum(p.numel() for p in CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).parameters()),
        ]
    assert [round(c / 1e6, 1) for c in counts] == [859.5, 83.7, 123.1]
    scheduler = tiny.build_scheduler("sd15", "full")
    assert type(scheduler).__name__ == "PNDMScheduler" and scheduler.config.steps_offset == 1


@pytest.mark.parametrize(
    ("family", "size", "message"),
    [("sd3", "tiny", "unknown model family"), ("sd15", "huge", "unknown size"), ("sdxl", "full", "only available")],
)
def test_bad_choices_are_rejected(family, size, message):
    with pytest.raises(ValueError, match=message):
        tiny.component_configs(family, size)


# --- weights ---------------------------------------------------------------------------------


def test_same_seed_same_weights_different_seed_different_weights():
    a = tiny.build_components("sd15", seed=7)
    b = tiny.build_components("sd15", seed=7)
    c = tiny.build_components("sd15", seed=8)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(_state(a[name]), _state(b[name])), name
        assert not _same_weights(_state(a[name]), _state(c[name])), name


def test_building_leaves_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    tiny.build_components("sd15", seed=1)
    assert torch.equal(torch.rand(4), expected)


def test_saved_sd15_folder_loads_back_with_identical_weights(tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir)
    built = tiny.build_components("sd15", seed=0)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(_state(getattr(pipe, name)), _state(built[name])), name
    assert len(pipe.tokenizer) == len(load_tokenizer())
    info = json.loads((tiny_sd15_dir / tiny.INFO_FILE).read_text(encoding="utf-8"))
    assert info == {"family": "sd15", "size": "tiny", "seed": 0, "prediction_type": "epsilon"}


def test_saved_sdxl_folder_is_readable_by_transformers_4_and_5(tiny_sdxl_dir):
    from transformers import CLIPTextModelWithProjection

    loaded = CLIPTextModelWithProjection.from_pretrained(tiny_sdxl_dir / "text_encoder_2")
    built = tiny.build_components("sdxl", seed=0)["text_encoder_2"]
    assert _same_weights(_state(loaded), _state(built))
    for sub in ("text_encoder", "text_encoder_2"):
        with safe_open(str(tiny_sdxl_dir / sub / "model.safetensors"), framework="pt") as f:
            keys = list(f.keys())
        assert keys and all(k.startswith(("text_model.", "text_projection.")) for k in keys), sub
    for sub in ("tokenizer", "tokenizer_2"):
        for name in ("vocab.json", "merges.txt"):
            assert (tiny_sdxl_dir / sub / name).read_bytes() == (tokenizer_files_dir() / name).read_bytes()


def test_refuses_non_empty_output_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        tiny.build_tiny_pipeline("sd15", tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "user data"


# --- generation ------------------------------------------------------------------------------


def _generate(pipe, seed: int) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe("a photo of bibimbap, black background", num_inference_steps=2, height=64, width=64,
                generator=generator, output_type="np").images


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_two_step_generation_runs(family, request):
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    pipe = tiny.pipeline_class(family).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    first, again = _generate(pipe, 0), _generate(pipe, 0)
    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all() and first.std() > 0
    np.testing.assert_array_equal(first, again)
    expected_prediction = "v_prediction" if family == "sd2" else "epsilon"
    assert pipe.scheduler.config.prediction_type == expected_prediction
    assert pipe.unet.config.use_linear_projection == (family != "sd15")
    if family == "sdxl":
        assert pipe.text_encoder_2.config.projection_dim == 32


# --- CLI -------------------------------------------------------------------------------------


def test_cli_make_tiny_builds_loadable_folder_and_never_overwrites(tmp_path):
    from diffusers import StableDiffusionPipeline

    runner = CliRunner()
    out = tmp_path / "m"
    result = runner.invoke(cli, ["make-tiny", str(out), "--family", "sd2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert f"to {out}" in result.output
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    again = runner.invoke(cli, ["make-tiny", str(out), "--family", "sd2"])
    assert again.exit_code != 0 and "not empty" in again.output
    bad = runner.invoke(cli, ["make-tiny", str(tmp_path / "x"), "--family", "sdxl", "--size", "full"])
    assert bad.exit_code == 2 and "only available for --family sd15" in bad.output
    assert not (tmp_path / "x").exists()


def test_cli_help_explains_sizes():
    result = CliRunner().invoke(cli, ["make-tiny", "--help"])
    assert result.exit_code == 0
    assert "--size full" in result.output and "sd15" in result.output and "OUT_DIR" in result.output
