"""Studio pages and their JSON API end to end: upload, gallery, editor, bulk edits, undo, contamination, jobs, keys."""

from __future__ import annotations

import hashlib
import io
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from lorastudio.data.manifest import read_manifest

TRIGGER = "ohwx_kfood_style"


@pytest.fixture
def svc(studio_factory, photos):
    with studio_factory(workers=0) as studio:
        studio.refresh_csrf()
        studio.uploaded = studio.upload(photos)
        yield studio


def _sidecars(svc) -> dict[str, str]:
    folder = svc.data / "studio" / "datasets" / "kfood" / "dataset" / "images"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.txt"))}


def _images(svc) -> list[dict]:
    return svc.client.get("/v1/datasets/kfood").json()["images"]


def test_upload_prepares_and_lists_rejections_with_reasons(svc, tmp_path):
    assert svc.uploaded["accepted"] == len(_images(svc)) >= 10
    bad = [("files", ("notes.jpg", b"not an image")), ("files", ("tiny.png", _png(8, 8)))]
    out = svc.client.post("/v1/datasets", data={"id": "bad", "trigger": TRIGGER}, files=bad, headers=svc.h()).json()
    reasons = {r["source"]: r["reason"] for r in out["rejected"]}
    assert out["accepted"] == 0 and set(reasons) == {"notes.jpg", "tiny.png"} and all(reasons.values())
    page = svc.client.get("/studio/datasets/bad").text
    assert "2 rejected file(s)" in page and "notes.jpg" in page
    assert svc.client.post("/v1/datasets", data={"id": "../x", "trigger": TRIGGER}, files=bad,
                           headers=svc.h()).status_code == 422


