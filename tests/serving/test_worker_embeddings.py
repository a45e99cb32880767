"""Trigger embeddings in the service, with a real worker on the shipped toy model: a
textual-inversion file and a pivotal pair (LoRA + embedding) are registered, checked from
their headers, and loaded by the worker through the one loader."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time

import pytest
from serve_helpers import evil_pickle, jpeg

TRIGGER = "ohwx_kfood_style"


def _toy_width() -> int:
    from lorastudio.toyworld.pretrain import shipped_base_dir

    return json.loads((shipped_base_dir() / "text_encoder" / "config.json").read_text())["hidden_size"]


def _embedding(path, width: int, seed: int = 0, keys=("emb_params",), trigger: str | None = TRIGGER) -> bytes:
    """An embedding file in the layout each UI reads: 2 vectors per encoder, clearly off the base table."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(2, width, generator=gen) * 3 for k in keys}
    save_file(tensors, str(path), metadata={"lorastudio.trigger": trigger} if trigger else None)
    return path.read_bytes()


def _kohya_lora(tmp_path) -> bytes:
    import torch
    from diffusers import StableDiffusionPipeline

    from lorastudio.models.lora import attach_lora, export_adapter, unet_target_modules
    from lorastudio.toyworld.pretrain import shipped_base_dir

    pipe = StableDiffusionPipeline.from_pretrained(str(shipped_base_dir()))
    torch.manual_seed(5)
    attach_lora(pipe.unet, rank=4, alpha=4.0, target_modules=unet_target_modules(pipe.unet, "attn"),
                init_lora_weights=False)
    return export_adapter(tmp_path / "pivot", family="sd15", unet=pipe.unet, text_encoders=[], rank=4,
                          alpha=4.0)["kohya"].read_bytes()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from starlette.testclient import TestClient

    from lorastudio.serving.app import create_app
    from lorastudio.serving.http import Settings
    from lorastudio.serving.store import default_url
    from lorastudio.toyworld.pretrain import shipped_base_dir

    data = tmp_path_factory.mktemp("emb_service")
    files = tmp_path_factory.mktemp("emb_files")
    settings = Settings(data_dir=data, db_url=default_url(data), model=str(shipped_base_dir()), workers=1,
                        lora_cache=3, lease_s=5.0)
    app = create_app(settings)
    _, token = app.state.store.create_key(["generate", "train"])
    auth = {"Authorization": f"Bearer {token}"}
    width = _toy_width()
    emb = _embedding(files / f"{TRIGGER}.safetensors", width)
    lora = _kohya_lora(files)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        def upload(lora_id, file, name, **extra):
            fields = {"file": (name, file)}
            if "embedding" in extra:
                fields["embedding"] = (f"{TRIGGER}.safetensors", extra.pop("embedding"))
            return client.post("/v1/loras", files=fields, data={"id": lora_id, **extra}, headers=auth)

        registered = {
            "kfood-ti": upload("kfood-ti", emb, f"{TRIGGER}.safetensors"),
            "kfood-alt": upload("kfood-alt", emb, "anything.safetensors", trigger="kfood_alt"),
            "kfood-pair": upload("kfood-pair", lora, "lora.safetensors", embedding=emb),
            "lora-only": upload("lora-only", lora, "lora.safetensors"),
        }
        end = time.time() + 180
        while client.get("/readyz", headers=auth).status_code != 200 and time.time() < end:
            time.sleep(0.2)
        yield client, auth, registered, upload, files, width, data


def _generate(client, auth, prompt: str, loras=()):
    body = {"prompt": prompt, "size": "64x64", "steps": 4, "seed": 7, "loras": [{"id": i, "scale": 1.0} for i in loras]}
    return client.post("/v1/images/generations", json=body, headers=auth)


def _hash(response) -> str:
    """The image's pixels (the PNG's text chunk names the prompt and adapters, which differ)."""
    from PIL import Image

    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def test_registration_reads_the_trigger_from_the_file_or_the_request(svc):
    client, auth, registered, _, _, _, _ = svc
    for response in registered.values():
        assert response.status_code == 201, response.text
    ti, alt, pair = (registered[k].json() for k in ("kfood-ti", "kfood-alt", "kfood-pair"))
    assert ti["format"] == "embedding" and ti["embedding"]["trigger"] == TRIGGER and ti["embedding"]["vectors"] == 2
    assert alt["embedding"]["trigger"] == "kfood_alt" and alt["sha256"] == ti["sha256"]  # the same stored file
    assert pair["format"].startswith("kohya") and pair["embedding"] == ti["embedding"]
    listed = {row["id"]: row for row in client.get("/v1/loras", headers=auth).json()["data"]}
    assert listed["kfood-pair"]["embedding"]["trigger"] == TRIGGER and "embedding" not in listed["lora-only"]


