"""Trigger validation before any model loads, config rules, and the prefix warning."""

from __future__ import annotations

import shutil

import pytest
from method_helpers import TRIGGER, make_dataset, method_config, train

from lorastudio.config.loader import ConfigError, load_config
from lorastudio.config.train import TrainConfig


def test_a_trigger_in_the_vocabulary_is_refused_before_weights_load(tmp_path, dataset_dir, tiny_sd15_dir):
    # No UNet weights: a run that got as far as loading the model would fail differently.
    model = tmp_path / "model"
    shutil.copytree(tiny_sd15_dir, model)
    for weights in (model / "unet").glob("*.safetensors"):
        weights.unlink()
    cfg = method_config(model, dataset_dir, tmp_path / "run", tmp_path / "cache", "ti", ti={"trigger": "food", "num_vectors": 1})
    result = train(tmp_path, cfg, "vocab")
    assert result.exit_code != 0
    assert "'food' is already in the tokenizer's vocabulary" in result.output
    cfg["ti"].update(trigger="photo_new", num_vectors=1)
    result = train(tmp_path, cfg, "nocap")
    assert "appears in no training caption" in result.output


def test_prefix_words_are_warned_about(tmp_path, tiny_sd15_dir):
    ds = make_dataset(tmp_path / "ds", [(32, 32)] * 2, captions=[f"{TRIGGER}, a photo of food", f"{TRIGGER}_extra, a photo of rice"])
    cfg = method_config(tiny_sd15_dir, ds, tmp_path / "run", tmp_path / "cache", "ti", train={"max_steps": 1, "batch_size": 1})
    result = train(tmp_path, cfg, "prefix")
    assert result.exit_code == 0, result.output
    assert f"caption words start with the trigger ({TRIGGER}_extra)" in result.output
    assert "1 of 2 captions lack the trigger" in result.output


@pytest.mark.parametrize("override,message", [
    (["train.method=ti"], "needs ti.trigger"),
    (["train.method=ti", "ti.trigger=ohwx_x"], "needs ti.init"),
    (["train.method=ti", "ti.trigger=Bad Word"], "lowercase letters"),
    (["train.method=pivotal", "ti.trigger=ohwx_x", "ti.init=food", "network.train_text_encoder=true"], "must be false"),
    (["train.method=dreambooth", "dreambooth.num_class_images=4"], "needs dreambooth.class_prompt"),
])
def test_method_config_rules(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, path, override)


def test_inspect_shows_the_method_and_the_prompt_word(tmp_path, dataset_dir, tiny_sd15_dir):
    import json

    from method_helpers import run_cli

    run = tmp_path / "run"
    assert train(tmp_path, method_config(tiny_sd15_dir, dataset_dir, run, tmp_path / "cache", "pivotal", train={"max_steps": 2}), "i").exit_code == 0
    emb = run_cli(["inspect", str(run / "final" / f"{TRIGGER}.safetensors"), "--json"])
    info = json.loads(emb.output)
    assert info["method"] == "pivotal" and info["trigger"] == TRIGGER and info["vectors"] == {"emb_params": [2, 32]}
    assert info["prompt"]["comfyui"] == f"embedding:{TRIGGER}"
    folder = json.loads(run_cli(["inspect", str(run / "final"), "--json"]).output)
    assert folder["method"] == "pivotal" and folder["files"]["embedding"] == f"{TRIGGER}.safetensors"
    lora = run_cli(["inspect", str(run / "final" / "lora.safetensors")])
    assert "lorastudio.method: pivotal" in lora.output
