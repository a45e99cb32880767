"""End-to-end `lorastudio prepare` through the real CLI: incremental runs, config, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from lorastudio.data.manifest import read_dataset_json, read_manifest, write_manifest, write_sidecar
from prepare_corpus import jpeg_bytes, photo, run_cli, tree_digest, write


def _photos(root: Path, seeds: range, size=(640, 480)) -> None:
    for seed in seeds:
        write(root / f"p{seed}.jpg", jpeg_bytes(photo(*size, seed=100 + seed)))


def test_incremental_rerun_keeps_captions_and_skips_unchanged(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    _photos(src, range(3))
    first = run_cli(["prepare", str(src), "--out", str(out), "-q"])
    assert first.exit_code == 0, first.output
    assert "accepted 3 (3 processed, 0 unchanged)" in first.output
    # What the caption stage writes later: must survive a re-run.
    records = read_manifest(out)
    records[0].update(
        caption={"trigger": "ohwx_kfood_style", "subject": "a photo of kimchi"},
        caption_text="ohwx_kfood_style, a photo of kimchi",
        caption_source={"backend": "manual", "model": None},
        caption_history=[{"caption_text": "old"}],
    )
    write_manifest(out, records)
    write_sidecar(out, records[0])
    image_mtime = (out / records[0]["file"]).stat().st_mtime_ns
    _photos(src, range(3, 4))
    second = run_cli(["prepare", str(src), "--out", str(out), "-q"])
    assert second.exit_code == 0, second.output
    assert "accepted 4 (1 processed, 3 unchanged)" in second.output
    again = {r["id"]: r for r in read_manifest(out)}
    kept = again[records[0]["id"]]
    assert kept["caption_text"] == "ohwx_kfood_style, a photo of kimchi"
    assert kept["caption_history"] == [{"caption_text": "old"}]
    assert kept["caption"]["subject"] == "a photo of kimchi"
    assert (out / kept["file"]).stat().st_mtime_ns == image_mtime  # not re-encoded
    assert (out / kept["file"]).with_suffix(".txt").read_text().strip() == kept["caption_text"]


def test_changed_settings_reprocess_but_keep_captions(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    _photos(src, range(2))
    assert run_cli(["prepare", str(src), "--out", str(out), "-q"]).exit_code == 0
    records = read_manifest(out)
    records[1]["caption_text"] = "a photo of japchae"
    write_manifest(out, records)
    result = run_cli(["prepare", str(src), "--out", str(out), "-q", "--square", "--resolution", "256", "--min-side", "64"])
    assert result.exit_code == 0, result.output
    assert "2 processed" in result.output
    again = {r["id"]: r for r in read_manifest(out)}
    assert all((r["width"], r["height"]) == (256, 256) for r in again.values())
    assert again[records[1]["id"]]["caption_text"] == "a photo of japchae"
    assert read_dataset_json(out)["resolution"] == 256


def test_config_file_overrides_and_resolved_yaml(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    _photos(src, range(2), size=(700, 500))
    cfg = tmp_path / "prepare.yaml"
    cfg.write_text("resolution: 512\nupscale: false\nbackground: '#000000'\n")
    result = run_cli(["prepare", str(src), "--out", str(out), "--config", str(cfg), "jpeg_quality=90", "--set", "image_format=png", "-q"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((out / "prepare.resolved.yaml").read_text())
    assert resolved["upscale"] is False and resolved["jpeg_quality"] == 90 and resolved["image_format"] == "png"
    records = read_manifest(out)
    assert all(r["file"].endswith(".png") and (r["width"], r["height"]) == (512, 384) for r in records)


def test_usage_errors_exit_2_and_name_the_key(tmp_path):
    src = tmp_path / "src"
    _photos(src, range(1))
    bad_key = run_cli(["prepare", str(src), "--out", str(tmp_path / "ds"), "resolutoin=768"])
    assert bad_key.exit_code == 2
    assert "resolutoin" in bad_key.output and "resolution" in bad_key.output
    missing = run_cli(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "ds")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    inside = run_cli(["prepare", str(src), "--out", str(src)])
    assert inside.exit_code == 2 and "separate output folder" in inside.output


def test_nothing_accepted_exits_1_with_reasons(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    write(src / "a.jpg", b"")
    write(src / "b.png", b"not a png")
    result = run_cli(["prepare", str(src), "--out", str(out), "-q"])
    assert result.exit_code == 1
    reasons = sorted(json.loads(line)["reason"] for line in (out / "rejected.jsonl").read_text().splitlines())
    assert reasons == ["empty_file", "not_an_image"]


def test_console_script_with_reg_images(tmp_path):
    src, reg, out = tmp_path / "20_kfood", tmp_path / "reg", tmp_path / "ds"
    _photos(src, range(3))
    _photos(reg, range(10, 12))
    before = tree_digest(tmp_path)
    exe = Path(sys.executable).with_name("lorastudio")
    proc = subprocess.run([str(exe), "prepare", str(src), "--reg", str(reg), "--out", str(out), "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "accepted 5" in proc.stdout
    records = read_manifest(out)
    roles = sorted((r["role"], r["repeats"]) for r in records)
    assert roles == [("reg", 1), ("reg", 1), ("train", 20), ("train", 20), ("train", 20)]
    facts = read_dataset_json(out)
    assert facts["counts"] == {"accepted": 5, "rejected": 0, "train": 3, "reg": 2, "captioned": 0}
    assert [576, 448] in facts["buckets"] and facts["bucket_counts"] == {"576x448": 5}
    after = {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith("ds")}
    assert after == before


def test_near_duplicates_can_be_kept_and_flagged(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    big = photo(800, 600, seed=7)
    write(src / "big.jpg", jpeg_bytes(big))
    write(src / "small.jpg", jpeg_bytes(big.resize((600, 450)), quality=80))
    result = run_cli(["prepare", str(src), "--out", str(out), "-q", "near_duplicates=flag"])
    assert result.exit_code == 0, result.output
    by_name = {Path(r["source"]).name: r for r in read_manifest(out)}
    assert by_name["small.jpg"]["flags"] == [f"near_duplicate_of:{by_name['big.jpg']['id']}"]
    assert by_name["big.jpg"]["flags"] == []


def test_invalid_bucket_settings_are_usage_errors(tmp_path):
    src = tmp_path / "src"
    _photos(src, range(1))
    result = run_cli(["prepare", str(src), "--out", str(tmp_path / "ds"), "min_bucket_side=100"])
    assert result.exit_code == 2
    assert "min_bucket_side=100 is not a multiple of bucket_step=64" in result.output
    nested = run_cli(["prepare", str(src), "--out", str(src / "ds")])
    assert nested.exit_code == 2 and "inside the input" in nested.output
    assert not (src / "ds").exists()


def test_removed_sources_are_dropped_with_their_images(tmp_path):
    src, out = tmp_path / "src", tmp_path / "ds"
    _photos(src, range(3))
    assert run_cli(["prepare", str(src), "--out", str(out), "-q"]).exit_code == 0
    gone = next(r for r in read_manifest(out) if r["source"].endswith("p1.jpg"))
    (src / "p1.jpg").unlink()
    result = run_cli(["prepare", str(src), "--out", str(out), "-q"])
    assert result.exit_code == 0 and "dropped 1 no longer given" in result.output
    assert gone["id"] not in {r["id"] for r in read_manifest(out)}
    assert not (out / gone["file"]).exists()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(r["file"]).name for r in read_manifest(out))


def test_pool_works_when_the_parent_holds_threads(tmp_path):
    """With another thread alive the pool must use spawn (fork could deadlock); same results."""
    import threading

    from lorastudio.data.prepare import _pool_context

    src, out = tmp_path / "src", tmp_path / "ds"
    _photos(src, range(4), size=(320, 320))
    stop = threading.Event()
    holder = threading.Thread(target=stop.wait, daemon=True)
    holder.start()
    try:
        assert _pool_context().get_start_method() == "spawn"
        result = run_cli(["prepare", str(src), "--out", str(out), "--workers", "2", "-q"])
    finally:
        stop.set()
        holder.join()
    assert result.exit_code == 0, result.output
    assert len(read_manifest(out)) == 4
