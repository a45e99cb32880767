"""End to end through the real CLI entry point with the manual backend."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from lorastudio.cli.main import cli
from lorastudio.data.manifest import read_dataset_json, read_manifest, sidecar_path
from lorastudio.models.tiny import tokenizer_files_dir


def _invoke(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def test_caption_then_edit_then_undo(dataset, tmp_path):
    table = tmp_path / "caps.csv"
    lines = ["file,caption"] + [f"IMG_{i:03d}.png,\"close-up, black backdrop, 깨, glossy, masterpiece\"" for i in range(6)]
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = _invoke("caption", dataset, "--backend", "manual", "--from", table, "--trigger", "ohwx_kfood_style",
                  "--subject-from", "folder", "--batch-size", "4", "--quiet")
    assert res.exit_code == 0, res.output
    assert "captioned 6 image(s)" in res.output
    expected = ("ohwx_kfood_style, a photo of yangnyeom chicken (korean fried chicken in sweet spicy glaze), "
                "close-up, black backdrop, kkae (sesame seeds), glossy, masterpiece")
    records = read_manifest(dataset)
    assert {r["caption_text"] for r in records} == {expected}
    assert sidecar_path(dataset, records[3]).read_text(encoding="utf-8").strip() == expected
    assert read_dataset_json(dataset)["trigger"] == "ohwx_kfood_style"

    res = _invoke("captions", dataset, "stats")
    assert res.exit_code == 0 and "6 of 6 image(s) captioned" in res.output
    assert "black backdrop  [bg.black]" in res.output

    res = _invoke("captions", dataset, "rename-trigger", "ohwx_kfood_style", "sks_kfood", "--dry-run")
    assert "would change 6 of 6" in res.output and "+ sks_kfood" in res.output
    assert read_manifest(dataset)[0]["caption_text"] == expected

    res = _invoke("captions", dataset, "rename-trigger", "ohwx_kfood_style", "sks_kfood")
    assert "changed 6 of 6" in res.output and read_dataset_json(dataset)["trigger"] == "sks_kfood"
    res = _invoke("captions", dataset, "add-phrase", "--slot", "objective", "plain background",
                  "--where", "black background")
    assert "changed 6 of 6" in res.output
    res = _invoke("captions", dataset, "remove-phrase", "masterpiece")
    res = _invoke("captions", dataset, "replace", "backdrop", "background")
    text = read_manifest(dataset)[0]["caption_text"]
    assert text == ("sks_kfood, a photo of yangnyeom chicken (korean fried chicken in sweet spicy glaze), close-up, "
                    "black background, kkae (sesame seeds), plain background, glossy")

    for _ in range(3):  # undo replace, remove-phrase, add-phrase
        assert _invoke("caption", dataset, "--undo").exit_code == 0
    record = read_manifest(dataset)[0]
    assert record["caption_text"] == expected.replace("ohwx_kfood_style", "sks_kfood")
    assert sidecar_path(dataset, record).read_text(encoding="utf-8").strip() == record["caption_text"]


def test_tokens_command(dataset, tmp_path):
    res = _invoke("caption", dataset, "--backend", "manual", "--from", _table(tmp_path), "--trigger", "ohwx_kfood_style",
                  "--quiet")
    assert res.exit_code == 0, res.output
    model = tmp_path / "model"
    shutil.copytree(tokenizer_files_dir(), model / "tokenizer")
    res = _invoke("captions", dataset, "tokens", "--tokenizer", model)
    assert res.exit_code == 0, res.output
    assert "over budget: img001 tokenizer" in res.output
    assert "trigger 'ohwx_kfood_style' ->" in res.output
    res = _invoke("captions", dataset, "tokens", "--tokenizer", model, "--json")
    data = json.loads(res.output)
    assert [row["id"] for row in data["over"]] == ["img001"]


def _table(tmp_path):
    table = tmp_path / "caps.jsonl"
    rows = [{"file": "IMG_000.png", "caption": "a photo of kimchi, close-up"},
            {"file": "IMG_001.png", "caption": "a photo of kimchi, " + ", ".join(f"garnish number {i}" for i in range(25))}]
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return table


def test_cli_errors_are_clear(dataset, tmp_path):
    res = _invoke("caption", dataset)
    assert res.exit_code != 0 and "--backend is required" in res.output
    res = _invoke("caption", dataset, "--undo")
    assert res.exit_code != 0 and "no caption change to undo" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngroupz: {}\n", encoding="utf-8")
    res = _invoke("caption", dataset, "--backend", "manual", "--pack", bad)
    assert res.exit_code != 0 and "bad.yaml" in res.output and "groupz" in res.output
    res = _invoke("captions", tmp_path, "stats")
    assert res.exit_code != 0 and "manifest.jsonl not found" in res.output
    assert "rename-trigger" in _invoke("captions", dataset, "--help").output


def test_a_run_that_captions_nothing_fails_and_names_the_backend(dataset, tmp_path):
    # A table that matches none of the images: every image comes back without a caption.
    table = tmp_path / "caps.csv"
    table.write_text("file,caption\nnot_in_dataset.png,\"a photo of kimchi\"\n", encoding="utf-8")
    res = _invoke("caption", dataset, "--backend", "manual", "--from", table, "--trigger", "sks", "--quiet")
    assert res.exit_code == 1, res.output
    assert "backend 'manual'" in res.output and "no caption for any of the 6 image(s)" in res.output
    assert "img000" in res.output and "nothing was written" in res.output
    assert "--from" in res.output  # what to try
    assert all(not r.get("caption_text") for r in read_manifest(dataset))


def test_a_partial_run_names_the_images_left_uncaptioned(dataset, tmp_path):
    table = tmp_path / "caps.csv"
    table.write_text("file,caption\nIMG_000.png,\"a photo of kimchi\"\nIMG_004.png,\"a photo of bibimbap\"\n",
                     encoding="utf-8")
    res = _invoke("caption", dataset, "--backend", "manual", "--from", table, "--trigger", "sks", "--quiet")
    assert res.exit_code == 0, res.output
    assert "captioned 2 image(s)" in res.output
    assert "4 of 6 image(s) were left uncaptioned" in res.output
    assert "img001, img002, img003, img005" in res.output and "--only-missing" in res.output
