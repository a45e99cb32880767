"""`lorastudio generate`: several LoRAs at their own scales, both file formats, PNG metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_helpers import pixels, run_cli, sha256
from PIL import Image

from lorastudio.evaluation.loading import LoadError, parse_lora_arg, resolve_lora_file

COMMON = ["--prompt", "ohwx_kfood_style, a photo of bibimbap", "--seed", "3", "--steps", "2", "--size", "64x64", "--no-progress"]


def _generate(model, out, *loras: str) -> np.ndarray:
    args = ["generate", "--model", str(model), *COMMON, "--out", str(out)]
    for spec in loras:
        args += ["--lora", spec]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.png"))
    assert files, result.output
    return pixels(files[-1])


def test_scales_and_mixing(tiny_sd15_dir, loras_sd15, tmp_path):
    a, b = str(loras_sd15["a"]["kohya"]), str(loras_sd15["b"]["diffusers"].parent)
    base = _generate(tiny_sd15_dir, tmp_path / "base")
    zero = _generate(tiny_sd15_dir, tmp_path / "zero", f"{a}:0")
    only_a = _generate(tiny_sd15_dir, tmp_path / "a", f"{a}:1.0")
    half_a = _generate(tiny_sd15_dir, tmp_path / "half", f"{a}:0.5")
    only_b = _generate(tiny_sd15_dir, tmp_path / "b", b)
    both = _generate(tiny_sd15_dir, tmp_path / "ab", f"{a}:1.0", f"{b}:1.0")
    np.testing.assert_allclose(zero, base, atol=1.0)  # scale 0 is the base model (PNG rounding only)
    for name, img in {"a": only_a, "b": only_b, "a+b": both}.items():
        assert np.abs(img - base).mean() > 2.0, name
    assert np.abs(both - only_a).mean() > 1.0 and np.abs(both - only_b).mean() > 1.0
    assert np.abs(only_a - only_b).mean() > 1.0
    # Half strength lands between the base and the full-strength image.
    assert 0 < np.abs(half_a - base).mean() < np.abs(only_a - base).mean()


def test_kohya_and_diffusers_files_of_one_lora_agree(tiny_sd15_dir, loras_sd15, tmp_path):
    kohya = _generate(tiny_sd15_dir, tmp_path / "k", str(loras_sd15["a"]["kohya"]))
    diffusers = _generate(tiny_sd15_dir, tmp_path / "d", str(loras_sd15["a"]["diffusers"]))
    np.testing.assert_allclose(kohya, diffusers, atol=1.0)


def test_png_metadata_and_never_overwrites(tiny_sd15_dir, loras_sd15, tmp_path):
    lora = str(loras_sd15["a"]["kohya"])
    out = tmp_path / "out"
    args = ["generate", "--model", str(tiny_sd15_dir), *COMMON, "--n", "2", "--lora", f"{lora}:0.7", "--out", str(out)]
    assert run_cli(args).exit_code == 0
    first = {p.name: sha256(p) for p in out.glob("*.png")}
    assert sorted(first) == ["000-seed3.png", "001-seed4.png"]
    assert run_cli(args).exit_code == 0
    assert len(list(out.glob("*.png"))) == 4
    assert all(sha256(out / name) == digest for name, digest in first.items())
    with Image.open(out / "001-seed4.png") as im:
        meta = json.loads(im.text["lorastudio"])
        assert "Seed: 4" in im.text["parameters"]
    assert meta["seed"] == 4 and meta["width"] == 64 and meta["steps"] == 2
    assert meta["loras"][0]["scale"] == 0.7 and meta["loras"][0]["file"] == lora
    assert meta["base_model"] == str(tiny_sd15_dir)


def test_sdxl_family_is_detected(tiny_sdxl_dir, tmp_path):
    img = _generate(tiny_sdxl_dir, tmp_path / "xl")
    assert img.shape == (64, 64, 3)
    with Image.open(next((tmp_path / "xl").glob("*.png"))) as im:
        assert json.loads(im.text["lorastudio"])["base_model"] == str(tiny_sdxl_dir)


def test_lora_argument_parsing_and_refusals(tmp_path):
    assert parse_lora_arg("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5)
    assert parse_lora_arg("C:/x/b.safetensors") == ("C:/x/b.safetensors", 1.0)
    assert parse_lora_arg("b.safetensors") == ("b.safetensors", 1.0)
    (tmp_path / "evil.ckpt").write_bytes(b"x")
    with pytest.raises(LoadError, match="pickle"):
        resolve_lora_file(tmp_path / "evil.ckpt")
    with pytest.raises(LoadError, match="no such"):
        resolve_lora_file(tmp_path / "missing.safetensors")


def test_cli_errors_name_the_problem(tiny_sd15_dir, tmp_path):
    from click.testing import CliRunner

    from lorastudio.cli.main import cli

    runner = CliRunner()
    bad = runner.invoke(cli, ["generate", "--model", str(tiny_sd15_dir), *COMMON, "--lora", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "nope.safetensors" in bad.output
    size = runner.invoke(cli, ["generate", "--model", str(tiny_sd15_dir), "--prompt", "x", "--size", "65x64", "--out", str(tmp_path)])
    assert size.exit_code != 0 and "multiples of 8" in size.output
    hub = runner.invoke(cli, ["generate", "--model", "someone/some-model", "--prompt", "x", "--out", str(tmp_path)])
    assert hub.exit_code != 0 and "--family" in hub.output