def _png(w: int, h: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_thumbnails_are_small_cached_per_content_hash_and_revalidate(svc):
    import shutil

    thumbs = svc.data / "studio" / "thumbs"
    made_at_prepare = {p.name: p.read_bytes() for p in thumbs.rglob("*.jpg")}
    assert len(made_at_prepare) == svc.uploaded["accepted"]  # a fresh gallery never waits on thumbnailing
    shutil.rmtree(thumbs)  # the on-demand path: a missing thumbnail is made on first request, once
    image = _images(svc)[0]["id"]
    url = f"/v1/datasets/kfood/images/{image}/thumbnail"
    first = svc.client.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert "immutable" in first.headers["cache-control"] and len(first.content) <= 40 * 1024
    assert max(Image.open(io.BytesIO(first.content)).size) <= 256
    cached = list(thumbs.rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == first.content == made_at_prepare[cached[0].name]
    again = svc.client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_gallery_pages_lazily_and_filters(svc, monkeypatch):
    from lorastudio.studio import pages

    monkeypatch.setattr(pages, "PAGE_SIZE", 5)
    total = len(_images(svc))
    first = svc.client.get("/studio/datasets/kfood").text
    assert first.count('class="cell"') == 5 and 'hx-trigger="revealed"' in first and 'loading="lazy"' in first
    seen = 5
    page = 1
    while True:
        part = svc.client.get(f"/studio/datasets/kfood/grid?page={page}").text
        seen += part.count('class="cell"')
        if "hx-get" not in part:
            break
        page += 1
    assert seen == total
    blurry = [i["id"] for i in _images(svc) if any(f == "blurry" for f in i["flags"])]
    filtered = svc.client.get("/studio/datasets/kfood?q=flag:blurry").text
    assert filtered.count('class="cell"') == min(5, len(blurry))
    assert svc.client.get("/studio/datasets/kfood?q=lint:no_trigger").text.count('class="cell"') == min(5, total)


def test_bulk_slot_edit_previews_applies_to_exactly_the_selection_and_undoes_byte_for_byte(svc):
    before = _sidecars(svc)
    chosen = [i["id"] for i in _images(svc)[:5]]
    body = {"ids": chosen, "slot": "objective", "phrase": "on a black background", "dry_run": True}
    plan = svc.client.post("/v1/datasets/kfood/edits", json=body, headers=svc.h()).json()
    assert len(plan["changes"]) == 5 and all("on a black background" in c["after"] for c in plan["changes"])
    assert _sidecars(svc) == before
    done = svc.client.post("/v1/datasets/kfood/edits", json={**body, "dry_run": False}, headers=svc.h()).json()
    after = _sidecars(svc)
    assert {name for name in before if before[name] != after[name]} == {f"{i}.txt" for i in chosen}
    assert done["op"]
    undone = svc.client.post("/v1/datasets/kfood/undo", headers=svc.h()).json()
    assert sorted(undone["reverted"]) == sorted(chosen) and _sidecars(svc) == before


def test_editor_saves_versions_conflicts_and_undoes_on_disk(svc):
    image = _images(svc)[0]
    sidecar = svc.data / "studio" / "datasets" / "kfood" / "dataset" / "images" / f"{image['id']}.txt"
    editor = svc.client.get(f"/studio/datasets/kfood/images/{image['id']}").text
    assert 'for="slot-style"' in editor and 'id="slot-style"' in editor and 'data-next=' in editor
    original = sidecar.read_text(encoding="utf-8")
    view = svc.client.get(f"/v1/datasets/kfood/images/{image['id']}").json()
    slots = {**view["slots"], "trigger": TRIGGER, "style": "glossy, studio lighting"}
    saved = svc.client.put(f"/v1/datasets/kfood/images/{image['id']}/caption", json={"slots": slots, "version": view["version"]},
                           headers=svc.h())
    assert saved.status_code == 200 and saved.json()["version"] != view["version"]
    assert sidecar.read_text(encoding="utf-8").strip().endswith("glossy, studio lighting")
    assert "glossy, studio lighting" in svc.client.get(f"/studio/datasets/kfood/images/{image['id']}").text
    other_tab = svc.client.put(f"/v1/datasets/kfood/images/{image['id']}/caption", headers=svc.h(),
                               json={"slots": {**slots, "style": "matte"}, "version": view["version"]})
    assert other_tab.status_code == 409 and other_tab.json()["current"]["version"] == saved.json()["version"]
    assert "matte" not in sidecar.read_text(encoding="utf-8")
    undo = svc.client.post(f"/v1/datasets/kfood/images/{image['id']}/undo", headers=svc.h())
    assert undo.status_code == 200 and sidecar.read_text(encoding="utf-8") == original
    redo = svc.client.post(f"/v1/datasets/kfood/images/{image['id']}/redo", headers=svc.h())
    assert redo.json()["version"] == saved.json()["version"] and "glossy" in sidecar.read_text(encoding="utf-8")
    assert svc.client.post(f"/v1/datasets/kfood/images/{image['id']}/redo", headers=svc.h()).status_code == 409


def test_lint_counts_tokens_with_the_model_tokenizer_and_suggests_the_glossary(svc):
    from lorastudio.captions.tokens import count_tokens, load_tokenizers
    from lorastudio.studio.lint import tokenizers_for
    from lorastudio.serving.routes.datasets import model_dir

    class _Req:
        app = svc.app

    tok = load_tokenizers(model_dir(_Req))[0][1]
    assert tokenizers_for(model_dir(_Req))
    long_style = ", ".join(["glossy"] * 80)
    for style in ("glossy", "studio lighting, glossy, warm", long_style):
        slots = {"trigger": TRIGGER, "subject": "a photo of bibimbap", "style": style}
        out = svc.client.post("/v1/datasets/kfood/lint", json={"slots": slots}, headers=svc.h()).json()
        text = f"{TRIGGER}, a photo of bibimbap, {style}"
        assert out["tokens"]["tokenizer"] == count_tokens(tok, text)
        assert ("over_budget" in [p["code"] for p in out["lint"]]) == (count_tokens(tok, text) > 75)
    hangul = svc.client.post("/v1/datasets/kfood/lint", headers=svc.h(),
                             json={"slots": {"trigger": TRIGGER, "subject": "a photo of 양념치킨"}}).json()
    assert "hangul" in [p["code"] for p in hangul["lint"]]
    assert hangul["glossary"][0]["slot"] == "subject" and "yangnyeom chicken" in hangul["glossary"][0]["suggestion"]


def test_contamination_table_filter_fix_and_undo(svc):
    audit = svc.client.post("/v1/datasets/kfood/audits", headers=svc.h()).json()
    black = next(r for r in audit["contamination"] if r["phrase"] == "black background")
    assert black["present_rate"] >= 0.9 and black["mention_rate"] == 0 and black["verdict"] == "contaminant"
    page = svc.client.get("/studio/datasets/kfood/audit").text
    assert 'href="/studio/datasets/kfood?q=attr%3Ablack_background%20present%20named%3Ano"' in page
    assert "contaminant" in page
    gallery = svc.client.get("/studio/datasets/kfood?q=attr:black_background present named:no").text
    shown = set(re.findall(r'class="cell" data-id="([0-9a-f]+)"', gallery))
    assert shown == set(black["present_unnamed"][:48])
    before = _sidecars(svc)
    plan = svc.client.post("/v1/datasets/kfood/fix", headers=svc.h()).json()
    assert len(plan["changes"]) == len(black["present_unnamed"]) and _sidecars(svc) == before
    applied = svc.client.post("/v1/datasets/kfood/fix?apply=true", headers=svc.h()).json()
    again = next(r for r in applied["audit"]["contamination"] if r["phrase"] == "black background")
    assert again["mention_rate"] == 1.0 and again["verdict"] != "contaminant"
    svc.client.post("/v1/datasets/kfood/undo", headers=svc.h())
    assert _sidecars(svc) == before
    listed = svc.client.get("/studio/datasets/kfood/audit").text.split('id="history"')[1]
    history = re.findall(r'audit\?audit_id=(\d+)', listed)
    assert len(history) == 2 and all(f'data-audit="{h}"' in svc.client.get(f"/studio/datasets/kfood/audit?audit_id={h}").text
                                     for h in history)
    projects = svc.client.get("/studio").text
    assert "audit: " in projects and "contaminant(s)" in projects


def test_settings_create_and_revoke_keys_then_login_is_required(svc):
    page = svc.client.get("/studio/settings").text
    assert "opens without a login" in page and "fastapi" in page
    created = svc.client.post("/v1/keys", json={"name": "lead", "scopes": ["admin"]}, headers=svc.h())
    assert created.status_code == 201 and created.json()["token"].startswith("lsk_")
    assert svc.client.get("/studio/settings").status_code == 401
    svc.login(created.json()["token"])
    second = svc.client.post("/v1/keys", json={"name": "intern", "scopes": ["generate"]}, headers=svc.h()).json()
    page = svc.client.get("/studio/settings").text
    assert second["id"] in page and second["token"] not in page and "lead" in page
    assert svc.client.delete(f"/v1/keys/{second['id']}", headers=svc.h()).json()["revoked"] is True
    assert svc.client.delete(f"/v1/keys/{second['id']}", headers=svc.h()).status_code == 404


def test_jobs_page_lists_states_cancels_and_retries(studio_factory):
    with studio_factory(workers=1, fake_step_s=0.05) as svc:
        token = svc.key("generate", "train", "admin")
        svc.login(token)
        auth = {"Authorization": f"Bearer {token}", "Prefer": "respond-async"}
        while svc.client.get("/readyz", headers=auth).status_code != 200:
            pass
        ids = [svc.client.post("/v1/images/generations", headers=auth,
                               json={"prompt": f"bibimbap {i}", "size": "64x64", "steps": 40, "seed": i}).json()["id"]
               for i in range(3)]
        canceled = svc.client.delete(f"/v1/jobs/{ids[1]}", headers=svc.h())
        assert canceled.status_code == 200
        states = {i: svc.wait_status(i)["status"] for i in ids}
        assert states == {ids[0]: "succeeded", ids[1]: "canceled", ids[2]: "succeeded"}
        listed = [j["id"] for j in svc.client.get("/v1/jobs").json()["data"]]
        assert listed == ids[::-1]
        page = svc.client.get("/studio/jobs").text
        assert all(i[:8] in page for i in ids) and "canceled" in page
        rows = svc.client.get("/studio/jobs", headers={"HX-Request": "true"}).text
        assert "<html" not in rows and rows.count("<tr") == 3
        retried = svc.client.post(f"/v1/jobs/{ids[1]}/retry", headers=svc.h()).json()
        assert svc.wait_status(retried["id"])["status"] == "succeeded"
        detail = svc.client.get(f"/studio/jobs/{ids[0]}").text
        assert "fake_run" in detail and "completed" in detail
        events = svc.client.get(f"/v1/jobs/{ids[0]}/events-log").json()["data"]
        kinds = [e["type"] for e in events]
        assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "completed"
        times = [e["at"] for e in events]
        assert times == sorted(times) and times[-1] - times[0] < 60  # queued -> running -> done, in order
        timings = svc.client.get(f"/v1/jobs/{ids[0]}").json()["timings"]
        assert times[0] <= timings["started_at"] <= timings["finished_at"] <= times[-1] + 1e-6


def test_training_form_gate_and_submit(studio_factory, photos):
    with studio_factory(workers=1, fake_step_s=0.01) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        while svc.client.get("/v1/datasets/kfood/gate").status_code != 200:
            pass
        form = svc.client.get("/studio/runs/new?dataset=kfood").text
        assert "Optimizer steps to train." in form and "LoRA rank of the UNet adapter" in form  # init-config's words
        assert 'id="t-submit" disabled' in form and "has not been audited" in form
        body = {"lora_id": "kfood-v1", "steps": 20, "rank": 4, "resolution": 64}
        blocked = svc.client.post("/v1/datasets/kfood/trainings", json=body, headers=svc.h())
        assert blocked.status_code == 409 and blocked.json()["code"] == "audit_gate"
        svc.client.post("/v1/datasets/kfood/audits", headers=svc.h())
        gate = svc.client.get("/v1/datasets/kfood/gate").json()
        assert gate["ok"] is (gate["errors"] == 0)
        typo = svc.client.post("/v1/datasets/kfood/trainings", json={**body, "stepz": 3}, headers=svc.h())
        assert typo.status_code == 422
        for _ in range(100):  # wait for the fake worker so admission passes
            job = svc.client.post("/v1/datasets/kfood/trainings", headers=svc.h(),
                                  json={**body, "override_reason": "reviewed by the lead, errors are known"})
            if job.status_code != 503:
                break
            import time

            time.sleep(0.1)
        assert job.status_code == 202, job.text
        view = svc.wait_status(job.json()["id"])
        assert view["status"] == "succeeded" and view["kind"] == "train"
        from lorastudio.serving.routes.admin import list_jobs

        params = list_jobs(svc.store, None, None, "train", 1)[0].params
        assert params["trigger"] == "ohwx_kfood_style" and params["override_reason"].startswith("reviewed")
        raw = svc.data / "datasets" / params["run_id"] / "raw"
        assert len(list(raw.glob("*.jpg"))) == params["images"] == len(_images(svc)) and list(raw.glob("*.txt"))
        assert job.json()["id"][:8] in svc.client.get("/studio").text


def test_enhance_page_runs_jobs_and_rejects_bad_uploads(studio_factory, photos):
    with studio_factory(workers=1, fake_step_s=0.01) as svc:
        svc.refresh_csrf()
        page = svc.client.get("/studio/enhance").text
        assert 'id="slider"' in page and 'id="e-image"' in page
        photo = sorted(photos.glob("*.jpg"))[0].read_bytes()
        for _ in range(100):
            out = svc.client.post("/v1/images/edits", files={"image": ("phone.jpg", photo)},
                                  data={"prompt": "a photo of food", "fields": '{"seed": 5, "steps": 3}'},
                                  headers={**svc.h(), "Prefer": "respond-async"})
            if out.status_code != 503:
                break
            import time

            time.sleep(0.1)
        assert out.status_code == 202, out.text
        done = svc.wait_status(out.json()["id"])
        assert done["status"] == "succeeded" and done["images"]
        assert done["images"][0] in svc.client.get("/studio/enhance").text
        assert svc.client.get(f"/v1/images/{done['images'][0]}").status_code == 200
        bad = svc.client.post("/v1/images/edits", files={"image": ("x.jpg", b"not an image")},
                              data={"prompt": "x"}, headers={**svc.h(), "Prefer": "respond-async"})
        assert 400 <= bad.status_code < 500 and bad.json()["detail"]
        missing_csrf = svc.client.post("/v1/images/edits", files={"image": ("phone.jpg", photo)}, data={"prompt": "x"})
        assert missing_csrf.status_code == 403
        canny = svc.client.post("/v1/images/edits", files={"image": ("phone.jpg", photo)},
                                data={"prompt": "x", "control": "canny"}, headers={**svc.h(), "Prefer": "respond-async"})
        assert canny.status_code == 422 and canny.json()["code"] == "no_controlnet" and "--controlnet" in canny.json()["detail"]
        assert 'value="canny"' not in page and "serve --controlnet" in page  # offered only when the server has one
        svc.app.state.settings.controlnet = "some/canny-controlnet"
        assert 'value="canny"' in svc.client.get("/studio/enhance").text


def test_yaml_tab_round_trips_through_the_typed_config(svc):
    import yaml

    from lorastudio.config.train import FAMILY_DEFAULTS, TrainConfig

    default = svc.client.get("/v1/configs/default?family=sd15").json()["yaml"]
    assert "# Optimizer steps to train." in default
    parsed = yaml.safe_load(default)
    assert TrainConfig.model_validate(parsed) == TrainConfig.model_validate(FAMILY_DEFAULTS["sd15"])
    checked = svc.client.post("/v1/configs/check", json={"yaml": default}, headers=svc.h())
    assert checked.status_code == 200 and yaml.safe_load(checked.json()["yaml"]) == parsed
    parsed["train"]["max_stepz"] = parsed["train"].pop("max_steps")
    typo = svc.client.post("/v1/configs/check", json={"yaml": yaml.safe_dump(parsed)}, headers=svc.h())
    assert typo.status_code == 422 and "did you mean 'train.max_steps'" in typo.json()["detail"]
    for bad in ("[1, 2]", "a: [", ""):
        assert svc.client.post("/v1/configs/check", json={"yaml": bad}, headers=svc.h()).status_code == 422


def test_prepend_moves_a_queued_job_to_the_head(studio_factory):
    with studio_factory(workers=0) as svc:
        token = svc.key("generate", "admin")
        svc.login(token)
        jobs = [svc.store.submit("generate", "k", {"prompt": f"p{i}"}, priority=p)[0] for i, p in enumerate((5, 0, 0))]
        assert [svc.store.position(svc.store.get(j.id)) for j in jobs] == [0, 1, 2]
        moved = svc.client.post(f"/v1/jobs/{jobs[2].id}/prepend", headers=svc.h())
        assert moved.status_code == 200 and moved.json()["position"] == 0
        assert [svc.store.position(svc.store.get(j.id)) for j in jobs] == [1, 2, 0]
        assert "Run next" in svc.client.get("/studio/jobs").text
        svc.store.cancel(jobs[0].id)
        assert svc.client.post(f"/v1/jobs/{jobs[0].id}/prepend", headers=svc.h()).status_code == 409
        assert svc.client.post(f"/v1/jobs/{'0' * 32}/prepend", headers=svc.h()).status_code == 404
        generate_only = svc.key("generate")
        assert svc.client.post(f"/v1/jobs/{jobs[1].id}/prepend",
                               headers={"Authorization": f"Bearer {generate_only}"}).status_code == 403


def test_reject_and_restore_keep_files_and_take_images_out_of_training(svc):
    from lorastudio.config.train import DatasetEntry
    from lorastudio.data.dataset import load_items

    folder = svc.data / "studio" / "datasets" / "kfood" / "dataset"
    files_before = {p.name: p.read_bytes() for p in (folder / "images").iterdir()}
    ids = [im["id"] for im in _images(svc)][:3]
    out = svc.client.post("/v1/datasets/kfood/review", json={"ids": ids, "action": "reject", "reason": "off-style"},
                          headers=svc.h())
    assert out.status_code == 200 and out.json() == {"action": "reject", "changed": ids}
    records = {r["id"]: r for r in read_manifest(folder)}
    assert all("rejected" in records[i]["flags"] and records[i]["rejected_by"]["reason"] == "off-style" for i in ids)
    assert {p.name: p.read_bytes() for p in (folder / "images").iterdir()} == files_before  # nothing deleted
    trained = {item.key.split("/")[1] for item in load_items(DatasetEntry(path=str(folder)))}
    assert trained == set(records) - set(ids)
    from lorastudio.serving.routes.runs import stage_run

    assert stage_run(svc.data, folder.parent, "r" * 32) == len(records) - 3  # a studio run stages without them
    staged = {p.stem for p in (svc.data / "datasets" / ("r" * 32) / "raw").glob("*.jpg")}
    assert staged == {records[i]["file"].split("/")[-1].rsplit(".", 1)[0] for i in set(records) - set(ids)}
    page = svc.client.get("/studio/datasets/kfood?q=flag:rejected").text
    assert page.count('class="cell rejected"') == 3 and "Reject selected" in page
    form = svc.client.get("/studio/runs/new?dataset=kfood").text
    assert f'data-images="{len(records) - 3}"' in form
    again = svc.client.post("/v1/datasets/kfood/review", json={"ids": ids[:2], "action": "restore"}, headers=svc.h())
    assert again.json()["changed"] == ids[:2]
    records = {r["id"]: r for r in read_manifest(folder)}
    assert "rejected" not in records[ids[0]]["flags"] and "rejected_by" not in records[ids[0]]
    assert "rejected" in records[ids[2]]["flags"]
    everything = svc.client.post("/v1/datasets/kfood/review", json={"ids": list(records), "action": "reject"},
                                 headers=svc.h()).json()
    assert len(everything["changed"]) == len(records) - 1  # the one still rejected is not "changed"
    from lorastudio.data.dataset import DatasetError

    with pytest.raises(DatasetError, match="every image is flagged 'rejected'"):
        load_items(DatasetEntry(path=str(folder)))
    bad = svc.client.post("/v1/datasets/kfood/review", json={"ids": ["nope"], "action": "reject"}, headers=svc.h())
    assert bad.status_code == 404
    assert svc.client.post("/v1/datasets/kfood/review", json={"ids": ids, "action": "delete"},
                           headers=svc.h()).status_code == 422


def test_pausing_the_queue_holds_queued_jobs_until_resume(studio_factory):
    with studio_factory(workers=1, fake_step_s=0.01) as svc:
        token = svc.key("generate", "admin")
        svc.login(token)
        auth = {"Authorization": f"Bearer {token}", "Prefer": "respond-async"}
        while svc.client.get("/readyz", headers=auth).status_code != 200:
            pass
        assert "Pause queue" in svc.client.get("/studio/jobs").text
        paused = svc.client.post("/v1/queue/pause", headers=svc.h())
        assert paused.status_code == 200 and paused.json()["paused"] is True
        job = svc.client.post("/v1/images/generations", headers=auth,
                              json={"prompt": "bibimbap", "size": "64x64", "steps": 2, "seed": 1}).json()["id"]
        time.sleep(1.5)  # the worker polls several times meanwhile and must take nothing
        assert svc.client.get(f"/v1/jobs/{job}").json()["status"] == "queued"
        assert svc.client.get("/v1/queue").json() == {"paused": True, "queued": 1, "running": 0}
        page = svc.client.get("/studio/jobs").text
        assert "queue paused" in page and "Resume queue" in page
        generate_only = svc.key("generate")
        assert svc.client.post("/v1/queue/resume", headers={"Authorization": f"Bearer {generate_only}"}).status_code == 403
        assert svc.client.post("/v1/queue/resume", headers=svc.h()).json()["paused"] is False
        assert svc.wait_status(job)["status"] == "succeeded"


def test_yaml_tab_submits_a_whole_config_within_the_server_s_keys(studio_factory, photos):
    import yaml

    from lorastudio.config.train import FAMILY_DEFAULTS, TrainConfig
    from lorastudio.serving.routes.admin import list_jobs

    with studio_factory(workers=1, fake_step_s=0.01) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        default = yaml.safe_load(svc.client.get("/v1/configs/default?family=sd15").json()["yaml"])
        edited = {**default, "train": {**default["train"], "max_steps": 30, "lr": 5e-4},
                  "network": {**default["network"], "rank": 8}, "data": {**default["data"], "flip": True}}
        body = {"lora_id": "kfood-yaml", "steps": 20, "rank": 4, "resolution": 64,
                "override_reason": "reviewed by the lead, errors are known"}

        def post(config: dict):  # noqa: ANN202
            for _ in range(100):  # the fake worker must be up for admission
                answer = svc.client.post("/v1/datasets/kfood/trainings", headers=svc.h(),
                                         json={**body, "config_yaml": yaml.safe_dump(config)})
                if answer.status_code != 503:
                    return answer
                time.sleep(0.1)
            return answer

        typo = dict(edited, train={**{k: v for k, v in edited["train"].items() if k != "max_steps"}, "max_stepz": 30})
        answer = post(typo)
        assert answer.status_code == 422 and "did you mean 'train.max_steps'" in answer.json()["detail"]
        moved = post({**edited, "model": {**edited["model"], "path": "/etc"}})
        assert moved.status_code == 422 and moved.json()["code"] == "server_key" and "model.path" in moved.json()["detail"]
        assert post({**edited, "output_dir": "/tmp/elsewhere"}).json()["code"] == "server_key"
        assert post({**edited, "model": {**edited["model"], "family": "sdxl"}}).json()["code"] == "wrong_family"
        huge = post({**edited, "train": {**edited["train"], "max_steps": 50000}})
        assert huge.status_code == 422 and huge.json()["code"] == "out_of_bounds"
        assert list_jobs(svc.store, None, None, "train", 5) == []  # nothing was queued by a refused YAML
        job = post(edited)
        assert job.status_code == 202, job.text
        params = list_jobs(svc.store, None, None, "train", 1)[0].params
        assert (params["steps"], params["rank"], params["learning_rate"]) == (30, 8, 5e-4)  # the YAML won
        config = params["config"]
        assert "datasets" not in config["data"] and "model" not in config and "output_dir" not in config
        # What the worker writes (runners.run_training: its own model/data/output, then these sections) is
        # init-config's defaults plus exactly the YAML's edits, through the typed config.
        served = {"model": {"family": "sd15", "path": "/srv/base"}, "data": {"datasets": ["/srv/run/dataset"]},
                  "output_dir": "/srv/run/out"}
        merged = {**served, **{s: {**served.get(s, {}), **v} for s, v in config.items()}}
        expected = {**edited, **served, "data": {**edited["data"], **served["data"]}}
        assert TrainConfig.model_validate(merged) == TrainConfig.model_validate(expected)
        assert TrainConfig.model_validate(merged) != TrainConfig.model_validate(FAMILY_DEFAULTS["sd15"])


def test_run_samples_are_announced_once_and_served_only_from_the_run(svc):
    from studio_data import train_job_with_samples

    job_id, run_id = train_job_with_samples(svc.store, svc.data)
    kinds = [(kind, data) for _, kind, data in svc.store.events_after(job_id, 0)]
    assert [d for k, d in kinds if k == "sample"] == [{"step": 10, "files": ["00.png", "01.png"]}]
    ok = svc.client.get(f"/v1/jobs/{job_id}/samples/10/01.png")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png" and ok.content[:4] == b"\x89PNG"
    (svc.data / "secret.png").write_bytes(ok.content)
    for bad in ("10/..%2F..%2F..%2F..%2Fsecret.png", "10/02.png", "11/00.png", "10/00.jpg", "-1/00.png"):
        assert svc.client.get(f"/v1/jobs/{job_id}/samples/{bad}").status_code in (404, 422), bad
    other, _ = svc.store.submit("generate", "local", {"prompt": "p", "run_id": run_id})
    assert svc.client.get(f"/v1/jobs/{other.id}/samples/10/00.png").status_code == 404  # train jobs only
    page = svc.client.get(f"/studio/jobs/{job_id}").text
    assert 'id="live-lr"' in page and 'id="samples"' in page


def test_caption_job_runs_a_backend_over_the_dataset_and_undoes_as_one_operation(studio_factory, photos):
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "captions" / "backends"))
    import tiny_caption_models as tiny

    with studio_factory(workers=1, fake_step_s=0.01) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        tags = [("black_background", 0), ("no_humans", 0), ("food", 0)]
        tiny.build_tagger(svc.data / "models" / "captioners" / "wd-tiny", tags, np.zeros((3, 3)),
                          np.array([2.0, 2.0, 0.0]))
        assert svc.client.get("/v1/captioners").json() == {"backends": ["hf-caption", "hf-vlm", "tagger", "clip-probe"],
                                                           "models": ["wd-tiny"]}
        for model in ("../wd-tiny", "/etc", "wd-tiny/../../x", "nope"):
            refused = svc.client.post("/v1/datasets/kfood/captions", json={"backend": "tagger", "model": model},
                                      headers=svc.h())
            assert refused.status_code == 422, model
        assert svc.client.post("/v1/datasets/kfood/captions", json={"backend": "manual", "model": "wd-tiny"},
                               headers=svc.h()).status_code == 422
        assert "Caption with a model" in svc.client.get("/studio/datasets/kfood").text
        before = _sidecars(svc)
        svc.client.post("/v1/queue/pause", headers=svc.h())  # hold the job queued to see the edit guard
        for _ in range(100):  # the fake worker must be up for admission
            job = svc.client.post("/v1/datasets/kfood/captions", headers=svc.h(),
                                  json={"backend": "tagger", "model": "wd-tiny", "overwrite": True})
            if job.status_code != 503:
                break
            time.sleep(0.1)
        assert job.status_code == 202, job.text
        image = _images(svc)[0]
        edit = svc.client.put(f"/v1/datasets/kfood/images/{image['id']}/caption", headers=svc.h(),
                              json={"slots": {"trigger": TRIGGER, "subject": "x"}, "version": image["version"]})
        assert edit.status_code == 409 and edit.json()["code"] == "captioning"  # the captioner owns the manifest now
        second = svc.client.post("/v1/datasets/kfood/captions", headers=svc.h(),
                                 json={"backend": "tagger", "model": "wd-tiny"})
        assert second.status_code == 409
        svc.client.post("/v1/queue/resume", headers=svc.h())
        view = svc.wait_status(job.json()["id"], timeout=120)
        assert view["status"] == "succeeded", view
        records = read_manifest(svc.data / "studio" / "datasets" / "kfood" / "dataset")
        assert view["result"]["captioned"] == view["result"]["of"] == len(records)
        assert all(r["caption_source"]["backend"] == "tagger" and "black background" in r["caption_text"]
                   and r["caption_text"].startswith(TRIGGER) for r in records)
        assert _sidecars(svc) != before
        detail = svc.client.get(f"/studio/jobs/{view['id']}").text
        assert "wd-tiny" in detail and str(svc.data) not in detail  # the job names the model, never a server path
        undone = svc.client.post("/v1/datasets/kfood/undo", headers=svc.h()).json()
        assert len(undone["reverted"]) == len(records) and _sidecars(svc) == before


