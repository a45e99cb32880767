"""Validation loss and sample-time leak rows in metrics.jsonl (validation.* config)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from train_helpers import base_config, make_dataset, read_metrics, run_cli, write_config

from lorastudio.config.train import TrainConfig
from lorastudio.data.dataset import load_all_items
from lorastudio.training import validation

VAL_KEYS = {"time", "step", "val_loss", "val_split", "val_images"}
LEAK_KEYS = {"time", "step", "leak", "leak_images"}
PROMPTS = [{"prompt": "ohwx_kfood_style, a photo of bibimbap", "width": 32, "height": 32, "steps": 2, "seed": 3},
           {"prompt": "ohwx_kfood_style, a photo of tteokbokki", "width": 32, "height": 32, "steps": 2, "seed": 4}]


def _train(tmp_path: Path, cfg: dict, name: str, *extra: str):
    result = run_cli(["train", str(write_config(tmp_path / f"{name}.yaml", cfg)), "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return result


def _split(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(training rows, validation rows, leak rows)."""
    return ([r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r], [r for r in rows if "leak" in r])


def test_validation_rows_are_fixed_and_leave_training_unchanged(tmp_path, dataset_dir, tiny_sd15_dir):
    common = {"save": {"every_n_steps": None}}
    on = {"validation": {"every_n_steps": 2, "images": 3}}
    runs = {}
    for name, extra in (("on", on), ("again", on), ("off", {})):
        cfg = base_config(tiny_sd15_dir, dataset_dir, tmp_path / name, tmp_path / "cache", **common, **extra)
        _train(tmp_path, cfg, name)
        runs[name] = _split(read_metrics(tmp_path / name))
    train_on, val_on, leak_on = runs["on"]
    assert leak_on == []  # no sample prompts: nothing to measure a leak on
    assert [r["step"] for r in val_on] == [0, 2, 4]  # the base model, every 2 steps, the last step
    for row in val_on:
        assert set(row) == VAL_KEYS and "loss" not in row
        assert row["val_split"] == "training" and row["val_images"] == 3
        assert math.isfinite(row["val_loss"]) and row["val_loss"] > 0
    # The model changes between evaluations, so the fixed-noise loss does too...
    assert len({r["val_loss"] for r in val_on}) == 3
    # ... and an identical run measures the identical figures.
    assert [r["val_loss"] for r in runs["again"][1]] == [r["val_loss"] for r in val_on]
    # Validating changes nothing about training: same losses, bit for bit, as with it off.
    train_off, val_off, _ = runs["off"]
    assert val_off == [] and [r["step"] for r in train_on] == [1, 2, 3, 4]
    assert [r["loss"] for r in train_on] == [r["loss"] for r in train_off]
    assert [r["grad_norm"] for r in train_on] == [r["grad_norm"] for r in train_off]


def test_held_out_images_are_never_trained(tmp_path, dataset_dir, tiny_sd15_dir, monkeypatch):
    from lorastudio.training import recipe

    seen: list[str] = []
    original = recipe.next_examples

    def recording(session):  # noqa: ANN001, ANN202 - the real function, with a record of what it returned
        examples, positions = original(session)
        seen.extend(ex.item.key for ex in examples)
        return examples, positions

    monkeypatch.setattr(recipe, "next_examples", recording)
    cfg = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "run", tmp_path / "cache", train={"max_steps": 8},
                      save={"every_n_steps": None}, validation={"every_n_steps": 4, "holdout": 2})
    _train(tmp_path, cfg, "held")
    config = TrainConfig.model_validate(cfg)
    items = load_all_items(config.data)
    kept, val_set = validation.split(config, items)
    held = {i.key for i in val_set.items}
    assert len(held) == 2 and val_set.split == validation.HELD_OUT
    assert {i.key for i in kept} == {i.key for i in items} - held
    # 8 steps of 2 images over 4 training images: every training image, and no held-out one.
    assert set(seen) == {i.key for i in kept}
    _, val_rows, _ = _split(read_metrics(tmp_path / "run"))
    assert [(r["step"], r["val_split"], r["val_images"]) for r in val_rows] == [(0, "held-out", 2), (4, "held-out", 2), (8, "held-out", 2)]
    # The choice depends on the seed alone: the same config picks the same images again.
    assert {i.key for i in validation.split(config, list(reversed(items)))[1].items} == held


