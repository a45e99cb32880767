"""`lorastudio sample` on a real short training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from eval_helpers import pixels, run_cli
from PIL import Image


def test_sample_grid_of_prompts_scales_checkpoints(run_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# held-out prompts\nohwx_kfood_style, a photo of soup\nohwx_kfood_style, noodles\n", encoding="utf-8")
    out = tmp_path / "grids"
    result = run_cli(["sample", str(run_dir), "--prompts", str(prompts), "--scales", "0,0.5,1", "--seeds", "1,2",
                      "--steps", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert [c["label"] for c in index["checkpoints"]] == ["step_2", "step_4", "final"]
    assert index["scales"] == [0.0, 0.5, 1.0]
    assert len(index["grids"]) == 4  # 2 prompts x 2 seeds
    # 4 requests: once at scale 0 (the base) + 3 checkpoints x 2 non-zero scales.
    assert len(index["cells"]) == 4 + 4 * 3 * 2
    with Image.open(out / "grid-p0-seed1.png") as grid:
        assert grid.width > 3 * 64 and grid.height > 3 * 64
    cells = {(c["checkpoint"], c["scale"], c["request"]): pixels(out / c["file"]) for c in index["cells"]}
    base = cells[("base", 0.0, 0)]
    full = cells[("final", 1.0, 0)]
    assert np.abs(full - base).mean() > 1.0  # the trained adapter changes the image
    # final/ holds the same weights as the last checkpoint: identical cells.
    np.testing.assert_array_equal(cells[("final", 1.0, 1)], cells[("step_4", 1.0, 1)])
    # A fixed seed: same request, same image, whatever was rendered before.
    assert np.abs(cells[("base", 0.0, 0)] - cells[("base", 0.0, 1)]).mean() > 0  # different seeds differ


def test_sample_defaults_to_the_runs_prompts_and_last_checkpoint(run_dir):
    result = run_cli(["sample", str(run_dir), "--checkpoints", "last", "--scales", "0,1", "--no-progress"])
    assert result.exit_code == 0, result.output
    grids_dir = Path(result.output.strip().splitlines()[-1]).parent  # grids/, or grids-2 when taken
    assert grids_dir.parent == run_dir and grids_dir.name.startswith("grids")
    index = json.loads((grids_dir / "index.json").read_text())
    assert [c["label"] for c in index["checkpoints"]] == ["final"]
    assert [r["prompt"] for r in index["requests"]] == ["ohwx_kfood_style, a photo of bibimbap", "ohwx_kfood_style, a photo of kimchi stew"]
    assert [r["seed"] for r in index["requests"]] == [1, 2]
    assert all((run_dir / g["file"]).is_file() for g in index["grids"])


def test_sample_errors_name_the_problem(run_dir, tmp_path):
    from click.testing import CliRunner

    from lorastudio.cli.main import cli

    bad = CliRunner().invoke(cli, ["sample", str(run_dir), "--checkpoints", "7", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "step(s) [7]" in bad.output
    empty = CliRunner().invoke(cli, ["sample", str(tmp_path)])
    assert empty.exit_code != 0 and "config.resolved.yaml" in empty.output