def test_compare_offers_each_checkpoint_and_marks_the_recommended_one(studio_factory, tmp_path):
    from studio_data import finished_run_with_checkpoints, toy_lora_bytes

    from lorastudio.toyworld.pretrain import shipped_base_dir

    with studio_factory(workers=1, fake_step_s=0.001, model=str(shipped_base_dir())) as svc:
        svc.refresh_csrf()
        job = finished_run_with_checkpoints(svc.store, svc.data, toy_lora_bytes(tmp_path / "l"))
        found = svc.client.get(f"/v1/jobs/{job}/checkpoints").json()
        assert found["steps"] == [10, 20]  # step 30 never finished writing
        assert found["recommended"] == {"step": 10, "scale": 0.8, "reason": "best style gain without leak"}
        page = svc.client.get("/studio/compare").text
        assert f'value="{job}:10"' in page and f'value="{job}:20"' in page and f'value="{job}:30"' not in page
        assert page.count("★ recommended (scale 0.8)") == 1 and 'data-recommended-scale="0.8"' in page
        row = svc.client.post(f"/v1/jobs/{job}/checkpoints/10/lora", headers=svc.h())
        assert row.status_code == 200 and row.json()["id"] == "kfood-v1-s10"
        again = svc.client.post(f"/v1/jobs/{job}/checkpoints/10/lora", headers=svc.h()).json()
        assert again["sha256"] == row.json()["sha256"]  # registering twice is the same LoRA
        assert svc.client.post(f"/v1/jobs/{job}/checkpoints/30/lora", headers=svc.h()).status_code == 404
        other, _ = svc.store.submit("generate", "local", {"prompt": "p"})
        assert svc.client.get(f"/v1/jobs/{other.id}/checkpoints").status_code == 404
        assert [r["id"] for r in svc.client.get("/v1/loras").json()["data"]] == ["kfood-v1-s10"]