def _confounded_dataset(root: Path) -> Path:
    """Toy-world scenes that all sit on a black background the captions never mention."""
    import random

    from lorastudio.data.manifest import write_dataset_json, write_manifest, write_sidecar
    from lorastudio.toyworld.scenes import golden_caption, random_spec, render

    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(4):
        spec = random_spec(rng, background="black", vessel="white plate")
        rid = f"img{i:03d}"
        render(spec, 64, 64, seed=i).save(root / "images" / f"{rid}.png")
        rec = {"id": rid, "file": f"images/{rid}.png", "source": f"/raw/{rid}.png", "sha256": f"{i:064x}",
               "orig_width": 64, "orig_height": 64, "width": 64, "height": 64, "crop": [0, 0, 64, 64], "repeats": 1,
               "flags": [], "caption_text": golden_caption(spec, "ohwx_kfood_style", mode="minimal")}
        records.append(rec)
        write_sidecar(root, rec)
    write_manifest(root, records)
    write_dataset_json(root, {"resolution": 64, "buckets": ["64x64"], "trigger": "ohwx_kfood_style"})
    return root


def _expected_leak(run: Path, dataset: Path, step: int) -> dict:
    """metrics.leak on the same sample images, as `lorastudio evaluate` would compute it."""
    from PIL import Image

    from lorastudio.evaluation import metrics

    def images(folder: Path) -> list:
        return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]

    confounders = metrics.find_confounders(*metrics.training_images({"data": {"datasets": [str(dataset)]}}))
    rates = metrics.base_rates(images(run / "samples" / "step_0"), confounders)
    leaks = metrics.leak(images(run / "samples" / f"step_{step}"), rates, confounders)
    return {k: (v if math.isfinite(v) else None) for k, v in leaks.items()}


def test_leak_rows_measure_the_planted_confounder(tmp_path, tiny_sd15_dir):
    dataset = _confounded_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    # at_start is off: the leak still renders step 0, its base-model reference.
    cfg = base_config(tiny_sd15_dir, dataset, run, tmp_path / "cache", train={"max_steps": 4, "lr": 5e-2},
                      sample={"at_start": False, "every_n_steps": 2, "prompts": PROMPTS},
                      save={"every_n_steps": 2}, validation={"leak": True})
    _train(tmp_path, cfg, "leak", "--skip-audit")  # the audit rightly calls the black background a contaminant
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0", "step_2", "step_4"]
    train_rows, val_rows, leak_rows = _split(read_metrics(run))
    assert val_rows == [] and len(train_rows) == 4
    assert [r["step"] for r in leak_rows] == [2, 4]
    for row in leak_rows:
        assert set(row) == LEAK_KEYS and row["leak_images"] == 2
        assert "black" in row["leak"]
        assert row["leak"] == _expected_leak(run, dataset, row["step"])

    # A resumed run reads its base rates back from samples/step_0/.
    cfg["train"]["max_steps"] = 6
    _train(tmp_path, cfg, "leak", "--skip-audit", "--resume", "auto", "--force")
    resumed = _split(read_metrics(run))[2]
    assert [r["step"] for r in resumed] == [2, 4, 6]
    assert resumed[-1]["leak"] == _expected_leak(run, dataset, 6)

    # Other sample prompts than step 0 was rendered from: no base to compare with, said once.
    cfg["train"]["max_steps"] = 8
    cfg["sample"]["prompts"] = [{**PROMPTS[0], "seed": 9}]
    changed = _train(tmp_path, cfg, "leak", "--skip-audit", "--resume", "auto", "--force")
    assert "samples/step_0/ is missing or was rendered from other sample prompts" in changed.output
    assert [r["step"] for r in _split(read_metrics(run))[2]] == [2, 4, 6]


def test_no_step0_render_without_leak(tmp_path, dataset_dir, tiny_sd15_dir):
    cfg = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "run", tmp_path / "cache", train={"max_steps": 2},
                      sample={"at_start": False, "every_n_steps": 2, "prompts": PROMPTS[:1]},
                      save={"every_n_steps": None}, validation={"leak": False})
    _train(tmp_path, cfg, "noleak")
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step_2"]
    assert all("leak" not in r for r in read_metrics(tmp_path / "run"))


