"""Fixtures for the evaluation tests: random visible LoRAs, a real short training run, a tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval_helpers import TRIGGER, make_dataset, make_random_lora, run_cli


@pytest.fixture(scope="session")
def loras_sd15(tiny_sd15_dir, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Two different random SD1.5 LoRAs ("a", "b"), each in kohya and diffusers format."""
    root = tmp_path_factory.mktemp("loras")
    return {name: make_random_lora(tiny_sd15_dir, root / name, seed=seed) for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="session")
def run_dir(tiny_sd15_dir, tmp_path_factory) -> Path:
    """A real `lorastudio train` run: 4 steps, checkpoints at 2 and 4, samples at 0 and 4."""
    import torch

    root = tmp_path_factory.mktemp("train")
    dataset = make_dataset(root / "ds")
    sample = {"at_start": True, "every_n_steps": 4, "width": 64, "height": 64, "steps": 2, "cfg": 5.0,
              "prompts": [{"prompt": f"{TRIGGER}, a photo of bibimbap", "seed": 1},
                          {"prompt": f"{TRIGGER}, a photo of kimchi stew", "seed": 2}]}
    cfg = {
        "model": {"family": "sd15", "path": str(tiny_sd15_dir)},
        "data": {"datasets": [str(dataset)]},
        "network": {"rank": 4, "alpha": 4.0, "targets": "attn"},
        "train": {"max_steps": 4, "batch_size": 2, "lr": 5e-2, "seed": 0, "cache": "memory"},
        "sample": sample,
        "save": {"every_n_steps": 2, "keep_last": 3},
        "output_dir": str(root / "run"),
        "logging": {"every_n_steps": 1, "tensorboard": False},
    }
    config = root / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The dataset leaves its black background uncaptioned on purpose (evaluate measures
        # that leak), so the audit gate would rightly refuse it.
        result = run_cli(["train", str(config), "--no-progress", "--skip-audit"])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPModel + processor saved as a folder (the shipped offline tokenizer)."""
    import json

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from lorastudio.models.tiny import tokenizer_files_dir

    out = tmp_path_factory.mktemp("clip") / "clip"
    vocab = json.loads((tokenizer_files_dir() / "vocab.json").read_text(encoding="utf-8"))
    eos = vocab["<|endoftext|>"]
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(processor, CLIPTokenizer.from_pretrained(str(tokenizer_files_dir()))).save_pretrained(out)
    return out