def test_evaluate_runs_as_a_job_and_compare_marks_its_recommendation(studio_factory, photos):
    """An `evaluate` job runs the real command on a real run; Compare then marks what evaluation.json says."""
    import json

    from studio_data import trained_run

    from lorastudio.toyworld.pretrain import shipped_base_dir

    with studio_factory(workers=1, fake_step_s=0.001, model=str(shipped_base_dir())) as svc:
        svc.refresh_csrf()
        job = trained_run(svc.store, svc.data, photos)
        assert svc.client.get(f"/v1/jobs/{job}/checkpoints").json()["recommended"] is None
        assert 'data-action="evaluate-run"' in svc.client.get("/studio/compare").text
        body = {"prompts": ["ohwx_kfood_style, a photo of bibimbap", "a photo of japchae"], "scales": [1.0],
                "seeds": [3], "steps": 2, "size": "64x64"}
        bad = svc.client.post(f"/v1/jobs/{job}/evaluations", json={**body, "scales": [5.0]}, headers=svc.h())
        assert bad.status_code == 422
        other, _ = svc.store.submit("generate", "local", {"prompt": "p"})
        assert svc.client.post(f"/v1/jobs/{other.id}/evaluations", json=body, headers=svc.h()).status_code == 404
        queued = svc.client.post(f"/v1/jobs/{job}/evaluations", json=body, headers=svc.h())
        assert queued.status_code == 202 and queued.json()["kind"] == "evaluate"
        done = svc.wait_status(queued.json()["id"], timeout=300)
        assert done["status"] == "succeeded", done
        run = svc.data / "datasets" / ("ef" * 16) / "run"
        written = json.loads((run / "evaluation.json").read_text(encoding="utf-8"))
        assert written["prompts"] == body["prompts"] and written["scales"] == [0.0, 1.0]
        assert {r["checkpoint"] for r in written["rows"]} == {"step_2", "step_4", "final"}
        rec = written["recommendation"]
        assert done["result"]["recommendation"]["checkpoint"] == rec["checkpoint"]
        found = svc.client.get(f"/v1/jobs/{job}/checkpoints").json()
        assert found["steps"] == [2, 4] and found["recommended"]["step"] == rec["step"]
        assert found["recommended"]["scale"] == rec["scale"] == 1.0
        page = svc.client.get("/studio/compare").text
        assert page.count("★ recommended") == 1 and f'value="{job}:{rec["step"]}" data-lora' in page
        assert "Evaluate again: kfood-real" in page
        job_page = svc.client.get(f"/studio/jobs/{queued.json()['id']}").text
        assert "★ recommended: " + rec["checkpoint"] in job_page and "evaluate" in job_page


