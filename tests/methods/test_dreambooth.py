"""DreamBooth-lite on the tiny model: class images, prior loss, exports, exact resume."""

from __future__ import annotations

import hashlib

import torch
from method_helpers import make_dataset, method_config, train
from safetensors.torch import load_file


def _db(tiny, ds, tmp_path, name, **sections):
    db = {"class_prompt": "a photo of food", "num_class_images": 3, "class_size": 32, "class_steps": 2, "single_file": True, "export_dtype": "float32"}
    train_section = {"max_steps": 3, "lr": 1e-4, **sections.pop("train", {})}
    return method_config(tiny, ds, tmp_path / name, tmp_path / "cache", "dreambooth",
                         train=train_section, dreambooth={**db, **sections.pop("dreambooth", {})}, **sections)


def _hashes(store):
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in store.glob("*.png"))


def test_class_images_are_deterministic_reused_and_user_images_count(tmp_path, dataset_dir, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    first = train(tmp_path, _db(tiny_sd15_dir, dataset_dir, tmp_path, "a"), "a")
    assert first.exit_code == 0, first.output
    assert "0 reused, 3 generated" in first.output and "reg_images" in first.output
    store = tmp_path / "cache" / "class_images"
    made = _hashes(store)
    assert len(made) == 3
    second = train(tmp_path, _db(tiny_sd15_dir, dataset_dir, tmp_path, "b"), "b")
    assert "3 reused, 0 generated" in second.output
    # Generated from scratch elsewhere: the same bytes (seed per image).
    cfg = _db(tiny_sd15_dir, dataset_dir, tmp_path, "c", train={"cache_dir": str(tmp_path / "cache2")})
    assert train(tmp_path, cfg, "c").exit_code == 0
    assert _hashes(tmp_path / "cache2" / "class_images") == made
    # Two user regularization images count: only one more is needed, and it is image 0's.
    reg = make_dataset(tmp_path / "reg", [(32, 32)] * 2, captions=["a photo of food"] * 2, seed=5)
    cfg = _db(tiny_sd15_dir, dataset_dir, tmp_path, "d", data={"regularization": str(reg), "prior_loss_weight": 0.5})
    result = train(tmp_path, cfg, "d")
    assert "2 from data.regularization, 1 reused, 0 generated" in result.output

    final = tmp_path / "a" / "final"
    tuned = StableDiffusionPipeline.from_pretrained(str(final / "model"), safety_checker=None)
    single = StableDiffusionPipeline.from_single_file(str(final / "model.safetensors"), config=str(tiny_sd15_dir), local_files_only=True)
    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None)
    a, b, c = tuned.unet.state_dict(), single.unet.state_dict(), base.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the single file differs from the diffusers folder"
    assert any(not torch.equal(a[k], c[k]) for k in a), "the UNet did not train"


def test_dreambooth_resume_equals_straight_run(tmp_path, dataset_dir, tiny_sd15_dir):
    def cfg(name):
        return _db(tiny_sd15_dir, dataset_dir, tmp_path, name, train={"max_steps": 4}, dreambooth={"single_file": False})

    assert train(tmp_path, cfg("straight"), "s").exit_code == 0
    resumed = cfg("resumed")
    resumed["train"]["debug_stop_after_step"] = 2
    assert train(tmp_path, resumed, "r").exit_code == 130
    del resumed["train"]["debug_stop_after_step"]
    assert train(tmp_path, resumed, "r", "--resume", "auto").exit_code == 0
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_4" / "trainer_state" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step_4" / "trainer_state" / "adapter.safetensors"))
    assert len(a) > 100 and all(torch.equal(a[k], b[k]) for k in a)


def test_dreambooth_with_text_encoder_exports_the_trained_encoder(tmp_path, dataset_dir, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    cfg = _db(tiny_sd15_dir, dataset_dir, tmp_path, "te", dreambooth={"num_class_images": 0, "train_text_encoder": True, "text_encoder_lr": 1e-3})
    result = train(tmp_path, cfg, "te")
    assert result.exit_code == 0, result.output
    final = tmp_path / "te" / "final"
    tuned = StableDiffusionPipeline.from_single_file(str(final / "model.safetensors"), config=str(tiny_sd15_dir), local_files_only=True)
    folder = StableDiffusionPipeline.from_pretrained(str(final / "model"), safety_checker=None)
    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), safety_checker=None)
    a, b, c = tuned.text_encoder.state_dict(), folder.text_encoder.state_dict(), base.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert any(not torch.equal(b[k], c[k]) for k in b), "the text encoder did not train"
    assert "method: dreambooth" in (final / "README.md").read_text()
