"""Known-harmless dependency messages are gone from real commands; real ones stay."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from lora_helpers import attach_random, load_pipe, text_encoders

from lorastudio import known_warnings
from lorastudio.models import lora


def test_two_loras_with_text_encoder_weights_print_no_misleading_warning(tiny_sd15_dir, tmp_path):
    files = []
    for seed in (1, 2):
        pipe = load_pipe("sd15", tiny_sd15_dir)
        attach_random(pipe, targets="attn", seed=seed)
        files.append(lora.export_adapter(tmp_path / f"l{seed}", family="sd15", unet=pipe.unet,
                                         text_encoders=text_encoders(pipe), rank=4, alpha=8.0)["kohya"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lorastudio", "generate", "--model", str(tiny_sd15_dir), "--lora", str(files[0]),
         "--lora", f"{files[1]}:0.5", "--prompt", "a photo", "--steps", "1", "--size", "64x64",
         "--out", str(tmp_path / "out"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert "torchvision" not in printed
    assert "MISSING" not in printed and "LOAD REPORT" not in printed
    assert "peft_config" not in printed
    assert "1 image(s)" in printed and (tmp_path / "out" / "000-seed0.png").is_file()


def _report(rows: list[str]) -> logging.LogRecord:
    table = "Key | Status | \n----+----\n" + "\n".join(rows) + "\n\nNotes:\n- MISSING: newly initialized"
    return logging.LogRecord("transformers.integrations.peft", logging.WARNING, __file__, 1,
                             "CLIPTextModel LOAD REPORT from: None\n" + table, None, None)


def test_only_the_earlier_adapters_missing_rows_are_dropped():
    keep = known_warnings._DropEarlierAdapterReport(["lora0_a"])
    earlier = "encoder.layers.{0, 1}.self_attn.q_proj.lora_A.lora0_a.weight | MISSING | "
    assert keep.filter(_report([earlier])) is False
    # A missing row of the adapter being loaded, or any other status, is a real problem: kept.
    assert keep.filter(_report([earlier, "encoder.layers.0.self_attn.q_proj.lora_A.lora1_b.weight | MISSING | "]))
    assert keep.filter(_report(["encoder.layers.0.self_attn.q_proj.lora_A.lora0_a.weight | MISMATCH | "]))
    assert known_warnings._DropEarlierAdapterReport([]).filter(_report([earlier]))