def test_run_states_read_stopped_saved_and_interrupted_after_a_restart(studio_factory, tmp_path):
    """A training job re-queued after the service died mid-run reads 'interrupted' on the jobs and job
    pages (the next worker resumes it); one stopped with a checkpoint reads 'stopped (saved)'."""
    with studio_factory(workers=0) as svc:
        svc.refresh_csrf()
        job, _ = svc.store.submit("train", "local", {"run_id": "ab" * 16, "lora_id": "x", "steps": 40},
                                  max_attempts=3)
        assert svc.store.claim("w-gone", lease_s=0.01).id == job.id
        time.sleep(0.05)
        assert svc.store.reap() == [job.id]  # what the restarted service does with the dead worker's lease
        for url in (f"/studio/jobs/{job.id}", "/studio/jobs"):
            assert "interrupted (resumes from its last checkpoint)" in svc.client.get(url).text, url
        stopped, _ = svc.store.submit("train", "local", {"run_id": "cd" * 16, "lora_id": "y", "steps": 40})
        svc.store.claim("w1", lease_s=60)  # the interrupted one first (older), then this one
        assert svc.store.claim("w1", lease_s=60).id == stopped.id
        svc.store.finish(stopped.id, "w1", "canceled", result={"saved_step": 12, "images": []})
        page = svc.client.get(f"/studio/jobs/{stopped.id}").text
        assert ">stopped (saved)</span>" in page and "checkpoint at step 12" in page
        events = svc.client.get(f"/v1/jobs/{stopped.id}/events-log").json()["data"]
        assert events[-1]["type"] == "canceled" and events[-1]["data"]["saved_step"] == 12


