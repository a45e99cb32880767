"""The service on a tiny FLUX.1 model: uploads of every Flux layout, variant defaults, a real worker, training."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import zipfile

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from serve_helpers import jpeg

from lorastudio.serving.uploads import UploadError, base_width, inspect_lora

RANK, ALPHA = 4, 2.0


@pytest.fixture(scope="module")
def flux_dev(tmp_path_factory):
    from lorastudio.models.tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("flux_dev") / "model", variant="dev", seed=0)


@pytest.fixture(scope="module")
def flux_files(flux_dev, tmp_path_factory):
    """One random LoRA on the tiny dev transformer in every layout the Flux importer reads."""
    from diffusers import FluxTransformer2DModel

    from lorastudio.models import flux_formats as ff
    from lorastudio.models.families import get_family
    from lorastudio.models.lora import attach_lora

    transformer = FluxTransformer2DModel.from_pretrained(str(flux_dev / "transformer"))
    torch.manual_seed(1)
    attach_lora(transformer, rank=RANK, alpha=ALPHA, init_lora_weights=False,
                target_modules=get_family("flux").target_modules(transformer, "all_linear"))
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    out = tmp_path_factory.mktemp("flux_loras")
    written = ff.export_flux_adapter(out, variant="dev", transformer=transformer, text_encoders=[], rank=RANK,
                                     alpha=ALPHA, formats=("kohya", "diffusers"))
    files = {"peft": written["diffusers"], "kohya": written["kohya"], "baked": written["baked"]}
    kohya = load_file(str(written["kohya"]))
    renames = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}
    bfl_peft = {}
    for key, value in kohya.items():
        stem, _, suffix = key.partition(".")
        bfl_peft[f"diffusion_model.{ff._bfl_from_kohya(stem.removeprefix('lora_unet_'))}.{renames[suffix]}"] = value
    xlabs = {f"double_blocks.0.processor.qkv_lora{n}.{d}.weight": kohya[f"lora_unet_double_blocks_0_{s}_attn_qkv.lora_{d}.weight"]
             for n, s in (("1", "img"), ("2", "txt")) for d in ("down", "up")}
    baked = load_file(str(written["baked"]))
    onetrainer = {}
    for key, value in baked.items():
        path, _, suffix = key.removeprefix("transformer.").rpartition(".lora_")
        onetrainer["lora_transformer_" + path.replace(".", "_") + {"A.weight": ".lora_down.weight",
                                                                    "B.weight": ".lora_up.weight"}[suffix]] = value
    for name, state in (("bfl_peft", bfl_peft), ("xlabs", xlabs), ("onetrainer", onetrainer)):
        save_file(state, str(out / f"{name}.safetensors"))
        files[name] = out / f"{name}.safetensors"
    return files


def _sd_lora(path) -> None:
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 32),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(32, 2)},
              str(path))


@pytest.mark.parametrize("layout", ["peft", "kohya", "baked", "bfl_peft", "xlabs", "onetrainer"])
def test_every_flux_layout_registers_with_the_importers_coverage(flux_files, flux_dev, layout):
    from lorastudio.models.flux_formats import read_flux_file

    info = inspect_lora(flux_files[layout], "flux", base_width(str(flux_dev)))
    modules, report, _ = read_flux_file(flux_files[layout])  # the full importer, tensors and all
    assert info.family == "flux" and info.format == report.layout
    assert info.modules == len(modules) and info.coverage == report.line()
    assert "every key mapped" in info.coverage


def test_flux_uploads_are_refused_in_one_line_for_the_wrong_family_width_or_keys(flux_files, flux_dev, tmp_path):
    width = base_width(str(flux_dev))
    with pytest.raises(UploadError, match="for flux and the served base model is sd15") as err:
        inspect_lora(flux_files["kohya"], "sd15", 32)
    assert err.value.code == "lora_family_mismatch"
    _sd_lora(tmp_path / "sd.safetensors")
    with pytest.raises(UploadError, match="for sd15 and the served base model is flux") as err:
        inspect_lora(tmp_path / "sd.safetensors", "flux", width)
    assert err.value.code == "lora_family_mismatch"
    with pytest.raises(UploadError, match="width") as err:
        inspect_lora(flux_files["kohya"], "flux", width * 2)
    assert err.value.code == "lora_model_mismatch"
    state = load_file(str(flux_files["peft"]))
    state["transformer.pos_embed.lora_A.weight"] = torch.zeros(2, 4)
    state["transformer.pos_embed.lora_B.weight"] = torch.zeros(4, 2)
    save_file(state, str(tmp_path / "extra.safetensors"))
    with pytest.raises(UploadError, match="map to no FLUX.1 module.*pos_embed") as err:
        inspect_lora(tmp_path / "extra.safetensors", "flux", width)
    assert err.value.code == "unsupported_lora" and "\n" not in str(err.value)


def test_schnell_requests_get_schnell_defaults_unless_they_say_otherwise(service_factory, tmp_path):
    from lorastudio.models.tiny_flux import build_tiny_flux
    from lorastudio.serving.served import served_model

    schnell = build_tiny_flux(tmp_path / "schnell", variant="schnell", seed=0)
    served = served_model(str(schnell), "flux")
    assert (served.variant, served.steps, served.guidance) == ("schnell", 4, 0.0)
    assert served.call_kwargs == {"max_sequence_length": 256}
    with service_factory(fake=True, model=str(schnell), family="flux") as svc:
        token = svc.key("generate")
        svc.wait_ready(token)
        body = {"prompt": "x", "size": "64x64"}
        plain = svc.client.post("/v1/images/generations", json=body, headers=svc.auth(token))
        assert plain.status_code == 200, plain.text
        params = svc.store.get(plain.headers["x-job-id"]).params
        assert (params["steps"], params["guidance"]) == (4, 0.0)
        chosen = svc.client.post("/v1/images/generations", json={**body, "steps": 6, "guidance": 1.5},
                                 headers=svc.auth(token))
        params = svc.store.get(chosen.headers["x-job-id"]).params
        assert (params["steps"], params["guidance"]) == (6, 1.5)
        odd = svc.client.post("/v1/images/generations", json={**body, "size": "72x64"}, headers=svc.auth(token))
        assert odd.status_code == 422 and "multiples of 16" in odd.json()["detail"]


def _image(response):
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["data"][0]["b64_json"])


def _dataset_zip(n: int = 2) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(n):
            image = io.BytesIO()
            Image.new("RGB", (64, 64), (40 * i + 60, 120, 200 - 40 * i)).save(image, "PNG")
            archive.writestr(f"photos/dish_{i}.png", image.getvalue())
            archive.writestr(f"photos/dish_{i}.txt", f"a photo of dish {i}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def flux_service(flux_dev, tmp_path_factory):
    from starlette.testclient import TestClient

    from lorastudio.serving.app import create_app
    from lorastudio.serving.http import Settings
    from lorastudio.serving.store import default_url

    data = tmp_path_factory.mktemp("flux_service")
    app = create_app(Settings(data_dir=data, db_url=default_url(data), model=str(flux_dev), family="flux", workers=1,
                              lora_cache=2, lease_s=5.0))
    _, token = app.state.store.create_key(["generate", "train"])
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        end = time.time() + 180
        while client.get("/readyz", headers=auth).status_code != 200 and time.time() < end:
            time.sleep(0.2)
        yield client, auth, app


def test_a_real_flux_worker_renders_with_dev_defaults_and_lora_uploads(flux_service, flux_files, tmp_path):
    client, auth, app = flux_service
    body = {"prompt": "ohwx_kfood_style, a photo of bibimbap", "size": "64x64", "seed": 3}
    base = client.post("/v1/images/generations", json=body, headers=auth)
    assert base.status_code == 200, base.text
    job = app.state.store.get(base.headers["x-job-id"])
    assert (job.params["steps"], job.params["guidance"]) == (28, 3.5)
    trace = client.get(f"/v1/jobs/{job.id}/trace", headers=auth).json()["trace"]
    assert len([e for e in trace if e["stage"] == "denoise_step"]) == 28
    base = hashlib.sha256(_image(base)).hexdigest()

    uploaded = {}
    for layout in ("kohya", "xlabs"):
        done = client.post("/v1/loras", files={"file": ("l.safetensors", flux_files[layout].read_bytes())},
                           data={"id": f"flux-{layout}"}, headers=auth)
        assert done.status_code == 201, done.text
        uploaded[layout] = done.json()
    assert uploaded["kohya"]["family"] == "flux" and uploaded["kohya"]["format"] == "kohya"
    assert "every key mapped" in uploaded["kohya"]["coverage"]
    _sd_lora(tmp_path / "sd.safetensors")
    refused = client.post("/v1/loras", files={"file": ("sd.safetensors", (tmp_path / "sd.safetensors").read_bytes())},
                          data={"id": "sd-one"}, headers=auth)
    assert refused.status_code == 422 and refused.json()["code"] == "lora_family_mismatch"

    fast = {**body, "steps": 3}
    plain = hashlib.sha256(_image(client.post("/v1/images/generations", json=fast, headers=auth))).hexdigest()
    styled = client.post("/v1/images/generations", json={**fast, "loras": [{"id": "flux-kohya", "scale": 1.0}]},
                         headers=auth)
    assert hashlib.sha256(_image(styled)).hexdigest() != plain
    xlabs = client.post("/v1/images/generations", json={**fast, "loras": [{"id": "flux-xlabs", "scale": 1.0}]},
                        headers=auth)
    assert hashlib.sha256(_image(xlabs)).hexdigest() not in (plain, hashlib.sha256(_image(styled)).hexdigest())
    again = client.post("/v1/images/generations", json=fast, headers=auth)
    assert hashlib.sha256(_image(again)).hexdigest() == plain  # loaded adapters never leak into a plain job

    edit = client.post("/v1/images/edits", files={"image": ("p.jpg", jpeg(72, 40), "image/jpeg")},
                       data={"prompt": "glossy", "steps": "4", "strength": "0.6", "resolution": "64",
                             "loras": json.dumps([{"id": "flux-kohya", "scale": 0.5}])}, headers=auth)
    assert Image.open(io.BytesIO(_image(edit))).size == (72, 40)
    edit_job = app.state.store.get(edit.headers["x-job-id"])
    assert edit_job.params["guidance"] == 3.5 and edit_job.params["steps"] == 4


def test_a_flux_training_job_through_the_api_registers_a_lora_that_renders(flux_service):
    client, auth, app = flux_service
    config = {"trigger": "ohwx_kfood_style", "lora_id": "flux-trained", "steps": 3, "checkpoint_every": 2,
              "resolution": 64, "rank": 2}
    response = client.post("/v1/trainings", files={"dataset": ("d.zip", _dataset_zip())},
                           data={"config": json.dumps(config)}, headers=auth)
    assert response.status_code == 202, response.text
    job_id, store = response.json()["id"], app.state.store
    end = time.time() + 300
    while time.time() < end and store.get(job_id).status not in ("succeeded", "failed"):
        time.sleep(0.5)
    view = client.get(f"/v1/trainings/{job_id}", headers=auth).json()
    log = (app.state.settings.data_dir / "datasets" / store.get(job_id).params["run_id"] / "train.log").read_text()
    assert view["status"] == "succeeded", (view, log[-2000:])
    row = next(r for r in client.get("/v1/loras", headers=auth).json()["data"] if r["id"] == "flux-trained")
    assert row["family"] == "flux" and row["format"] == "kohya"
    generated = client.post("/v1/images/generations", headers=auth,
                            json={"prompt": "ohwx_kfood_style, a dish", "size": "64x64", "steps": 2,
                                  "loras": [{"id": "flux-trained", "scale": 1.0}]})
    assert generated.status_code == 200, generated.text


def test_lorastudio_serve_detects_a_flux_folder_and_renders_with_its_defaults(flux_dev, tmp_path):
    import os
    import subprocess
    import sys

    import httpx
    from serve_helpers import free_port

    from lorastudio.serving.store import JobStore, default_url

    data, port = tmp_path / "d", free_port()
    data.mkdir()
    _, token = JobStore(default_url(data)).create_key(["generate"])
    auth = {"Authorization": f"Bearer {token}"}
    proc = subprocess.Popen([sys.executable, "-m", "lorastudio", "serve", "--port", str(port), "--data", str(data),
                             "--model", str(flux_dev)], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 180
        while time.time() < end:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", headers=auth).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        done = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations", headers=auth, timeout=120,
                          json={"prompt": "a dish", "size": "64x64", "steps": 2, "seed": 1})
        png = Image.open(io.BytesIO(_image(done)))
        info = json.loads(png.text["lorastudio"])
        assert (info["steps"], info["guidance"]) == (2, 3.5)  # only a Flux dev folder gives 3.5 by default
    finally:
        proc.terminate()
        proc.wait(timeout=60)

