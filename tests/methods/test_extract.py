"""`lorastudio extract-lora`: a known rank-r change comes back below 1e-5 relative error."""

from __future__ import annotations

import shutil

import torch
from method_helpers import run_cli

from lorastudio.models.lora import read_lora
from lorastudio.models.tiny import pipeline_class


def test_extract_recovers_a_known_low_rank_delta(tmp_path, tiny_sd15_dir):
    base = pipeline_class("sd15").from_pretrained(str(tiny_sd15_dir))
    tuned = pipeline_class("sd15").from_pretrained(str(tiny_sd15_dir))
    gen = torch.Generator().manual_seed(0)
    targets = {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": None, "up_blocks.0.resnets.0.conv1": None}
    modules = dict(tuned.unet.named_modules())
    with torch.no_grad():
        for name in targets:
            w = modules[name].weight
            flat = w.flatten(1)
            delta = torch.randn(flat.shape[0], 2, generator=gen) @ torch.randn(2, flat.shape[1], generator=gen) * 0.05
            targets[name] = delta
            w.add_(delta.reshape(w.shape))
    tuned_dir = tmp_path / "tuned"
    tuned.save_pretrained(str(tuned_dir))
    for sub in ("tokenizer",):
        shutil.copytree(tiny_sd15_dir / sub, tuned_dir / sub, dirs_exist_ok=True)
    out = tmp_path / "extracted.safetensors"
    result = run_cli(["extract-lora", str(tiny_sd15_dir), str(tuned_dir), "--rank", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "text_encoder: unchanged, skipped" in result.output
    lora = read_lora(out)
    assert lora.format == "kohya-locon" and {m.path for m in lora.modules} == set(targets)  # a 3x3 conv makes it LoCon
    for m in lora.modules:
        want = targets[m.path]
        error = ((m.delta() - want).norm() / want.norm()).item()
        assert error < 1e-5, f"{m.path}: relative error {error}"

    from lorastudio.evaluation.loading import apply_loras, lora_specs

    apply_loras(base, lora_specs([str(out)]))
    assert base.get_list_adapters()