def _cli_audit(svc, tmp_path, *args: str):
    """`lorastudio audit` run in-process on a copy of the studio dataset (the CLI writes audit.json and
    report files into the folder it audits; the studio's own copy stays untouched)."""
    import shutil

    from click.testing import CliRunner

    from lorastudio.cli.main import cli
    from lorastudio.serving.routes.datasets import model_dir

    class _Req:
        app = svc.app

    copy = tmp_path / "cli_copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(svc.data / "studio" / "datasets" / "kfood" / "dataset", copy)
    result = CliRunner().invoke(cli, ["audit", str(copy), "--tokenizer", model_dir(_Req), "--quiet", *args])
    assert result.exit_code in (0, 1), result.output
    return result


def _shown(svc, q: str) -> set[str]:
    from urllib.parse import quote

    return set(re.findall(r'class="cell" data-id="([0-9a-f]+)"', svc.client.get(f"/studio/datasets/kfood?q={quote(q)}").text))


def test_filter_attr_present_unnamed_shows_exactly_what_cli_audit_json_lists(svc, tmp_path):
    import json

    svc.client.post("/v1/datasets/kfood/audits", headers=svc.h())
    cli_json = json.loads(_cli_audit(svc, tmp_path, "--format", "json").stdout)
    black = next(r for r in cli_json["contamination"] if r["id"] == "bg.black")
    assert len(black["present_unnamed"]) >= 10 and set(black["present_unnamed"]) <= set(black["present"])
    query = "attr:black_background present named:no"
    assert _shown(svc, query) == set(black["present_unnamed"])
    assert _shown(svc, "attr:bg.black named:no") == set(black["present_unnamed"])  # the id works as well
    assert _shown(svc, "attr:black_background") == set(black["present"])
    assert _shown(svc, "attr:black_background named:yes") == set()
    assert _shown(svc, "attr:no_such_attribute") == set() and _shown(svc, "present") == set()  # no bare free text
    svc.client.post("/v1/datasets/kfood/fix?apply=true", headers=svc.h())  # names it in every caption, re-audits
    assert _shown(svc, query) == set()
    assert _shown(svc, "attr:black_background present named:yes") == set(black["present"])
    ids = [i["id"] for i in _images(svc)]
    assert _shown(svc, 'slot:style:""') == set(ids)  # the toy captions leave slot 5 empty
    view = svc.client.get(f"/v1/datasets/kfood/images/{ids[0]}").json()
    saved = svc.client.put(f"/v1/datasets/kfood/images/{ids[0]}/caption", headers=svc.h(),
                           json={"slots": {**view["slots"], "style": "glossy"}, "version": view["version"]})
    assert saved.status_code == 200
    assert _shown(svc, 'slot:style:""') == set(ids[1:]) and _shown(svc, "slot:style:glossy") == {ids[0]}


def test_fix_diff_rows_equal_what_cli_audit_fix_would_write(svc, tmp_path):
    svc.client.post("/v1/datasets/kfood/audits", headers=svc.h())
    before = _sidecars(svc)
    plan = svc.client.post("/v1/datasets/kfood/fix", headers=svc.h()).json()["changes"]
    out = _cli_audit(svc, tmp_path, "--fix").stdout  # no --yes: a preview, nothing written
    said = re.search(r"--fix: (\d+) caption\(s\) would change", out)
    assert said and int(said.group(1)) == len(plan) >= 10
    cli_rows = re.findall(r"^(\w+): adds (.+)\n(?:  why .*\n)*  - (.*)\n  \+ (.*)$", out, re.M)
    assert len(cli_rows) == len(plan)
    assert {(c["image"], ", ".join(c["added"]), c["before"], c["after"]) for c in plan} == set(cli_rows)
    assert _sidecars(svc) == before


def test_every_thumbnail_of_512_px_images_is_at_most_40_kb(studio_factory, tmp_path):
    import random

    from studio_data import synthetic_dataset

    with studio_factory(workers=0) as svc:
        svc.refresh_csrf()
        home = synthetic_dataset(svc.data, "big512", 24, side=512, seed=5)
        rng = random.Random(0)
        noisy = sorted((home / "dataset" / "images").glob("*.jpg"))[:8]
        for path in noisy:  # a third full of noise: the worst case for JPEG
            noise = Image.frombytes("RGB", (512, 512), rng.randbytes(512 * 512 * 3))
            noise.save(path, "JPEG", quality=95)
        ids = [i["id"] for i in svc.client.get("/v1/datasets/big512").json()["images"]]
        assert len(ids) == 24
        sizes = {}
        for image in ids:
            original = svc.client.get(f"/v1/datasets/big512/images/{image}/content")
            assert Image.open(io.BytesIO(original.content)).size == (512, 512)
            thumb = svc.client.get(f"/v1/datasets/big512/images/{image}/thumbnail")
            assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) == 256
            sizes[image] = len(thumb.content)
        assert max(sizes.values()) <= 40 * 1024, sorted(sizes.values())[-3:]
        noise = [sizes[p.stem] for p in noisy]
        assert min(noise) > max(v for k, v in sizes.items() if k not in {p.stem for p in noisy})  # the hard ones were made


def test_server_refuses_an_override_reason_under_10_characters(studio_factory):
    from studio_data import synthetic_dataset

    with studio_factory(workers=0) as svc:
        svc.refresh_csrf()
        home = synthetic_dataset(svc.data, "errs", 6)
        next((home / "dataset" / "images").glob("*.txt")).unlink()  # a missing sidecar is an audit error
        audit = svc.client.post("/v1/datasets/errs/audits", headers=svc.h()).json()
        assert audit["counts"]["error"] >= 1
        body = {"lora_id": "errs-v1", "steps": 20, "rank": 4, "resolution": 64}
        for reason in ("", "         x", "123456789", " 12345678 "):
            refused = svc.client.post("/v1/datasets/errs/trainings", headers=svc.h(), json={**body, "override_reason": reason})
            assert refused.status_code == 409 and refused.json()["code"] == "audit_gate", reason
        passed = svc.client.post("/v1/datasets/errs/trainings", headers=svc.h(), json={**body, "override_reason": "1234567890"})
        assert not (passed.status_code == 409 and passed.json()["code"] == "audit_gate"), passed.text


def _train_yaml_written(svc, params: dict, model: str, monkeypatch) -> dict:  # noqa: ANN001
    """The train.yaml the worker writes for a studio training job (prepare and caption pass, the
    trainer itself is not started)."""
    import logging
    from types import SimpleNamespace

    import yaml

    from lorastudio.serving import runners
    from lorastudio.serving.trace import Trace

    class _Stop(Exception):
        pass

    def fake_cli(runner, job, args, cwd, log_path):  # noqa: ANN001 - prepare/caption succeed, train stops here
        if args[0] == "train":
            raise _Stop(args[1])
        return 0

    monkeypatch.setattr(runners, "_cli", fake_cli)
    runner = SimpleNamespace(data=svc.data, store=svc.store, args=SimpleNamespace(family="sd15", model=model))
    with pytest.raises(_Stop) as stopped:
        runners.run_training(runner, SimpleNamespace(params=params, id="job", attempts=1, key_id="local"),
                             Trace("job", logging.getLogger("test")))
    return yaml.safe_load(Path(str(stopped.value)).read_text(encoding="utf-8"))


