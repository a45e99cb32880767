"""Studio test data written straight to disk: a large dataset (the gallery test and benchmark need 1,000+
images fast) and a training job with announced progress and samples (the Run page)."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar


def synthetic_dataset(data_dir: Path, dataset_id: str, n: int, side: int = 128, seed: int = 0) -> Path:
    """`n` distinct JPEG plates under `<data>/studio/datasets/<id>/dataset`, captioned, with a manifest."""
    rng = random.Random(seed)
    home = Path(data_dir) / "studio" / "datasets" / dataset_id / "dataset"
    (home / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        image = Image.new("RGB", (side, side), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw = ImageDraw.Draw(image)
        draw.ellipse([side // 5, side // 5, side * 4 // 5, side * 4 // 5], fill=(rng.randrange(256), 90, 40))
        draw.text((4, 4), str(i), fill=(255, 255, 255))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        image_id = digest[:16]
        (home / "images" / f"{image_id}.jpg").write_bytes(data)
        caption = {"trigger": "ohwx_kfood_style", "subject": f"a photo of dish {i}", "shot": [],
                   "objective": ["on a plate"], "style": [], "unplaced": []}
        record = {"id": image_id, "file": f"images/{image_id}.jpg", "source": f"plate_{i:05d}.jpg", "sha256": digest,
                  "orig_width": side, "orig_height": side, "width": side, "height": side, "crop": [0, 0, side, side],
                  "repeats": 1, "role": "train", "flags": ["blurry"] if i % 7 == 0 else [], "caption": caption,
                  "caption_text": f"ohwx_kfood_style, a photo of dish {i}, on a plate"}
        records.append(record)
        write_sidecar(home, record)
    write_manifest(home, records)
    write_dataset_json(home, {"trigger": "ohwx_kfood_style", "count": n, "resolution": side})
    return home.parent


def train_job_with_samples(store, data: Path, owner: str = "local") -> tuple[str, str]:
    """A train job whose run wrote one sample folder, its progress announced the way the worker does."""
    from types import SimpleNamespace

    from lorastudio.serving.runners import _announce_samples

    run_id = "ab" * 16
    job, _ = store.submit("train", owner, {"run_id": run_id, "steps": 20, "lora_id": "x",
                                            "config": {"sample": {"prompts": ["a", "b"]}}})
    samples = data / "datasets" / run_id / "run" / "samples"
    (samples / "step_10").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 40, 40)).save(samples / "step_10" / "00.png")
    runner = SimpleNamespace(store=store)
    assert _announce_samples(runner, job, samples, set()) == set()  # one of two prompts written: not yet
    Image.new("RGB", (32, 32), (40, 200, 40)).save(samples / "step_10" / "01.png")
    announced = _announce_samples(runner, job, samples, set())
    assert announced == {"step_10"} and _announce_samples(runner, job, samples, announced) == announced
    for step in (1, 2):
        store.add_event(job.id, "step", {"step": step, "loss": 0.5 / step, "n": 20, "lr": 1e-3, "s_per_step": 0.5})
    return job.id, run_id


def toy_lora_bytes(out: Path, seed: int = 0) -> bytes:
    """A random, visible rank-4 adapter for the shipped toy base model, in kohya format."""
    import torch
    from diffusers import StableDiffusionPipeline

    from lorastudio.models.lora import attach_lora, export_adapter, unet_target_modules
    from lorastudio.toyworld.pretrain import shipped_base_dir

    pipe = StableDiffusionPipeline.from_pretrained(str(shipped_base_dir()))
    torch.manual_seed(seed)
    attach_lora(pipe.unet, rank=4, alpha=4.0, target_modules=unet_target_modules(pipe.unet, "attn"),
                init_lora_weights=False)
    return export_adapter(out, family="sd15", unet=pipe.unet, text_encoders=[], rank=4, alpha=4.0)["kohya"].read_bytes()


def finished_run_with_checkpoints(store, data: Path, lora: bytes, lora_id: str = "kfood-v1") -> str:
    """A succeeded train job whose run holds complete checkpoints at steps 10 and 20, an interrupted one
    at 30, and an evaluation.json recommending step 10 at scale 0.8; returns the job id."""
    import json
    import time

    run_id = "cd" * 16
    job, _ = store.submit("train", "local", {"run_id": run_id, "lora_id": lora_id, "steps": 2})
    end = time.time() + 60
    while store.get(job.id).status != "succeeded":  # the (fake) worker runs it
        assert time.time() < end, store.get(job.id).status
        time.sleep(0.05)
    run = data / "datasets" / run_id / "run"
    for step in (10, 20, 30):
        folder = run / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / "lora.safetensors").write_bytes(lora)
        if step != 30:
            (folder / "COMPLETE.json").write_text("{}", encoding="utf-8")
    (run / "evaluation.json").write_text(json.dumps({"recommendation": {
        "checkpoint": "step_10", "step": 10, "file": "checkpoints/step_10/lora.safetensors", "scale": 0.8,
        "reason": "best style gain without leak"}}), encoding="utf-8")
    return job.id


def trained_run(store, data: Path, photos: Path, lora_id: str = "kfood-real", run_id: str = "ef" * 16,
                steps: int = 4, seed: int = 0) -> str:
    """A succeeded train job whose run folder holds a real `steps`-step `lorastudio train` run of the
    shipped toy model on `photos` (a checkpoint every 2 steps, then final/), laid out as the worker
    lays it out; returns the job id."""
    import time

    import yaml
    from click.testing import CliRunner

    from lorastudio.cli.main import cli
    from lorastudio.toyworld.pretrain import shipped_base_dir

    job, _ = store.submit("train", "local", {"run_id": run_id, "lora_id": lora_id, "steps": steps})
    end = time.time() + 60
    while store.get(job.id).status != "succeeded":  # the (fake) worker marks it done; the run is real
        assert time.time() < end, store.get(job.id).status
        time.sleep(0.05)
    root = data / "datasets" / run_id
    runner = CliRunner()
    for argv in (["prepare", str(photos), "--out", str(root / "dataset"), "--resolution", "64", "--square", "--min-side", "16",
                  "--quiet"],
                 ["caption", str(root / "dataset"), "--backend", "manual", "--trigger", "ohwx_kfood_style", "--quiet"]):
        result = runner.invoke(cli, argv, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    config = {"model": {"family": "sd15", "path": str(shipped_base_dir())},
              "data": {"datasets": [str(root / "dataset")]},
              "network": {"rank": 4, "alpha": 4.0, "targets": "attn"},
              "train": {"max_steps": steps, "batch_size": 2, "lr": 5e-2, "seed": seed, "cache": "memory"},
              "sample": {"at_start": False, "prompts": []},
              "save": {"every_n_steps": 2, "keep_last": steps // 2 + 1}, "output_dir": str(root / "run"),
              "logging": {"every_n_steps": 1, "tensorboard": False}}
    (root / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    result = runner.invoke(cli, ["train", str(root / "train.yaml"), "--no-progress", "--skip-audit"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return job.id
