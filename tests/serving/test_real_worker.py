"""The service on the shipped toy model with a real worker: LoRAs, leakage, enhance, traces, training."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import time
import zipfile

import pytest
from serve_helpers import jpeg
from PIL import Image

BODY = {"prompt": "ohwx_kfood_style, a photo of bibimbap", "size": "64x64", "steps": 4, "seed": 3}


def _lora(tmp_path, seed: int) -> bytes:
    """A random visible adapter for the toy model, in kohya format."""
    import torch
    from diffusers import StableDiffusionPipeline

    from lorastudio.models.lora import attach_lora, export_adapter, unet_target_modules
    from lorastudio.toyworld.pretrain import shipped_base_dir

    pipe = StableDiffusionPipeline.from_pretrained(str(shipped_base_dir()))
    torch.manual_seed(seed)
    attach_lora(pipe.unet, rank=4, alpha=4.0, target_modules=unet_target_modules(pipe.unet, "attn"),
                init_lora_weights=False)
    return export_adapter(tmp_path / f"l{seed}", family="sd15", unet=pipe.unet, text_encoders=[], rank=4,
                          alpha=4.0)["kohya"].read_bytes()


def _image_hash(response) -> str:
    assert response.status_code == 200, response.text
    return hashlib.sha256(base64.b64decode(response.json()["data"][0]["b64_json"])).hexdigest()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from starlette.testclient import TestClient

    from lorastudio.serving.app import create_app
    from lorastudio.serving.http import Settings
    from lorastudio.serving.store import default_url
    from lorastudio.toyworld.pretrain import shipped_base_dir

    from lorastudio.models.tiny import save_tiny_controlnet

    data = tmp_path_factory.mktemp("toy_service")
    controlnet = save_tiny_controlnet(shipped_base_dir(), tmp_path_factory.mktemp("controlnet") / "canny")
    settings = Settings(data_dir=data, db_url=default_url(data), model=str(shipped_base_dir()), workers=1,
                        lora_cache=2, lease_s=5.0, controlnet=str(controlnet))
    app = create_app(settings)
    _, token = app.state.store.create_key(["generate", "train"])
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        end = time.time() + 180
        while client.get("/readyz", headers=auth).status_code != 200 and time.time() < end:
            time.sleep(0.2)
        loras = tmp_path_factory.mktemp("loras")
        for name, seed in (("style-a", 1), ("style-b", 2), ("style-c", 3)):
            done = client.post("/v1/loras", files={"file": (f"{name}.safetensors", _lora(loras, seed))},
                               data={"id": name}, headers=auth)
            assert done.status_code == 201, done.text
        yield client, auth, app, data


def test_adapters_never_leak_between_jobs(toy):
    client, auth, _, _ = toy
    post = lambda loras=(): client.post("/v1/images/generations",  # noqa: E731
                                        json={**BODY, "loras": [{"id": i, "scale": 1.0} for i in loras]}, headers=auth)
    base = _image_hash(post())  # a fresh worker: nothing loaded yet
    a = _image_hash(post(["style-a"]))
    assert a != base
    assert _image_hash(post()) == base
    b = _image_hash(post(["style-b"]))
    assert b not in (a, base)
    assert _image_hash(post(["style-a"])) == a  # A again after B: same image
    c = _image_hash(post(["style-c"]))  # the LRU (2 adapters) evicts one
    assert _image_hash(post(["style-a", "style-c"])) not in (a, c, base)
    assert _image_hash(post()) == base


def test_the_trace_shows_each_stage_and_the_logs_carry_the_job_id(toy):
    client, auth, _, data = toy
    response = client.post("/v1/images/generations", json={**BODY, "loras": [{"id": "style-a", "scale": 0.5}]},
                           headers=auth)
    job_id = response.headers["x-job-id"]
    trace = client.get(f"/v1/jobs/{job_id}/trace", headers=auth).json()["trace"]
    stages = [e["stage"] for e in trace]
    for stage in ("queue_wait", "lora_load", "request", "text_encode", "decode", "store", "memory"):
        assert stage in stages, stages
    steps = [e for e in trace if e["stage"] == "denoise_step"]
    assert [s["i"] for s in steps] == [1, 2, 3, 4] and all(s["finite"] for s in steps)
    request = next(e for e in trace if e["stage"] == "request")
    assert request["seed"] == 3 and request["base_model"] and request["loras"][0]["sha256"]
    logged = [json.loads(line) for line in (data / "worker-w0.log").read_text().splitlines() if line.startswith("{")]
    assert sum(entry["job_id"] == job_id for entry in logged) == len(trace)
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth).text
    assert events.count("event: step") == 4 and "event: completed" in events


def test_enhance_keeps_the_photo_size_and_orientation(toy):
    client, auth, _, _ = toy
    photo = Image.open(io.BytesIO(jpeg(96, 64)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif.tobytes())
    response = client.post("/v1/images/edits", files={"image": ("p.jpg", buffer.getvalue(), "image/jpeg")},
                           data={"prompt": "glossy", "steps": "4", "strength": "0.5", "resolution": "64",
                                 "loras": json.dumps([{"id": "style-a", "scale": 1.0}])}, headers=auth)
    assert response.status_code == 200, response.text
    out = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    assert out.size == (64, 96)  # upright, as the EXIF orientation says
    facts = json.loads(out.text["lorastudio"])  # the after image says what made it
    assert facts["strength"] == 0.5 and facts["control"] == "none" and facts["steps"] == 4
    assert [lora[1] for lora in facts["loras"]] == [1.0] and "style" in facts["loras"][0][0]
    assert isinstance(facts["seed"], int) and len(facts["input"]) == 64 and facts["resolution"] == 64


def test_enhance_with_the_served_canny_controlnet_keeps_the_request_in_its_metadata(toy):
    """control=canny runs through the server's ControlNet (a different image from plain img2img at the
    same seed), and the after image records control and scale."""
    import numpy as np

    client, auth, _, _ = toy
    photo = jpeg(64, 64)

    def enhance(**extra):  # noqa: ANN202
        data = {"prompt": "glossy", "steps": "4", "strength": "0.6", "resolution": "64", "seed": "7", **extra}
        response = client.post("/v1/images/edits", files={"image": ("p.jpg", photo, "image/jpeg")}, data=data,
                               headers=auth)
        assert response.status_code == 200, response.text
        return Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))

    plain, held = enhance(), enhance(control="canny", control_scale="1.5")
    assert held.size == plain.size == (64, 64)
    assert np.abs(np.asarray(held, dtype=float) - np.asarray(plain, dtype=float)).mean() > 0.5
    facts = json.loads(held.text["lorastudio"])
    assert facts["control"] == "canny" and facts["control_scale"] == 1.5
    assert json.loads(plain.text["lorastudio"])["control"] == "none"
    again = enhance(control="canny", control_scale="1.5")  # fixed seed: the same pixels again
    assert np.array_equal(np.asarray(again), np.asarray(held))


def test_a_lora_whose_shapes_do_not_fit_is_refused_and_the_base_is_untouched(toy, tiny_sd15_dir, tmp_path):
    client, auth, _, _ = toy
    import torch
    from safetensors.torch import save_file

    wide = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768),
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(64, 4)}
    save_file(wide, str(tmp_path / "wide.safetensors"))
    refused = client.post("/v1/loras", files={"file": ("w.safetensors", (tmp_path / "wide.safetensors").read_bytes())},
                          data={"id": "wide"}, headers=auth)
    assert refused.status_code == 422 and refused.json()["code"] == "lora_model_mismatch"


def _dataset_zip(n: int = 4) -> bytes:
    from lorastudio.toyworld.demo import photo_specs, sidecar_caption
    from lorastudio.toyworld.scenes import render

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, spec in enumerate(photo_specs(n)):
            image = io.BytesIO()
            render(spec, 64, 64, seed=i).save(image, "PNG")
            archive.writestr(f"photos/dish_{i}.png", image.getvalue())
            archive.writestr(f"photos/dish_{i}.txt", sidecar_caption(spec))
    return buffer.getvalue()


def _train_until_step(client, auth, app, lora_id: str, steps: int, every: int, at: int) -> str:
    """Submit a toy training through /v1/trainings and wait until it has logged step `at`; its job id."""
    config = {"trigger": "ohwx_kfood_style", "lora_id": lora_id, "steps": steps, "checkpoint_every": every,
              "resolution": 64}
    response = client.post("/v1/trainings", files={"dataset": ("d.zip", _dataset_zip())},
                           data={"config": json.dumps(config)}, headers=auth)
    assert response.status_code == 202, response.text
    job_id, store = response.json()["id"], app.state.store
    end = time.time() + 300
    while time.time() < end and not any(t == "step" and d.get("step", 0) >= at for _, t, d in store.events_after(job_id)):
        time.sleep(0.2)
    return job_id


def test_training_through_the_api_registers_its_lora_and_survives_a_lost_worker(toy):
    client, auth, app, _ = toy
    job_id = _train_until_step(client, auth, app, "trained-1", steps=8, every=2, at=3)
    store = app.state.store
    end = time.time() + 300
    os.kill(app.state.supervisor.pids()["w0"], signal.SIGKILL)  # mid-training
    while time.time() < end and store.get(job_id).status not in ("succeeded", "failed"):
        time.sleep(0.5)
    view = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    assert view["status"] == "succeeded", view
    assert view["attempts"] == 2 and view["lora_id"] == "trained-1"
    log = (app.state.settings.data_dir / "datasets" / store.get(job_id).params["run_id"] / "train.log").read_text()
    assert "resumed from" in log  # the second worker continued from a checkpoint, not from step 0
    assert any(r["id"] == "trained-1" for r in client.get("/v1/loras", headers=auth).json()["data"])
    generated = client.post("/v1/images/generations", json={**BODY, "loras": [{"id": "trained-1", "scale": 1.0}]},
                            headers=auth)
    assert generated.status_code == 200


def test_stopping_a_training_run_saves_a_checkpoint_and_resume_continues_from_it(toy):
    from lorastudio.studio.pages import status_label

    client, auth, app, _ = toy
    job_id = _train_until_step(client, auth, app, "stopped-1", steps=40, every=20, at=3)
    store, end = app.state.store, time.time() + 300
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code in (200, 202)
    while time.time() < end and store.get(job_id).status == "running":
        time.sleep(0.2)
    view = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    saved = view["result"]["saved_step"]
    assert view["status"] == "canceled" and 3 <= saved < 40, view
    run = app.state.settings.data_dir / "datasets" / store.get(job_id).params["run_id"] / "run"
    assert (run / "checkpoints" / f"step_{saved}" / "COMPLETE.json").is_file()
    assert not (run / "final").exists() and status_label(view) == "stopped (saved)"
    assert [d for _, t, d in store.events_after(job_id) if t == "canceled"][-1]["saved_step"] == saved
    resumed = client.post(f"/v1/jobs/{job_id}/retry", headers=auth).json()  # the studio's "Resume" button
    while time.time() < end and store.get(resumed["id"]).status not in ("succeeded", "failed"):
        time.sleep(0.5)
    assert store.get(resumed["id"]).status == "succeeded"
    log = (run.parent / "train.log").read_text()
    assert "resumed from" in log and (run / "final" / "lora.safetensors").is_file()
    steps = [d["step"] for _, t, d in store.events_after(resumed["id"]) if t == "step"]
    assert steps and min(steps) > saved and max(steps) == 40  # no step trained twice


def test_sample_now_renders_the_sample_prompts_mid_run(toy, tmp_path):
    """A studio training run with sample prompts but no sample schedule: "Sample now" makes the
    trainer render them after its next step, announced as a `sample` event; "Save now" writes a
    checkpoint off the schedule while the run goes on; then Stop."""
    import yaml

    from lorastudio.toyworld.demo import write_photos

    client, auth, app, _ = toy
    photos = tmp_path / "photos"
    write_photos(photos, 4, (96, 96), seed=5)
    files = [("files", (p.name, p.read_bytes())) for p in sorted(photos.iterdir())]
    made = client.post("/v1/datasets", data={"id": "sampled", "trigger": "ohwx_kfood_style"}, files=files, headers=auth)
    assert made.status_code == 201, made.text
    config = yaml.safe_load(client.get("/v1/configs/default?family=sd15", headers=auth).json()["yaml"])
    config["train"]["max_steps"] = 400
    config["save"]["every_n_steps"] = 200
    config["sample"].update(every_n_steps=None, at_start=False, width=64, height=64, steps=2,
                            prompts=["ohwx_kfood_style, a photo of bibimbap"])
    body = {"lora_id": "sampled-1", "resolution": 64, "override_reason": "toy data: the findings are expected",
            "config_yaml": yaml.safe_dump(config)}
    response = client.post("/v1/datasets/sampled/trainings", json=body, headers=auth)
    assert response.status_code == 202, response.text
    job_id, store = response.json()["id"], app.state.store
    end = time.time() + 300
    while time.time() < end and not any(t == "step" and d.get("step", 0) >= 2 for _, t, d in store.events_after(job_id)):
        time.sleep(0.2)
    asked_at = max(d["step"] for _, t, d in store.events_after(job_id) if t == "step")
    assert client.post(f"/v1/jobs/{job_id}/sample-now", headers=auth).status_code == 202
    while time.time() < end and not any(t == "sample" for _, t, _ in store.events_after(job_id)):
        time.sleep(0.2)
    (sample,) = [d for _, t, d in store.events_after(job_id) if t == "sample"]
    assert asked_at < sample["step"] < 400 and sample["files"] == ["00.png"]
    assert client.get(f"/v1/jobs/{job_id}/samples/{sample['step']}/00.png", headers=auth).status_code == 200
    from lorastudio.serving.runners import complete_steps

    checkpoints = app.state.settings.data_dir / "datasets" / store.get(job_id).params["run_id"] / "run" / "checkpoints"
    asked_at = max(d["step"] for _, t, d in store.events_after(job_id) if t == "step")
    assert client.post(f"/v1/jobs/{job_id}/save-now", headers=auth).status_code == 202  # "Save now"
    while time.time() < end and not complete_steps(checkpoints):
        time.sleep(0.2)
    (saved,) = complete_steps(checkpoints)
    assert asked_at < saved < 200 and store.get(job_id).status == "running"  # off schedule, and it trains on
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code in (200, 202)
    while time.time() < end and store.get(job_id).status == "running":
        time.sleep(0.2)
    assert store.get(job_id).status == "canceled"
    late = client.post(f"/v1/jobs/{job_id}/sample-now", headers=auth)
    assert late.status_code == 409 and late.json()["code"] == "not_running"
    assert client.post(f"/v1/jobs/{job_id}/save-now", headers=auth).status_code == 409


def test_a_failing_training_shows_its_first_error_and_log_tail_on_the_job_page(toy):
    """Photos too small to train on: the prepare stage fails for real; the studio's job page shows
    the error banner and the tail of train.log that says why."""
    client, auth, app, _ = toy
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(3):
            tiny = io.BytesIO()
            Image.new("RGB", (8, 8), (200, 40 * i, 40)).save(tiny, "PNG")
            archive.writestr(f"photos/tiny_{i}.png", tiny.getvalue())
    response = client.post("/v1/trainings", files={"dataset": ("d.zip", buffer.getvalue())},
                           data={"config": json.dumps({"trigger": "ohwx_kfood_style", "lora_id": "never"})},
                           headers=auth)
    assert response.status_code == 202, response.text
    job_id, store = response.json()["id"], app.state.store
    end = time.time() + 120
    while time.time() < end and store.get(job_id).status in ("queued", "running"):
        time.sleep(0.2)
    view = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert view["status"] == "failed" and view["error"]["code"] == "train_failed", view
    token = auth["Authorization"].split()[1]  # the key that owns the job logs in to the studio
    assert client.post("/studio/login", data={"key": token}, follow_redirects=False).status_code == 303
    page = client.get(f"/studio/jobs/{job_id}").text
    assert 'class="error banner" role="alert">train_failed: the prepare stage failed' in page
    tail = page.split("<h2>Log tail</h2>", 1)[1]
    assert "too_small" in tail and "no image was accepted" in tail
    client.cookies.clear()


def test_training_zips_that_leave_the_dataset_are_refused(toy):
    client, auth, _, _ = toy
    for name in ("../../escape.png", "/abs/path.png", "C:/windows.png"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, b"x")
        response = client.post("/v1/trainings", files={"dataset": ("d.zip", buffer.getvalue())},
                               data={"config": json.dumps({"trigger": "sks", "lora_id": "z"})}, headers=auth)
        assert response.status_code == 422 and response.json()["code"] == "zip_unsafe_path"
    link = io.BytesIO()
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("photos/link.png")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    response = client.post("/v1/trainings", files={"dataset": ("d.zip", link.getvalue())},
                           data={"config": json.dumps({"trigger": "sks", "lora_id": "z"})}, headers=auth)
    assert response.json()["code"] == "zip_symlink"
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("photos/zeros.png", b"\0" * (50 * 1024 * 1024))
    response = client.post("/v1/trainings", files={"dataset": ("d.zip", bomb.getvalue())},
                           data={"config": json.dumps({"trigger": "sks", "lora_id": "z"})}, headers=auth)
    assert response.status_code == 413 and response.json()["code"] == "zip_bomb"
    for bad in ({"trigger": "sks", "lora_id": "z", "output_dir": "/etc"}, {"trigger": "../x", "lora_id": "z"}):
        response = client.post("/v1/trainings", files={"dataset": ("d.zip", _dataset_zip(1))},
                               data={"config": json.dumps(bad)}, headers=auth)
        assert response.status_code == 422 and response.json()["code"] == "invalid_config"