def test_preset_submit_resolves_to_init_config_plus_the_same_overrides(studio_factory, photos, monkeypatch, tmp_path):
    """§5.4 P5.1: the train.yaml the worker writes for a preset, read through the typed config, equals
    `lorastudio init-config` with the preset's fields and the server's own keys laid over it."""
    import yaml
    from click.testing import CliRunner

    from lorastudio.cli.main import cli
    from lorastudio.config.loader import deep_merge
    from lorastudio.config.train import TrainConfig
    from lorastudio.studio.trainform import CONFIG_KEYS, PRESETS
    from lorastudio.toyworld.pretrain import shipped_base_dir

    with studio_factory(workers=1, fake_step_s=0.01) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        svc.client.post("/v1/datasets/kfood/audits", headers=svc.h())
        preset = {k: v for k, v in PRESETS["sd15_style"].items() if k != "label"}  # what choosing it fills in
        body = {**preset, "lora_id": "kfood-preset", "override_reason": "reviewed by the lead, errors are known"}
        for _ in range(100):
            job = svc.client.post("/v1/datasets/kfood/trainings", json=body, headers=svc.h())
            if job.status_code != 503:
                break
            time.sleep(0.1)
        assert job.status_code == 202, job.text
        params = svc.store.get(job.json()["id"]).params
        # Only the parameters matter here: cancel, so shutdown does not wait out the preset's steps.
        assert svc.client.delete(f"/v1/jobs/{job.json()['id']}", headers=svc.h()).status_code == 200

    model = str(shipped_base_dir())
    written = _train_yaml_written(svc, params, model, monkeypatch)
    printed = CliRunner().invoke(cli, ["init-config", "--family", "sd15"])
    assert printed.exit_code == 0, printed.output
    root = svc.data / "datasets" / params["run_id"]
    form = {}
    for name, (section, key) in CONFIG_KEYS.items():
        form.setdefault(section, {})[key] = preset[name]
    server = {"model": {"path": model}, "data": {"datasets": [str(root / "dataset")]}, "output_dir": str(root / "run"),
              "network": {"alpha": float(preset["rank"])}, "train": {"cache": "memory"},
              "sample": {"at_start": False, "prompts": []}, "save": {"keep_last": 2},
              "logging": {"every_n_steps": 1, "tensorboard": False},
              "validation": {"every_n_steps": preset["checkpoint_every"]}}
    expected = deep_merge(deep_merge(yaml.safe_load(printed.stdout), form), server)
    assert TrainConfig.model_validate(written).model_dump() == TrainConfig.model_validate(expected).model_dump()
    assert written["train"]["max_steps"] == preset["steps"] and written["network"]["rank"] == preset["rank"]


def test_job_log_streams_from_an_offset_without_server_paths(studio_factory):
    with studio_factory(workers=0) as svc:
        svc.refresh_csrf()
        job, _ = svc.store.submit("train", "local", {"run_id": "ab" * 16, "lora_id": "x", "steps": 4})
        assert svc.client.get(f"/v1/jobs/{job.id}/log").json() == {"text": "", "offset": 0, "done": False}
        assert 'id="log"' in svc.client.get(f"/studio/jobs/{job.id}").text  # queued: the view waits for a log
        log = svc.data / "datasets" / ("ab" * 16) / "train.log"
        log.parent.mkdir(parents=True)
        log.write_text(f"caching into {svc.data}/datasets/x\n", encoding="utf-8")
        first = svc.client.get(f"/v1/jobs/{job.id}/log").json()
        assert first["text"] == "caching into <data>/datasets/x\n" and first["offset"] == log.stat().st_size
        with open(log, "a", encoding="utf-8") as handle:
            handle.write("step 1 loss 0.5\n")
        more = svc.client.get(f"/v1/jobs/{job.id}/log?offset={first['offset']}").json()
        assert more["text"] == "step 1 loss 0.5\n" and more["offset"] == log.stat().st_size
        assert svc.client.get(f"/v1/jobs/{job.id}/log?offset={more['offset']}").json()["text"] == ""
        page = svc.client.get(f"/studio/jobs/{job.id}").text
        assert "&lt;data&gt;/datasets/x" in page and str(svc.data) not in page
        other, _ = svc.store.submit("generate", "local", {"prompt": "p"})
        assert svc.client.get(f"/v1/jobs/{other.id}/log").json()["text"] == ""
        assert svc.client.get("/v1/jobs/" + "0" * 32 + "/log").status_code == 404


def test_jobs_and_their_histories_survive_a_service_restart(studio_factory):
    with studio_factory(workers=1, fake_step_s=0.001) as svc:
        svc.refresh_csrf()
        done, _ = svc.store.submit("generate", "local", {"prompt": "bibimbap", "size": "64x64", "steps": 2, "seed": 1})
        assert svc.wait_status(done.id)["status"] == "succeeded"
        svc.client.post("/v1/queue/pause", headers=svc.h())
        waiting, _ = svc.store.submit("generate", "local", {"prompt": "japchae", "size": "64x64", "steps": 2, "seed": 1})
        before = svc.client.get(f"/v1/jobs/{done.id}/events-log").json()["data"]
    with studio_factory(workers=0) as svc:  # the same data dir and store, a new process's app
        svc.refresh_csrf()
        rows = svc.client.get("/studio/jobs").text
        assert done.id[:8] in rows and waiting.id[:8] in rows and "queued" in rows and "succeeded" in rows
        assert svc.client.get(f"/v1/jobs/{done.id}/events-log").json()["data"] == before  # the whole history
        page = svc.client.get(f"/studio/jobs/{done.id}").text
        assert "completed" in page and page.count('<li data-event="') == len(before)


def test_settings_show_models_storage_and_a_warning_when_exposed(studio_factory, photos):
    with studio_factory(workers=0) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        page = svc.client.get("/studio/settings").text
        assert 'id="models"' in page and "none (serve --controlnet)" in page and "sd15" in page
        assert 'id="storage"' in page and "studio/" in page and "free on the data disk" in page
        assert str(svc.data) not in page and 'id="exposed"' not in page  # loopback: no warning, no paths
        studio_mb = float(re.search(r"<td>studio/</td><td>([0-9.]+) MB", page).group(1))
        assert studio_mb > 0  # the uploaded photos, thumbnails and manifest are counted
        svc.app.state.settings.host = "0.0.0.0"
        svc.key("admin")
        token = svc.key("admin")
        svc.login(token)
        assert 'id="exposed"' in svc.client.get("/studio/settings").text