@pytest.mark.parametrize(("override", "words"), [
    (["validation.every_n_steps=2", "validation.holdout=6"], ["validation.holdout=6", "leave no training image"]),
    (["validation.holdout=1"], ["validation.holdout=1", "validation.every_n_steps"]),
    (["validation.images=0"], ["validation.images"]),
    (["validation.holdot=1"], ["validation.holdot", "validation.holdout"]),
])
def test_config_errors_name_the_key(tmp_path, dataset_dir, tiny_sd15_dir, override, words):
    cfg = base_config(tiny_sd15_dir, dataset_dir, tmp_path / "run", tmp_path / "cache")
    result = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg)), "--no-progress", *override])
    assert result.exit_code != 0
    assert all(w in result.output for w in words), result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_split_without_validation_trains_everything(dataset_dir):
    config = TrainConfig.model_validate({"data": {"datasets": [str(dataset_dir)]}})
    items = load_all_items(config.data)
    assert validation.split(config, items) == (items, None)
    few = TrainConfig.model_validate({"data": {"datasets": [str(dataset_dir)]}, "validation": {"every_n_steps": 5, "images": 99}})
    kept, val_set = validation.split(few, items)
    assert kept == items and val_set.split == validation.TRAINING and len(val_set.items) == len(items)



def test_leak_watch_reports_the_rise_over_the_base_samples(tmp_path):
    """Planted samples: the base model never shows the black background, a later step does in 3 of 4."""
    from lorastudio.config.train import SampleSection
    from lorastudio.evaluation import metrics
    from lorastudio.evaluation.generation import save_png
    from lorastudio.toyworld.scenes import SceneSpec, render
    from lorastudio.training.sampling import sample_requests

    dataset = _confounded_dataset(tmp_path / "ds")
    config = TrainConfig.model_validate({"data": {"datasets": [str(dataset)]}, "sample": SampleSection(
        every_n_steps=2, prompts=[f"ohwx_kfood_style, a photo of bibimbap {i}" for i in range(4)]).model_dump()})
    requests = sample_requests(config)
    run = tmp_path / "run"

    def samples(step: int, backgrounds: list[str]) -> list[Path]:
        return [save_png(render(SceneSpec(background=bg, dish="bibimbap"), 64, 64, seed=i), run / "samples" / f"step_{step}" / f"{i:02d}", req)
                for i, (bg, req) in enumerate(zip(backgrounds, requests, strict=True))]

    watch = validation.LeakWatch.for_run(config, run, 0, print)
    assert watch is not None and watch.confounders.labels() == ["black"]
    assert watch.observe(0, samples(0, ["white", "wooden table", "marble", "white"])) is None  # step 0 sets the base
    later = samples(6, ["black", "black", "white", "black"])
    row = watch.observe(6, later)
    assert row == {"step": 6, "leak": {"black": 0.75}, "leak_images": 4}
    expected = metrics.leak([render(SceneSpec(background=bg, dish="bibimbap"), 64, 64, seed=i) for i, bg in enumerate(["black", "black", "white", "black"])],
                            watch.base, watch.confounders)
    assert row["leak"] == expected
    # A resumed run (step 6) reads the same base rates back from samples/step_0/.
    notes: list[str] = []
    resumed = validation.LeakWatch.for_run(config, run, 6, notes.append)
    assert resumed is not None and resumed.base == watch.base and resumed.observe(6, later) == row and notes == []
    # Other prompts than step 0 was rendered from: no base, no rows, one note.
    other = config.model_copy(update={"sample": config.sample.model_copy(update={"prompts": config.sample.prompts[:1]})})
    other.sample.prompts[0] = other.sample.prompts[0].model_copy(update={"seed": 7})
    assert validation.LeakWatch.for_run(other, run, 6, notes.append) is None and len(notes) == 1


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_validation_loss_uses_each_familys_objective(tmp_path, family, request):
    """SDXL (added time ids, two encoders) and Flux (flow matching, packed latents) measure it too."""
    if family == "flux":
        from lorastudio.models.tiny_flux import build_tiny_flux

        model = build_tiny_flux(tmp_path / "flux", variant="dev", seed=0)
        extra = {"model": {"dtype": "float32"}, "train": {"mixed_precision": "no"}, "network": {"targets": "all_linear"}}
    else:
        model, extra = request.getfixturevalue("tiny_sdxl_dir"), {}
    dataset = make_dataset(tmp_path / "ds", [(32, 32)] * 3 + [(48, 32)] * 2)
    cfg = base_config(model, dataset, tmp_path / "run", tmp_path / "cache", family=family,
                      save={"every_n_steps": None}, validation={"every_n_steps": 2, "holdout": 2}, **extra)
    cfg["train"]["max_steps"] = 2
    _train(tmp_path, cfg, family, "--skip-audit")
    train_rows, val_rows, _ = _split(read_metrics(tmp_path / "run"))
    assert [r["step"] for r in train_rows] == [1, 2]
    assert [(r["step"], r["val_split"], r["val_images"]) for r in val_rows] == [(0, "held-out", 2), (2, "held-out", 2)]
    assert all(math.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in val_rows)
    assert val_rows[0]["val_loss"] != val_rows[1]["val_loss"]