def test_the_worker_loads_a_ti_embedding_only_where_it_is_referenced(svc):
    client, auth, *_ = svc
    triggered = f"{TRIGGER}, a photo of bibimbap"
    base = _hash(_generate(client, auth, triggered))
    learned = _hash(_generate(client, auth, triggered, ["kfood-ti"]))
    assert learned != base
    # The same vectors under another trigger word encode to the same text features.
    assert _hash(_generate(client, auth, "kfood_alt, a photo of bibimbap", ["kfood-alt"])) == learned
    plain = "a photo of bibimbap"
    assert _hash(_generate(client, auth, plain, ["kfood-ti"])) == _hash(_generate(client, auth, plain))
    # Loaded but not referenced: the trigger reads as plain text again.
    assert _hash(_generate(client, auth, triggered)) == base
    assert _hash(_generate(client, auth, triggered, ["kfood-ti"])) == learned


def test_a_pivotal_pair_equals_its_lora_plus_its_embedding(svc):
    client, auth, *_ = svc
    prompt = f"{TRIGGER}, a photo of bibimbap"
    pair = _hash(_generate(client, auth, prompt, ["kfood-pair"]))
    assert pair not in (_hash(_generate(client, auth, prompt, ["lora-only"])),
                        _hash(_generate(client, auth, prompt, ["kfood-ti"])))
    assert _hash(_generate(client, auth, prompt, ["lora-only", "kfood-ti"])) == pair
    assert _hash(_generate(client, auth, prompt, ["kfood-pair"])) == pair


def test_two_embeddings_with_one_trigger_in_one_request_are_refused(svc):
    client, auth, *_ = svc
    response = _generate(client, auth, f"{TRIGGER}, a photo of bibimbap", ["kfood-ti", "kfood-pair"])
    assert response.status_code == 409 and response.json()["code"] == "lora_unusable"
    assert "both answer to the trigger" in response.json()["detail"]


def test_an_edit_request_uses_the_embedding(svc):
    client, auth, *_ = svc

    def edit(loras):
        response = client.post("/v1/images/edits", files={"image": ("p.jpg", jpeg(64, 64), "image/jpeg")},
                               data={"prompt": f"{TRIGGER}, glossy", "steps": "4", "strength": "0.8", "resolution": "64",
                                     "seed": "3", "loras": json.dumps([{"id": i, "scale": 1.0} for i in loras])},
                               headers=auth)
        return _hash(response)

    assert edit(["kfood-ti"]) != edit([])


@pytest.mark.parametrize("case, code", [
    ("sdxl_keys", "embedding_family_mismatch"), ("wide", "embedding_model_mismatch"),
    ("in_vocab", "trigger_in_vocabulary"), ("bad_name", "bad_trigger"), ("pickle", "not_safetensors"),
    ("trigger_on_lora", "bad_trigger"), ("int_vectors", "unsupported_embedding"),
])
def test_unusable_embeddings_are_refused_at_registration(svc, case, code):
    import torch
    from safetensors.torch import save_file

    client, auth, _, upload, files, width, data = svc
    emb = files / f"{case}.safetensors"
    if case == "sdxl_keys":
        response = upload(case.replace("_", "-"), _embedding(emb, width, keys=("clip_l", "clip_g")), emb.name)
    elif case == "wide":
        response = upload("wide", _embedding(emb, width + 8), emb.name)
    elif case == "in_vocab":
        response = upload("in-vocab", _embedding(emb, width), emb.name, trigger="food")
    elif case == "bad_name":
        response = upload("bad-name", _embedding(emb, width, trigger=None), "Bad-Name.safetensors")
    elif case == "pickle":
        sentinel = files / "unpickled"
        response = upload("pkl", _kohya_lora(files), "lora.safetensors", embedding=evil_pickle(sentinel))
        assert not sentinel.exists()
    elif case == "trigger_on_lora":
        response = upload("trig-lora", _kohya_lora(files), "lora.safetensors", trigger="kfood_x")
    else:
        save_file({"emb_params": torch.ones(2, width, dtype=torch.int32)}, str(emb))
        response = upload("int-vectors", emb.read_bytes(), emb.name)
    assert response.status_code == 422 and response.json()["code"] == code, response.text
    assert not list((data / "tmp").glob("*.upload"))  # nothing refused is kept


def test_deleting_one_id_keeps_a_file_another_id_uses(svc):
    client, auth, registered, upload, files, width, data = svc
    sha = registered["kfood-alt"].json()["sha256"]
    stored = [p for p in (data / "loras").rglob("*") if p.is_file() and sha in p.name]
    assert client.delete("/v1/loras/kfood-alt", headers=auth).status_code == 200
    assert all(p.is_file() for p in stored)  # kfood-ti and kfood-pair still use it
    assert _hash(_generate(client, auth, f"{TRIGGER}, a photo of bibimbap", ["kfood-ti"]))