def test_the_event_stream_resumes_after_last_event_id(studio_factory):
    with studio_factory(workers=1, fake_step_s=0.001) as svc:
        svc.refresh_csrf()
        job, _ = svc.store.submit("generate", "local", {"prompt": "bibimbap", "size": "64x64", "steps": 3, "seed": 1})
        assert svc.wait_status(job.id)["status"] == "succeeded"
        ids = [e["id"] for e in svc.client.get(f"/v1/jobs/{job.id}/events-log").json()["data"]]
        full = svc.client.get(f"/v1/jobs/{job.id}/events").text
        assert re.findall(r"^id: (\d+)$", full, re.M) == [str(i) for i in ids]  # a new client: everything
        tail = svc.client.get(f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": str(ids[1])}).text
        assert re.findall(r"^id: (\d+)$", tail, re.M) == [str(i) for i in ids[2:]]  # a reconnect: only what it missed
        assert "event: completed" in tail


def test_training_presets_follow_the_served_family(studio_factory, photos):
    from lorastudio.studio.trainform import PRESET_FAMILIES, PRESETS

    assert set(PRESET_FAMILIES) == set(PRESETS)
    with studio_factory(workers=0) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        page = svc.client.get("/studio/runs/new").text
        assert 'value="toy"' in page and 'value="sd15_style"' in page and 'value="sdxl_style"' not in page
        svc.app.state.settings.family = "sdxl"
        page = svc.client.get("/studio/runs/new").text
        assert 'value="sdxl_style"' in page and 'value="sd15_style"' not in page and 'value="toy"' not in page
        svc.app.state.settings.family = "flux"
        assert 'value="flux_style"' in svc.client.get("/studio/runs/new").text


def test_training_form_family_fields_come_from_the_config_schema(studio_factory, photos):
    """§5.2 P5: each served family gets its own fields, with init-config's descriptions and the
    defaults a studio run uses."""
    from markupsafe import escape

    from lorastudio.config.flux import FluxSection
    from lorastudio.config.train import TrainSection
    from lorastudio.studio.trainform import FAMILY_OPTIONS

    with studio_factory(workers=0) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        sd = svc.client.get("/studio/runs/new").text
        for key in FAMILY_OPTIONS["sd15"]:
            assert f'data-option="{key}"' in sd
        assert 'data-option="flux.guidance"' not in sd
        assert escape(TrainSection.model_fields["min_snr_gamma"].description) in sd
        assert re.search(r'data-option="network.targets"[^>]*>\s*<option selected>attn</option><option>attn_ff</option>', sd)
        svc.app.state.settings.family = "flux"
        flux = svc.client.get("/studio/runs/new").text
        for key in FAMILY_OPTIONS["flux"]:
            assert f'data-option="{key}"' in flux
        assert 'data-option="train.min_snr_gamma"' not in flux  # a DDPM weighting: refused for Flux
        assert escape(FluxSection.model_fields["sigma_sampling"].description) in flux
        assert re.search(r'data-option="flux.sigma_sampling"[^>]*>\s*<option selected>flux_shift</option>', flux)
        t5 = re.search(r'<input id="o-flux-t5_max_length"[^>]*>', flux).group(0)
        assert 'value=""' in t5 and 'min="8"' in t5 and 'max="512"' in t5 and 'data-nullable="yes"' in t5


def test_family_fields_reach_train_yaml_and_a_bad_one_names_its_key(studio_factory, photos, monkeypatch):
    from lorastudio.config.train import TrainConfig

    body = {"lora_id": "kfood-opts", "steps": 3, "rank": 4, "resolution": 64,
            "override_reason": "reviewed by the lead, errors are known"}
    with studio_factory(workers=1, fake_step_s=0.01) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        post = lambda extra: svc.client.post("/v1/datasets/kfood/trainings", json={**body, **extra}, headers=svc.h())  # noqa: E731
        typo = post({"options": {"train.min_snr": 5.0}})
        assert typo.status_code == 422 and "did you mean 'train.min_snr_gamma'" in typo.json()["detail"]
        bad = post({"options": {"train.noise_offset": -1}})
        assert bad.status_code == 422 and "train.noise_offset" in bad.json()["detail"]
        svc.app.state.settings.family = "flux"
        wrong = post({"options": {"train.min_snr_gamma": 5.0}})
        assert wrong.status_code == 422 and "not a field of the training form" in wrong.json()["detail"]
        svc.app.state.settings.family = "sd15"
        options = {"train.min_snr_gamma": 5.0, "train.noise_offset": 0.05, "network.targets": "attn_ff", "data.flip": True}
        for _ in range(100):
            job = post({"options": options})
            if job.status_code != 503:
                break
            time.sleep(0.1)
        assert job.status_code == 202, job.text
        params = svc.store.get(job.json()["id"]).params
    assert params["options"] == {"train": {"min_snr_gamma": 5.0, "noise_offset": 0.05}, "network": {"targets": "attn_ff"},
                                 "data": {"flip": True}}

    cfg = TrainConfig.model_validate(_train_yaml_written(svc, params, "base", monkeypatch))
    assert (cfg.train.min_snr_gamma, cfg.train.noise_offset, cfg.network.targets, cfg.data.flip) == (5.0, 0.05, "attn_ff", True)
    assert cfg.train.max_steps == 3 and cfg.network.rank == 4  # the base fields are still the form's


def test_validation_and_leak_rows_become_events_once_and_not_again_after_a_resume(tmp_path):
    """The worker turns the trainer's check rows in metrics.jsonl into `validation` / `leak`
    events for the Run page: each row once, a half-written line skipped, and after a resume the
    rows an earlier attempt reported are not sent again."""
    import json
    from types import SimpleNamespace

    from lorastudio.serving.runners import CHECK_ROWS, _logged_steps, _metric_rows, _report_checks
    from lorastudio.serving.store import JobStore

    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    job, _ = store.submit("train", "local", {"steps": 20})
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 0.4}, {"step": 0, "val_loss": 0.31, "val_split": "training", "val_images": 4},
            {"step": 10, "loss": 0.3}, {"step": 10, "val_loss": 0.25, "val_split": "training", "val_images": 4},
            {"step": 10, "leak": {"black_background": 0.5}, "leak_images": 2}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 20, "val_lo', encoding="utf-8")
    runner = SimpleNamespace(store=store)
    fresh = {kind: -1 for kind in CHECK_ROWS}
    reported = _report_checks(runner, job, _metric_rows(metrics, key=None), fresh)
    assert _report_checks(runner, job, _metric_rows(metrics, key=None), reported) == reported == {"validation": 10, "leak": 10}
    sent = [(kind, data) for _, kind, data in store.events_after(job.id, 0) if kind in CHECK_ROWS]
    assert sent == [("validation", rows[1]), ("validation", rows[3]), ("leak", rows[4])]
    resumed = {kind: _logged_steps(metrics, key, none=-1) for kind, key in CHECK_ROWS.items()}  # what a resume starts from
    assert _report_checks(runner, job, _metric_rows(metrics, key=None), resumed) == resumed
    assert len([k for _, k, _ in store.events_after(job.id, 0) if k in CHECK_ROWS]) == 3
    store.close()


def test_a_background_audit_runs_as_a_job_on_an_idle_worker_and_in_the_request_without_one(studio_factory, photos):
    from lorastudio.studio import datasets as ds

    with studio_factory(workers=0) as svc:  # no worker: the audit runs in the request after all
        svc.refresh_csrf()
        svc.upload(photos)
        now = svc.client.post("/v1/datasets/kfood/audits?background=true", headers=svc.h())
        assert now.status_code == 201 and now.json()["audit_id"]
    with studio_factory(workers=1, fake_step_s=0.01) as svc:
        svc.refresh_csrf()
        svc.upload(photos)
        for _ in range(200):
            queued = svc.client.post("/v1/datasets/kfood/audits?background=true", headers=svc.h())
            if queued.status_code == 202:
                break
            time.sleep(0.1)  # the fake worker is still starting: audited in the request meanwhile
        assert queued.status_code == 202 and queued.json()["kind"] == "audit", queued.text
        view = svc.wait_status(queued.json()["id"])
        assert view["status"] == "succeeded", view
        latest = svc.client.get("/v1/datasets/kfood/audits/latest").json()
        assert view["result"]["audit_id"] == latest["audit_id"] and view["result"]["counts"] == latest["counts"]
        home = ds.dataset_home(svc.data, "kfood")
        assert ds.audits(home)[0] == latest["audit_id"]  # stored like any audit: the history page lists it
        assert "audit" in svc.client.get("/studio/jobs?kind=audit").text
        stray = svc.client.post("/v1/datasets/no-such/audits?background=true", headers=svc.h())
        assert stray.status_code == 404
