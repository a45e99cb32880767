"""`lorastudio audit` end to end through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import audit_scenes as scenes
from lorastudio.cli.main import cli
from lorastudio.data.manifest import read_manifest


def run(*args):
    return CliRunner().invoke(cli, ["audit", *map(str, args), "-q"], catch_exceptions=False)


def _scene_ds(tmp_path, vocab, name):
    spec = next(d for d in scenes.benchmark_datasets(n=8) if d.name == name)
    return scenes.write_dataset(tmp_path, spec, vocab)


@pytest.fixture
def contaminated(tmp_path, vocab):
    return _scene_ds(tmp_path, vocab, "black_bg")


@pytest.fixture
def clean(tmp_path, vocab):
    return _scene_ds(tmp_path, vocab, "clean_varied")


def test_help_teaches():
    res = CliRunner().invoke(cli, ["audit", "--help"])
    assert res.exit_code == 0 and "--min-present" in res.output and "contaminant" in res.output


def test_text_output_and_files(contaminated):
    res = run(contaminated)
    assert res.exit_code == 1
    assert "ERROR contamination.contaminant" in res.output and "bg.black" in res.output
    first = res.stdout.splitlines()[2]
    assert first.startswith("ERROR")  # worst findings first
    data = json.loads((contaminated / "audit.json").read_text())
    assert data["counts"]["error"] >= 1 and data["trigger"] == scenes.TRIGGER
    assert (contaminated / "audit.html").is_file() and not (contaminated / "report.html").exists()
    assert "audit.json" in res.stderr and "audit.html" in res.stderr  # where the files went


def test_json_output(contaminated):
    res = run(contaminated, "--format", "json")
    data = json.loads(res.stdout)
    rows = {r["id"]: r for r in data["contamination"]}
    assert rows["bg.black"]["verdict"] == "contaminant" and rows["bg.black"]["present_rate"] == 0.75
    assert res.exit_code == 1
    assert json.loads((contaminated / "audit.json").read_text()) == data


def test_html_output_and_report_section_replaced(contaminated):
    (contaminated / "report.html").write_text("<html><body><h1>dataset</h1></body></html>")
    res = run(contaminated, "--format", "html")
    assert res.stdout.startswith("<!DOCTYPE html>") and "bg.black" in res.stdout
    run(contaminated)
    text = (contaminated / "report.html").read_text()
    assert text.count("<!-- audit -->") == 1 and text.count("<!-- /audit -->") == 1
    assert "<h1>dataset</h1>" in text and text.index("<!-- /audit -->") < text.index("</body>")
    assert not (contaminated / "audit.html").exists()


def test_clean_dataset_exits_zero(clean):
    res = run(clean)
    assert res.exit_code == 0, res.output
    assert "ERROR" not in res.output


def test_strict_fails_on_warnings(clean):
    records = read_manifest(clean)
    text = records[0]["caption_text"]
    moved = text.replace(f"{scenes.TRIGGER}, ", "") + f", {scenes.TRIGGER}"
    (clean / "images" / f"{records[0]['id']}.txt").write_text(moved + "\n")
    lines = (clean / "manifest.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace(json.dumps(text), json.dumps(moved))
    (clean / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    assert run(clean).exit_code == 0
    res = run(clean, "--strict")
    assert res.exit_code == 1 and "trigger.not_first" in res.output


def test_fix_without_yes_changes_nothing(contaminated):
    before = (contaminated / "manifest.jsonl").read_bytes()
    sidecar = (contaminated / "images" / "black_bg-000.txt").read_bytes()
    res = run(contaminated, "--fix")
    assert "+ " in res.output and "black background" in res.output and "nothing was changed" in res.output
    assert (contaminated / "manifest.jsonl").read_bytes() == before
    assert (contaminated / "images" / "black_bg-000.txt").read_bytes() == sidecar
    assert res.exit_code == 1


def test_fix_with_yes_names_contaminant_and_can_be_undone(contaminated):
    original = {r["id"]: r["caption_text"] for r in read_manifest(contaminated)}
    res = run(contaminated, "--fix", "--yes")
    assert res.exit_code == 0, res.output
    after = {r["id"]: r for r in read_manifest(contaminated)}
    rec = after["black_bg-000"]
    assert "black background" in rec["caption_text"]
    assert rec["caption"]["objective"][-1] == "black background"
    assert rec["caption_history"][-1]["caption_text"] == original["black_bg-000"]
    assert (contaminated / "images" / "black_bg-000.txt").read_text().strip() == rec["caption_text"]
    # Images without a black background are left alone.
    untouched = [i for i, r in after.items() if "caption_history" not in r]
    assert untouched and all(after[i]["caption_text"] == original[i] for i in untouched)
    assert json.loads((contaminated / "audit.json").read_text())["counts"]["error"] == 0
    undo = CliRunner().invoke(cli, ["caption", str(contaminated), "--undo"], catch_exceptions=False)
    assert undo.exit_code == 0
    assert {r["id"]: r["caption_text"] for r in read_manifest(contaminated)} == original


def test_yes_without_fix_is_a_usage_error(contaminated):
    res = CliRunner().invoke(cli, ["audit", str(contaminated), "--yes"])
    assert res.exit_code == 2 and "--fix" in res.output


def test_clear_errors_for_bad_inputs(tmp_path, contaminated):
    res = CliRunner().invoke(cli, ["audit", str(tmp_path)])
    assert res.exit_code == 1 and "manifest.jsonl" in res.output
    bad = tmp_path / "pack.yaml"
    bad.write_text("name: mine\ngroups:\n  g:\n    slot: 9\n")
    res = CliRunner().invoke(cli, ["audit", str(contaminated), "--pack", str(bad)])
    assert res.exit_code == 1 and "pack.yaml" in res.output and "slot" in res.output


def test_paths_outside_the_dataset_are_not_followed(contaminated, tmp_path):
    lines = (contaminated / "manifest.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('"images/black_bg-000.png"', '"../outside.png"')
    (contaminated / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    res = run(contaminated, "--format", "json")
    hits = [f for f in json.loads(res.stdout)["findings"] if f["rule"] == "image.outside"]
    assert [h["image"] for h in hits] == ["black_bg-000"] and res.exit_code == 1
