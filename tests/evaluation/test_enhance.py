"""`lorastudio enhance`: size and orientation kept, inputs untouched, ControlNet path, edges."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_helpers import pixels, run_cli, sha256
from PIL import Image

from lorastudio.evaluation.enhance import canny_edges, working_size


def _photo(path, size=(48, 64), orientation: int | None = None):
    """A JPEG with a bright square on a dark background, optionally with an EXIF orientation."""
    img = np.full((size[1], size[0], 3), 30, dtype=np.uint8)
    img[8:24, 8:40] = (230, 180, 60)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(img).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def test_canny_edges_find_the_outline_only():
    img = np.zeros((40, 40), dtype=np.uint8)
    img[10:30, 10:30] = 200
    edges = canny_edges(Image.fromarray(img))
    assert edges.dtype == np.uint8 and set(np.unique(edges)) <= {0, 255}
    assert edges[20, 9:12].any() and edges[9:12, 20].any()  # the square's left and top sides
    assert not edges[18:22, 18:22].any() and not edges[0:4, 0:4].any()  # flat regions stay empty
    assert edges[20, :].sum() // 255 <= 4  # thin lines: NMS keeps about one pixel per side
    assert not canny_edges(Image.new("L", (16, 16), 128)).any()


def test_working_size_keeps_aspect_in_multiples_of_8():
    assert working_size(4000, 3000, 512) == (592, 440)
    w, h = working_size(3000, 4000, 512)
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - 0.75) < 0.02


def test_enhance_keeps_size_orientation_and_never_touches_inputs(tiny_sd15_dir, loras_sd15, tmp_path):
    upright = _photo(tmp_path / "plain.jpg", size=(64, 48))
    rotated = _photo(tmp_path / "rotated.jpg", size=(48, 64), orientation=6)  # displayed as 64x48
    before = {p: sha256(p) for p in (upright, rotated)}
    mtimes = {p: p.stat().st_mtime_ns for p in before}
    out = tmp_path / "out"
    args = ["enhance", str(upright), str(rotated), "--model", str(tiny_sd15_dir), "--lora", f"{loras_sd15['a']['kohya']}:0.8",
            "--strength", "0.5", "--steps", "4", "--resolution", "64", "--out", str(out), "--no-progress"]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    assert all(sha256(p) == digest and p.stat().st_mtime_ns == mtimes[p] for p, digest in before.items())
    for name in ("plain", "rotated"):
        with Image.open(out / f"{name}.png") as im:
            assert im.size == (64, 48)
            meta = json.loads(im.text["lorastudio"])
        assert meta["strength"] == 0.5 and meta["source"].endswith(f"{name}.jpg")
        with Image.open(out / f"{name}-before-after.png") as pair:
            assert pair.size == (128, 48)
    # Orientation 6 displays the stored top rows on the right: the bright square (stored rows
    # 8-23) must sit in displayed columns 40-55 of the "before" half.
    pair = pixels(out / "rotated-before-after.png")
    assert pair[:, 40:56, :].mean() > pair[:, :16, :].mean() + 40
    assert np.abs(pixels(out / "plain.png") - pixels(upright)).mean() > 1.0  # it was restyled
    assert run_cli(args).exit_code == 0  # a second run adds files, never replaces them
    assert (out / "plain-1.png").is_file() and (out / "rotated-before-after-1.png").is_file()


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_sd15_dir, tmp_path_factory):
    from lorastudio.models.tiny import save_tiny_controlnet

    return save_tiny_controlnet(tiny_sd15_dir, tmp_path_factory.mktemp("controlnet") / "canny")


def test_enhance_with_canny_controlnet(tiny_sd15_dir, loras_sd15, tiny_controlnet, tmp_path):
    photo = _photo(tmp_path / "dish.jpg", size=(64, 64))
    common = [str(photo), "--model", str(tiny_sd15_dir), "--lora", str(loras_sd15["a"]["kohya"]), "--strength", "0.5",
              "--steps", "4", "--resolution", "64", "--no-progress"]
    result = run_cli(["enhance", *common, "--control", "canny", "--controlnet", str(tiny_controlnet), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    edges = pixels(tmp_path / "c" / "dish-edges.png")
    assert edges.max() == 255 and edges.mean() < 128
    assert run_cli(["enhance", *common, "--out", str(tmp_path / "n")]).exit_code == 0
    controlled, plain = pixels(tmp_path / "c" / "dish.png"), pixels(tmp_path / "n" / "dish.png")
    assert controlled.shape == plain.shape == (64, 64, 3)
    assert np.abs(controlled - plain).mean() > 0.5  # the edge map steered the result


def test_enhance_canny_without_controlnet_is_a_usage_error(tiny_sd15_dir, tmp_path):
    from click.testing import CliRunner

    from lorastudio.cli.main import cli

    photo = _photo(tmp_path / "x.jpg")
    result = CliRunner().invoke(cli, ["enhance", str(photo), "--model", str(tiny_sd15_dir), "--lora", "a.safetensors",
                                      "--control", "canny", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--controlnet" in result.output
