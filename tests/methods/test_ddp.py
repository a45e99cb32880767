"""Two-process DDP for the methods: the same global batch split over two processes trains the
same weights as one process (TI vectors and pivotal LoRA across the pivot; DreamBooth's UNet
and text encoder), as tests/training's LoRA DDP test checks for plain LoRA."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from method_helpers import method_config, train, write_config
from safetensors.torch import load_file


def _state(run, step):
    return load_file(str(run / "checkpoints" / f"step_{step}" / "trainer_state" / "adapter.safetensors"))


def _config(tiny, ds, tmp_path, method, name):
    sections = {"train": {"max_steps": 4, "batch_size": 2}, "save": {"every_n_steps": 2, "keep_last": 2}}
    if method == "pivotal":
        sections["ti"] = {"pivot_step": 2, "after_pivot": "continue", "continue_lr": 1e-2}
    else:
        sections["train"]["lr"] = 1e-3
        sections["dreambooth"] = {"class_prompt": "a photo of food", "num_class_images": 2, "class_size": 32, "class_steps": 2,
                                  "single_file": False, "export_dtype": "float32", "train_text_encoder": True}
    return method_config(tiny, ds, tmp_path / name, tmp_path / "cache", method, **sections)


@pytest.mark.parametrize("method", ["pivotal", "dreambooth"])
def test_two_process_ddp_matches_one_process(tmp_path, dataset_dir, tiny_sd15_dir, method):
    single = train(tmp_path, _config(tiny_sd15_dir, dataset_dir, tmp_path, method, "single"), "single")
    assert single.exit_code == 0, single.output

    ddp = _config(tiny_sd15_dir, dataset_dir, tmp_path, method, "ddp")
    ddp["train"]["batch_size"] = 1  # per process: the same global batch of 2
    cmd = [sys.executable, "-m", "lorastudio", "train", str(write_config(tmp_path / "ddp.yaml", ddp)), "--num-processes", "2",
           "--no-progress", "--skip-audit"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    a, b = _state(tmp_path / "single", 4), _state(tmp_path / "ddp", 4)
    before = _state(tmp_path / "single", 2)  # pivotal: the pivot (vectors trained, LoRA B still zero)
    assert a.keys() == b.keys() == before.keys()
    if method == "pivotal":
        groups = {"vectors": ["embedding_0"], "lora": [k for k in a if "lora_B" in k]}
    else:
        groups = {"unet": [k for k in a if k.startswith("unet.")], "text encoder": [k for k in a if k.startswith("text_encoder_0.")]}
    for group, keys in groups.items():
        assert keys, group
        learned = sum(float((a[k] - before[k]).square().sum()) for k in keys) ** 0.5
        gap = sum(float((a[k] - b[k]).square().sum()) for k in keys) ** 0.5
        # Only the order of float sums differs between the runs; without the all-reduce each
        # process would have stepped on half the batch and the gap would be of the size learned.
        # (L2 over the group: a bias ahead of a GroupNorm has a gradient of rounding noise, which
        # AdamW turns into steps of size lr in either direction, in one process as in two.)
        assert learned > 1e-4, f"{group} did not train in steps 3-4"
        assert gap <= learned * 1e-2, f"{group}: DDP differs from one process by {gap} (L2; steps 3-4 moved it {learned})"
