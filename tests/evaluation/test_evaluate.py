"""`lorastudio evaluate` and the metrics behind it."""

from __future__ import annotations

import json

import numpy as np
from eval_helpers import run_cli
from PIL import Image

from lorastudio.evaluation import metrics


def test_pixel_proxy_similarity_ranks_look_alikes_first():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    near = np.clip(base.astype(int) + rng.integers(-10, 10, size=base.shape), 0, 255).astype(np.uint8)
    far = rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    train = np.stack([metrics.pixel_embedding(Image.fromarray(base))])
    assert metrics.closeness(np.stack([metrics.pixel_embedding(Image.fromarray(near))]), train) > 0.9
    assert metrics.closeness(np.stack([metrics.pixel_embedding(Image.fromarray(far))]), train) < 0.3


def _plate(background: tuple[int, int, int]) -> Image.Image:
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[:] = background
    img[20:44, 20:44] = (200, 120, 60)
    return Image.fromarray(img)


def test_leak_counts_confounders_beyond_the_base_rate():
    train = [_plate((10, 10, 12))] * 4  # every training image has a black background
    conf = metrics.find_confounders(train, [])
    assert "black" in conf.labels() and conf.train_rate["black"] == 1.0
    base_imgs = [_plate((230, 230, 230))] * 4
    rates = metrics.base_rates(base_imgs, conf)
    assert rates["black"] == 0.0
    lora_imgs = [_plate((10, 10, 12))] * 3 + [_plate((230, 230, 230))]
    assert metrics.leak(lora_imgs, rates, conf)["black"] == 0.75


def test_evaluate_scores_checkpoints_recommends_and_writes_report(run_dir):
    result = run_cli(["evaluate", str(run_dir), "--scales", "0.5,1", "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "evaluation.json").read_text())
    assert data["embedding"] == "pixel16" and data["training_images"] == 6
    assert data["scales"] == [0.0, 0.5, 1.0]
    assert {(r["checkpoint"], r["scale"]) for r in data["rows"]} == {(c, s) for c in ("step_2", "step_4", "final") for s in (0.5, 1.0)}
    # The training images all share a black background nobody captioned: it is watched.
    assert any(c["label"] == "black" for c in data["confounders"])
    rec = data["recommendation"]
    chosen = next(r for r in data["rows"] if (r["checkpoint"], r["scale"]) == (rec["checkpoint"], rec["scale"]))
    assert chosen["score"] == max(r["score"] for r in data["rows"])
    # final/ and step_4 hold the same weights; the tie goes to final/, the folder users look for.
    assert rec["checkpoint"] != "step_4"
    assert (run_dir / rec["file"]).is_file() and rec["reason"]
    assert "recommended:" in result.output
    # The prompts name toy-world dishes, so the attribute readers score prompt following
    # (dish only: no prompt names a background).
    for figures in [data["base"]["toy_following"], *(r["toy_following"] for r in data["rows"])]:
        assert figures["background"] is None and 0.0 <= figures["dish"] <= 1.0
    assert data["toyworld"]["available"] is True
    html = (run_dir / "report.html").read_text()
    assert "<svg" in html and "training loss" in html and rec["reason"][:40] in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from the network


def test_evaluate_with_clip_model(run_dir, tiny_clip_dir, tmp_path):
    prompts = tmp_path / "heldout.yaml"
    prompts.write_text("- ohwx_kfood_style, a photo of soup\n- {prompt: 'ohwx_kfood_style, noodles', seed: 5}\n", encoding="utf-8")
    result = run_cli(["evaluate", str(run_dir), "--clip-model", str(tiny_clip_dir), "--prompts", str(prompts),
                      "--checkpoints", "last", "--scales", "1", "--no-report", "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "evaluation.json").read_text())
    assert data["embedding"] == "clip" and data["prompts"] == ["ohwx_kfood_style, a photo of soup", "ohwx_kfood_style, noodles"]
    (row,) = data["rows"]
    assert row["checkpoint"] == "final" and 0.0 <= row["adherence"] <= 100.0
    assert data["base"]["adherence"] is not None and -1.0 <= row["closeness"] <= 1.0


def test_report_does_not_follow_paths_outside_the_run_dir(tmp_path):
    from lorastudio.evaluation.report import img_src, render_report

    run = tmp_path / "run"
    (run / "grids").mkdir(parents=True)
    (run / "grids" / "ok.png").write_bytes(b"\x89PNG")
    (tmp_path / "secret.png").write_bytes(b"secret")
    assert img_src(run, "grids/ok.png") == "grids/ok.png"
    assert img_src(run, "../secret.png") is None and img_src(run, str(tmp_path / "secret.png")) is None
    index = {"grids": [{"file": "../secret.png", "prompt": "p", "seed": 0, "rows": ["final"], "columns": [1.0]}]}
    (run / "grids" / "index.json").write_text(json.dumps(index))
    html = render_report(run)
    assert "secret" not in html and "Not evaluated yet" in html
