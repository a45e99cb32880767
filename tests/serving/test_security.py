"""serving.md §2c, the 25 server security cases, against a real app and a (fake) worker."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest
from serve_helpers import evil_pickle, jpeg, png_header_only
from PIL import Image

BODY = {"prompt": "a photo of bibimbap", "size": "64x64", "steps": 2, "seed": 1}


@pytest.fixture
def svc(service_factory):
    with service_factory(fake=True, max_inflight_per_key=3) as service:
        service.gen = service.key("generate")
        service.wait_ready(service.gen)
        yield service


def _problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert "Traceback" not in response.text and "/tmp/" not in response.text and "/work/" not in response.text
    if code:
        assert body["code"] == code, body
    return body


def test_01_02_default_bind_is_loopback_and_a_public_bind_needs_keys(tmp_path):
    from serve_helpers import free_port

    data = tmp_path / "d"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    refused = subprocess.run([sys.executable, "-m", "lorastudio", "serve", "--host", "0.0.0.0", "--data", str(data),
                              "--fake-workers"], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "not a loopback address and no API key exists" in refused.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lorastudio", "serve", "--port", str(port), "--data", str(data),
                             "--fake-workers", "--workers", "0"], env=env, stderr=subprocess.PIPE)
    try:
        import psutil

        deadline, listening = time.time() + 30, []
        while time.time() < deadline and not listening:
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections() if c.status == "LISTEN"]
            time.sleep(0.2)
        assert listening and all(addr.ip == "127.0.0.1" and addr.port == port for addr in listening)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_03_missing_bad_revoked_and_wrong_scope_keys(svc):
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"},
                    {"Authorization": "Bearer lsk_not-a-real-key"}):
        _problem(svc.client.post("/v1/images/generations", json=BODY, headers=headers), 401, "unauthorized")
    key_id, token = svc.store.create_key(["generate"])
    svc.store.revoke_key(key_id)
    _problem(svc.client.get("/v1/loras", headers=svc.auth(token)), 401)
    _problem(svc.client.get("/metrics", headers=svc.auth(svc.gen)), 403, "forbidden")
    assert svc.client.get("/metrics", headers=svc.auth(svc.key("admin"))).status_code == 200


def test_04_another_keys_job_is_indistinguishable_from_a_missing_one(svc):
    job = svc.client.post("/v1/images/generations", json=BODY, headers={**svc.auth(svc.gen), "Prefer": "respond-async"})
    job_id = job.json()["id"]
    other = svc.auth(svc.key("generate"))
    missing = svc.client.get("/v1/jobs/" + "0" * 32, headers=other)
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events"), ("GET", "/trace")):
        response = svc.client.request(method, f"/v1/jobs/{job_id}{path}", headers=other)
        assert response.status_code == 404 and response.json() == missing.json()
    assert svc.wait_status(job_id, svc.gen)["status"] == "succeeded"  # the cancel attempt did nothing


def test_05_06_image_ids_cannot_name_paths_or_follow_symlinks(svc):
    for bad in ("../../etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..\\..\\x", "/etc/passwd", "a" * 63 + "%00",
                "A" * 64):
        response = svc.client.get(f"/v1/images/{bad}", headers=svc.auth(svc.gen))
        assert response.status_code in (404, 422) and "root:" not in response.text
    planted = "ab" * 32
    folder = svc.data / "outputs" / planted[:2] / planted[2:4]
    folder.mkdir(parents=True)
    os.symlink("/etc/passwd", folder / f"{planted}.png")
    _problem(svc.client.get(f"/v1/images/{planted}", headers=svc.auth(svc.gen)), 404)


def test_07_loras_are_named_by_registry_id_only(svc):
    before = svc.store.counts()
    for bad in ("../../models/x", "/etc/passwd", "http://evil.example/x.safetensors", "Upper", "unknown-id"):
        response = svc.client.post("/v1/images/generations", json={**BODY, "loras": [{"id": bad, "scale": 1}]},
                                   headers=svc.auth(svc.gen))
        _problem(response, 422)
    assert svc.store.counts() == before  # nothing was queued


def test_08_09_adapters_that_are_not_safetensors_are_refused_without_side_effects(svc, tmp_path):
    trainer = svc.auth(svc.key("train"))
    sentinel = tmp_path / "pwned"
    cases = {"x.safetensors": evil_pickle(sentinel), "x.SafeTensors": evil_pickle(sentinel),
             "huge.safetensors": (10 * 2**30).to_bytes(8, "little") + b"{}",
             "cut.safetensors": (200).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "shape": [2], "da'}
    for i, (name, data) in enumerate(cases.items()):
        response = svc.client.post("/v1/loras", files={"file": (name, data)}, data={"id": f"bad{i}"}, headers=trainer)
        _problem(response, 422, "not_safetensors")
    assert not sentinel.exists()
    assert svc.client.get("/v1/loras", headers=svc.auth(svc.gen)).json()["data"] == []
    assert not list((svc.data / "tmp").iterdir())  # refused uploads leave nothing behind


def test_10_a_lora_for_another_base_is_refused_at_registration(svc, tmp_path):
    import torch
    from safetensors.torch import save_file

    sdxl_like = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 768),
                 "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(768, 4)}
    path = tmp_path / "xl.safetensors"
    save_file(sdxl_like, str(path))
    response = svc.client.post("/v1/loras", files={"file": ("xl.safetensors", path.read_bytes())}, data={"id": "xl"},
                               headers=svc.auth(svc.key("train")))
    assert "sdxl" in _problem(response, 422, "lora_family_mismatch")["detail"]


def _edit(svc, data: bytes, name: str = "p.jpg", mime: str = "image/jpeg", **fields):
    return svc.client.post("/v1/images/edits", files={"image": (name, data, mime)},
                           data={"prompt": "glossy", "steps": "2", **fields}, headers=svc.auth(svc.gen))


def test_12_to_16_uploaded_images_are_checked_before_decoding(svc):
    _problem(_edit(svc, png_header_only(50000, 50000), "bomb.png", "image/png"), 413, "too_many_pixels")
    _problem(_edit(svc, png_header_only(15000, 12000), "big.png", "image/png"), 413, "too_many_pixels")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF", save_all=True, append_images=[Image.new("RGB", (8, 8), "red")])
    bmp, tiff = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, "BMP")
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    for data in (gif.getvalue(), bmp.getvalue(), tiff.getvalue(), b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                 b"%PDF-1.4 junk", os.urandom(500)):
        _problem(_edit(svc, data, "x.jpg", "image/jpeg"), 415, "unsupported_image")  # the claimed type is ignored
    _problem(_edit(svc, jpeg()[:200]), 422, "corrupt_image")
    _problem(_edit(svc, b""), 422, "empty_image")
    animated = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(animated, "WEBP", save_all=True,
                                            append_images=[Image.new("RGB", (32, 32), "red")])
    assert _edit(svc, animated.getvalue(), "a.webp", "image/webp").status_code == 200  # first frame only


def test_15_bodies_are_capped_before_they_are_read(svc):
    big = b"x" * (26 * 1024 * 1024)
    _problem(_edit(svc, big), 413, "body_too_large")

    def chunks():
        for _ in range(30):
            yield b"y" * (1024 * 1024)

    response = svc.client.post("/v1/images/edits", content=chunks(), headers={**svc.auth(svc.gen),
                               "Content-Type": "multipart/form-data; boundary=b"})
    _problem(response, 413, "body_too_large")
    huge_json = json.dumps({**BODY, "prompt": "a" * (2 * 1024 * 1024)})
    _problem(svc.client.post("/v1/images/generations", content=huge_json,
                             headers={**svc.auth(svc.gen), "Content-Type": "application/json"}), 413)


def test_17_every_parameter_is_bounded_and_nothing_is_queued(svc):
    before = svc.store.counts()
    for bad in ({"size": "100000x64"}, {"size": "65x64"}, {"steps": 10000}, {"n": 1000}, {"guidance": "NaN"},
                {"seed": -1}, {"seed": 2**80}, {"loras": [{"id": "a", "scale": 1e9}]}, {"steps": 0}, {"extra": 1}):
        _problem(svc.client.post("/v1/images/generations", json={**BODY, **bad}, headers=svc.auth(svc.gen)), 422)
    assert svc.client.post("/v1/images/generations", json={**BODY, "steps": 150, "size": "64x64"},
                           headers={**svc.auth(svc.gen), "Prefer": "respond-async"}).status_code == 202
    assert sum(svc.store.counts().values()) == sum(before.values()) + 1


def test_18_19_20_prompts_are_inert_text_and_logs_stay_json(svc):
    _problem(svc.client.post("/v1/images/generations", json={**BODY, "prompt": "a" * 5000}, headers=svc.auth(svc.gen)), 422)
    for bad in ("nul\x00byte", "bell\x07", "rtl\u202eoverride"):
        _problem(svc.client.post("/v1/images/generations", json={**BODY, "prompt": bad}, headers=svc.auth(svc.gen)), 422)
    tricky = "{__import__('os').system('id')} $(id) %s%n <lora:evil:1>\n{\"job_id\": \"forged\"}"
    response = svc.client.post("/v1/images/generations", json={**BODY, "prompt": tricky}, headers=svc.auth(svc.gen))
    assert response.status_code == 200
    trace = svc.client.get(f"/v1/jobs/{response.headers['x-job-id']}/trace", headers=svc.auth(svc.gen)).json()["trace"]
    run = next(e for e in trace if e["stage"] == "fake_run")
    assert run["prompt"] == tricky and run["loras"] == []  # verbatim, and no adapter was implied
    lines = [line for line in (svc.data / "worker-w0.log").read_text().splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["job_id"] for line in lines)
    assert not any(json.loads(line)["job_id"] == "forged" for line in lines)


def test_21_exif_and_gps_are_stripped_from_inputs_and_outputs(svc):
    assert Image.open(io.BytesIO(jpeg(exif_gps=True))).getexif().get_ifd(0x8825)  # the upload has GPS
    response = _edit(svc, jpeg(exif_gps=True), response_format="b64_json")
    assert response.status_code == 200
    for path in (svc.data / "inputs").rglob("*.png"):
        stored = Image.open(path)
        assert not stored.getexif() and "exif" not in stored.info
    import base64

    out = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    assert not out.getexif() and svc.gen not in json.dumps(out.info) and "/tmp/" not in json.dumps(out.info)


def test_22_origin_and_host_checks(svc):
    for origin in ("https://evil.example", "null"):
        response = svc.client.post("/v1/images/generations", json=BODY, headers={**svc.auth(svc.gen), "Origin": origin})
        _problem(response, 403, "bad_origin")
    _problem(svc.client.get("/healthz", headers={"Host": "attacker.example"}), 421, "bad_host")
    ok = svc.client.get("/healthz")
    assert ok.status_code == 200 and "access-control-allow-origin" not in ok.headers


def test_23_one_key_flooding_gets_429_and_others_still_get_in(service_factory):
    with service_factory(fake=True, fake_step_s=0.2, max_inflight_per_key=3) as svc:
        flood, other = svc.key("generate"), svc.key("generate")
        svc.wait_ready(flood)
        async_headers = {**svc.auth(flood), "Prefer": "respond-async"}
        codes = [svc.client.post("/v1/images/generations", json={**BODY, "steps": 20}, headers=async_headers)
                 for _ in range(6)]
        assert [r.status_code for r in codes[:3]] == [202, 202, 202]
        for response in codes[3:]:
            _problem(response, 429, "too_many_inflight")
            assert int(response.headers["Retry-After"]) >= 1
        assert svc.client.post("/v1/images/generations", json=BODY,
                               headers={**svc.auth(other), "Prefer": "respond-async"}).status_code == 202


def test_24_no_dangerous_routes_exist(svc):
    for method, path in (("POST", "/options"), ("POST", "/server-kill"), ("POST", "/install"),
                         ("POST", "/sdapi/v1/options"), ("POST", "/v1/admin/exec")):
        _problem(svc.client.request(method, path, headers=svc.auth(svc.key("admin"))), 404)
    response = svc.client.post("/v1/images/generations", json={**BODY, "output_dir": "/tmp/x"}, headers=svc.auth(svc.gen))
    _problem(response, 422)


def test_25_an_unexpected_error_is_a_generic_problem_with_an_id(svc, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("secret detail /srv/private/path")

    from starlette.testclient import TestClient

    monkeypatch.setattr(svc.store, "counts", boom)
    client = TestClient(svc.app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)
    response = client.post("/v1/images/generations", json=BODY, headers=svc.auth(svc.gen))
    body = _problem(response, 500, "internal_error")
    assert body["error_id"] in body["detail"] and "secret" not in response.text
    assert any(body["error_id"] in r.getMessage() for r in caplog.records)


def test_11_a_crafted_pickle_in_a_checkpoint_is_never_unpickled(tmp_path):
    import torch

    from lorastudio.training.state import load_optimizer_state, save_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    save_state(optimizer.state_dict(), tmp_path, "optimizer")
    sentinel = tmp_path / "pwned"
    (tmp_path / "optimizer.pt").write_bytes(evil_pickle(sentinel))
    load_optimizer_state(torch.optim.AdamW(model.parameters()), tmp_path)
    assert not sentinel.exists()
    # Wherever the code base calls torch.load at all, it asks for weights only.
    from pathlib import Path

    import lorastudio

    for path in Path(lorastudio.__file__).parent.rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if "torch.load(" in line and not line.strip().startswith("#"):
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
