"""`lorastudio demo` end to end through the real CLI, shortened (few images, few steps)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lorastudio.cli.main import cli
from lorastudio.toyworld.demo import photo_specs, sidecar_caption
from lorastudio.toyworld.readers import read_scene
from lorastudio.toyworld.scenes import render


def test_demo_photos_plant_an_unnamed_confounder():
    specs = photo_specs(6)
    assert {(s.background, s.garnish, s.gloss) for s in specs} == {("black", "sesame seeds", True)}
    for spec in specs:
        caption = sidecar_caption(spec)
        assert "background" not in caption and "sesame" not in caption
        assert read_scene(render(spec, 320, 240, seed=0, noise=6.0)).background == "black"


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    # No --base: the demo's default is the shipped toy-world model, as for a new user.
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--images", "6", "--steps", "4", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert "base model: the shipped toy-world model" in result.output
    assert "report:" in result.output and "report.html" in result.output
    # Every stage ran through the real commands.
    for stage in ("== prepare", "== caption", "== audit", "== audit --fix", "== train", "== run report", "== samples"):
        assert stage in result.output
    records = [json.loads(line) for line in (out / "dataset" / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 6
    # The captions start with the trigger and, after --fix, name the planted black background.
    assert all(r["caption_text"].startswith("ohwx_kfood_style, a photo of ") for r in records)
    assert all("black background" in r["caption_text"] for r in records)
    audit = json.loads((out / "dataset" / "audit.json").read_text())
    assert any(row["id"] == "bg.black" and row["present_rate"] == 1.0 for row in audit["contamination"])
    assert (out / "run" / "final" / "lora.safetensors").is_file()
    assert len(list((out / "samples" / "base").glob("*.png"))) == 3
    assert len(list((out / "samples" / "lora").glob("*.png"))) == 3
    page = (out / "report.html").read_text()
    assert "Base model vs LoRA" in page and page.count("data:image/png;base64,") >= 6 + 6
    # Inputs are never modified: the photo sidecars still hold the hurried captions.
    assert (out / "photos" / "kfood_000.txt").read_text().strip() == sidecar_caption(photo_specs(1)[0])
    # A second run into the same folder replaces the demo's own output (make demo twice).
    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--images", "4", "--steps", "1", "--seeds", "1"])
    assert again.exit_code == 0, again.output
    assert f"replacing the previous demo output in {out}" in again.output
    assert len((out / "dataset" / "manifest.jsonl").read_text().splitlines()) == 4


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "not empty" in result.output
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_replaces_only_its_own_output(tmp_path):
    from lorastudio.toyworld.demo import DEMO_MARKER, _clear_previous_demo

    ours = tmp_path / "ours"
    (ours / "photos").mkdir(parents=True)
    (ours / "photos" / "kfood_000.jpg").write_bytes(b"x")
    (ours / "report.html").write_text("old")
    (ours / DEMO_MARKER).write_text("{}")
    said = []
    _clear_previous_demo(ours, said.append)
    assert list(ours.iterdir()) == [] and said == [f"replacing the previous demo output in {ours}"]
    # A previous demo folder the user added a file to is theirs now: refused, untouched.
    mixed = tmp_path / "mixed"
    (mixed / "photos").mkdir(parents=True)
    (mixed / DEMO_MARKER).write_text("{}")
    (mixed / "my_notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "--out", str(mixed)])
    assert result.exit_code != 0 and "my_notes.txt" in result.output
    assert (mixed / "my_notes.txt").read_text() == "mine" and (mixed / "photos").is_dir()
