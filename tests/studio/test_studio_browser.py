"""The studio in headless Chromium through Playwright (studio.md §5.4): every test also fails on a
non-loopback request, a console error, a CSP violation or a dialog, and saves screenshots."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from browser_checks import (Checked, LiveServer, assert_glyphs_render, cdp_metrics, click, drag_slider, launch,
                            require_chromium, wait)
from studio_data import synthetic_dataset

from lorastudio.serving.app import create_app
from lorastudio.serving.http import Settings
from lorastudio.serving.store import JobStore, default_url

require_chromium()
TRIGGER = "ohwx_kfood_style"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chrome = launch(playwright)
        print(f"\nbrowser: chromium {chrome.version}")
        yield chrome
        chrome.close()


@pytest.fixture
def shots(tmp_path, request) -> Path:
    root = Path(os.environ.get("LORASTUDIO_ARTIFACTS") or tmp_path) / request.node.name
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def live(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    settings = Settings(data_dir=data, db_url=default_url(data), workers=0)
    store = JobStore(settings.db_url)
    server = LiveServer(create_app(settings, store=store, supervise=False))
    server.data, server.store = data, store
    yield server
    server.close()
    store.close()


@pytest.fixture
def checked(browser, shots):
    watched = Checked(browser, shots)
    yield watched
    watched.close()


@pytest.fixture
def tab(checked):
    return checked.page()


def _upload_photos(live, tab, photos: Path) -> None:
    """Create the toy dataset through the page's own upload form (a real multipart POST)."""
    tab.goto(live.url + "/studio")
    tab.fill("#ds-id", "kfood")
    tab.set_input_files("#ds-files", [str(p) for p in sorted(photos.iterdir())])
    tab.fill("#ds-trigger", TRIGGER)
    click(tab, "#upload-form button[type=submit]")
    wait(tab, "document.querySelector('#upload-result a') !== null", timeout=120)


def _sidecars(live) -> dict[str, str]:
    folder = live.data / "studio" / "datasets" / "kfood" / "dataset" / "images"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.txt"))}


def _tiny_tagger(data: Path, tags: list[tuple[str, int]], bias: list[float]) -> Path:
    """A tiny WD14-shaped tagger in the studio's captioner folder: each tag's score is its bias alone."""
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "captions" / "backends"))
    import tiny_caption_models as tiny

    return tiny.build_tagger(data / "models" / "captioners" / "wd-tiny", tags, np.zeros((3, len(tags))), np.array(bias))


def _blur_and_wait_saved(tab, next_field: str = "slot-trigger") -> None:
    """Move focus to another slot (the autosave trigger) and wait for the version to change."""
    before = tab.evaluate("document.getElementById('version').textContent")
    tab.evaluate(f"document.getElementById('{next_field}').focus()")
    wait(tab, f"document.getElementById('version').textContent !== '{before}'")


def test_gallery_with_1000_images_pages_lazily_and_caches(live, tab, checked):
    synthetic_dataset(live.data, "big", 1000)
    tab.goto(live.url + "/studio/datasets/big")
    wait(tab, "Array.from(document.images).slice(0, 24).every(i => i.complete && i.naturalWidth > 0)")
    assert tab.evaluate("document.images.length") <= 200
    checked.shot(tab, "gallery-desktop")
    heap = cdp_metrics(tab)
    assert heap["JSHeapUsedSize"] <= 50 * 1024 * 1024
    for _ in range(200):  # scrolling to the end loads every page
        if tab.evaluate("document.querySelectorAll('li.cell').length") >= 1000:
            break
        tab.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        tab.wait_for_timeout(200)
    assert tab.evaluate("document.querySelectorAll('li.cell').length") == 1000
    tab.evaluate("window.scrollTo(0, 0)")
    session = tab.context.new_cdp_session(tab)  # the network events say where each response came from
    events: list[tuple[str, dict]] = []
    session.send("Network.enable")
    for name in ("Network.requestServedFromCache", "Network.responseReceived"):
        session.on(name, lambda params, name=name: events.append((name, params)))
    tab.goto(live.url + "/studio/datasets/big")
    wait(tab, "Array.from(document.images).slice(0, 24).every(i => i.complete && i.naturalWidth > 0)")
    tab.wait_for_timeout(500)
    session.detach()
    cached = {p["requestId"] for name, p in events if name == "Network.requestServedFromCache"}
    thumbs = [p for name, p in events if name == "Network.responseReceived" and "/thumbnail" in p["response"]["url"]]
    first = set(tab.evaluate("Array.from(document.images).slice(0, 24).map(i => i.src)"))
    thumbs = [t for t in thumbs if t["response"]["url"] in first]
    fresh = [t["response"]["url"] for t in thumbs if t["requestId"] not in cached and not t["response"].get("fromDiskCache")]
    assert len(thumbs) >= 24 and fresh == []  # a reload takes thumbnails from the browser cache
    checked.assert_clean()


def test_gallery_bulk_edit_preview_apply_and_undo(live, tab, checked):
    synthetic_dataset(live.data, "kfood", 60, seed=2)  # §5.4 P2.8: 20 selected out of a larger dataset
    tab.goto(live.url + "/studio/datasets/kfood")
    before = _sidecars(live)
    boxes = tab.evaluate("document.querySelectorAll('input.sel').length")
    assert len(before) == 60 and boxes == 48  # the first page
    click(tab, "li.cell:nth-child(3) input.sel")
    click(tab, "li.cell:nth-child(22) input.sel", modifiers=["Shift"])  # shift-click selects the range
    wait(tab, "document.getElementById('selected-count').textContent === '20 selected'")
    chosen = tab.evaluate("Array.from(document.querySelectorAll('input.sel:checked')).map(b => b.value)")
    assert len(chosen) == 20
    tab.evaluate("document.getElementById('bulk-phrase').value = 'on a black background'")
    click(tab, "[data-action=preview]")
    wait(tab, "document.querySelectorAll('#diff tr').length === 20")
    assert all("on a black background" in t for t in tab.evaluate(
        "Array.from(document.querySelectorAll('#diff tr')).map(r => r.textContent)"))
    checked.shot(tab, "bulk-diff")
    assert _sidecars(live) == before
    click(tab, "[data-action=apply-diff]")
    wait(tab, "document.getElementById('flash').textContent.startsWith('Applied')")
    after = _sidecars(live)
    assert {n for n in before if before[n] != after[n]} == {f"{i}.txt" for i in chosen}
    tab.wait_for_timeout(800)  # the page reloads itself
    tab.goto(live.url + "/studio/datasets/kfood")
    click(tab, "[data-action=undo-op]")
    wait(tab, "document.getElementById('flash').textContent.startsWith('Undone')")
    assert _sidecars(live) == before
    tab.wait_for_timeout(800)
    tab.goto(live.url + "/studio/datasets/kfood")  # reject two from training, then restore one
    click(tab, "li.cell:nth-child(2) input.sel")
    click(tab, "li.cell:nth-child(3) input.sel")
    chosen_ids = tab.evaluate("Array.from(document.querySelectorAll('input.sel:checked')).map(b => b.value)")
    click(tab, "[data-action=reject]")
    wait(tab, "document.getElementById('flash').textContent === 'Rejected 2 image(s)'")
    tab.wait_for_timeout(800)
    tab.goto(live.url + "/studio/datasets/kfood")
    assert tab.evaluate("Array.from(document.querySelectorAll('li.cell.rejected')).map(c => c.dataset.id)") == chosen_ids
    manifest = live.data / "studio" / "datasets" / "kfood" / "dataset" / "manifest.jsonl"
    flagged = [json.loads(line)["id"] for line in manifest.read_text().splitlines() if "rejected" in json.loads(line)["flags"]]
    assert flagged == chosen_ids
    checked.shot(tab, "rejected")
    click(tab, "li.cell:nth-child(2) input.sel")
    click(tab, "[data-action=restore]")
    wait(tab, "document.getElementById('flash').textContent === 'Restored 1 image(s)'")
    assert _sidecars(live) == before  # reviewing never touches a caption
    checked.assert_clean()


def test_caption_editor_autosaves_undoes_lints_and_detects_conflicts(live, tab, checked, photos):
    _upload_photos(live, tab, photos)
    image = json.loads(tab.evaluate("fetch('/v1/datasets/kfood').then(r => r.text())"))["images"][0]["id"]
    sidecar = live.data / "studio" / "datasets" / "kfood" / "dataset" / "images" / f"{image}.txt"
    original = sidecar.read_text(encoding="utf-8")
    url = f"{live.url}/studio/datasets/kfood/images/{image}"
    tab.goto(url)
    tab.evaluate("document.getElementById('slot-style').focus()")
    tab.keyboard.insert_text("glossy, studio lighting")
    _blur_and_wait_saved(tab)  # leaving the style slot autosaves
    puts = [url for method, url in checked.requests if method == "PUT"]
    assert len(puts) == 1 and sidecar.read_text(encoding="utf-8").strip().endswith("glossy, studio lighting")
    tab.goto(url)
    assert tab.evaluate("document.getElementById('slot-style').value") == "glossy, studio lighting"
    tab.evaluate("document.activeElement.blur()")
    tab.keyboard.press("Control+z")  # Ctrl+Z: server-side undo
    wait(tab, "document.getElementById('flash').textContent === 'Undone'")
    assert sidecar.read_text(encoding="utf-8") == original
    tab.keyboard.press("Control+Shift+Z")  # Ctrl+Shift+Z: redo
    wait(tab, "document.getElementById('flash').textContent === 'Redone'")
    assert "glossy" in sidecar.read_text(encoding="utf-8")
    tab.evaluate("document.getElementById('slot-subject').focus()")
    tab.evaluate("document.getElementById('slot-subject').select()")
    tab.keyboard.insert_text("a photo of 양념치킨")
    wait(tab, "document.querySelector('#lint li[data-code=hangul]') !== null")
    wait(tab, "document.getElementById('glossary').textContent.includes('yangnyeom chicken')")
    assert_glyphs_render(tab, "#slot-subject", "양념치킨")  # Hangul shows as letters, not boxes
    assert_glyphs_render(tab, "#glossary", "양념치킨")
    checked.shot(tab, "editor-hangul")
    _blur_and_wait_saved(tab, "slot-objective")
    checked.allow.add(409)  # the conflict below is the point: its 409 is shown as a dialog, not a fault
    other = checked.page()  # a second tab loaded now, then the first one saves first
    try:
        other.goto(url)
        tab.evaluate("document.getElementById('slot-style').focus()")
        tab.keyboard.insert_text(", warm")
        _blur_and_wait_saved(tab)
        saved = sidecar.read_text(encoding="utf-8")
        other.evaluate("document.getElementById('slot-style').focus()")
        other.keyboard.insert_text(", matte")
        other.evaluate("document.getElementById('slot-trigger').focus()")
        wait(other, "document.getElementById('conflict').open")
        checked.shot(other, "editor-conflict")
        assert sidecar.read_text(encoding="utf-8") == saved  # no silent overwrite
        checked.assert_clean()
    finally:
        other.close()
    tab.evaluate("document.getElementById('slot-subject').focus()")
    tab.evaluate("document.getElementById('slot-subject').select()")
    tab.keyboard.insert_text("<img src=x onerror=alert(1)>")
    _blur_and_wait_saved(tab)
    tab.goto(f"{live.url}/studio/datasets/kfood")
    assert tab.evaluate("document.body.textContent.includes('<img src=x onerror=alert(1)>')")
    assert tab.evaluate("document.querySelectorAll('img[src=x]').length") == 0
    tab.goto(url)
    tab.keyboard.press("j")
    wait(tab, f"location.pathname !== '/studio/datasets/kfood/images/{image}'")
    checked.assert_clean()  # also: no dialog ever opened


def test_contamination_page_shows_the_confounder_and_applies_the_fix(live, tab, checked, photos):
    _upload_photos(live, tab, photos)
    tab.goto(live.url + "/studio/datasets/kfood/audit")
    click(tab, "[data-action=run-audit]")
    wait(tab, "document.querySelector('tr[data-attr=\"black background\"]') !== null", timeout=120)
    row = tab.evaluate("Array.from(document.querySelectorAll('tr[data-attr=\"black background\"] td')).map(t => t.textContent.trim())")
    assert int(row[1].split()[0]) >= 90 and row[2] == "0 %" and row[4] == "contaminant"
    checked.shot(tab, "contamination")
    click(tab, "tr[data-attr=\"black background\"] a")
    wait(tab, "location.search.includes('attr')")
    shown = tab.evaluate("document.querySelectorAll('li.cell').length")
    assert shown >= 0.9 * len(_sidecars(live))
    before = _sidecars(live)
    tab.goto(live.url + "/studio/datasets/kfood/audit")
    click(tab, "[data-action=fix-preview]")
    wait(tab, "document.querySelectorAll('#diff tr').length > 0")
    assert tab.evaluate("document.querySelectorAll('#diff tr').length") == shown
    click(tab, "[data-action=apply-diff]")
    wait(tab, "document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)') !== null && "
             "document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)').textContent.trim() === '100 %'",
             timeout=120)
    click(tab, "[data-action=undo-op]")
    wait(tab, "document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)').textContent.trim() === '0 %'",
             timeout=120)
    assert _sidecars(live) == before
    checked.assert_clean()


def test_pages_fit_a_phone_and_settings_turn_on_login(live, browser, tab, checked, photos):
    _upload_photos(live, tab, photos)
    image = json.loads(tab.evaluate("fetch('/v1/datasets/kfood').then(r => r.text())"))["images"][0]["id"]
    phone = Checked(browser, checked.shots, 390, 844, is_mobile=True, has_touch=True)
    page = phone.page()
    for name, path in (("projects", "/studio"), ("gallery", "/studio/datasets/kfood"),
                       ("editor", f"/studio/datasets/kfood/images/{image}"), ("audit", "/studio/datasets/kfood/audit"),
                       ("jobs", "/studio/jobs"), ("settings", "/studio/settings"), ("train", "/studio/runs/new"),
                       ("enhance", "/studio/enhance"), ("compare", "/studio/compare")):
        page.goto(live.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        phone.shot(page, f"phone-{name}")
        assert width <= 390, (name, width)
    phone.assert_clean()
    phone.close()
    tab.goto(live.url + "/studio/settings")
    tab.evaluate("document.getElementById('key-name').value = 'lead'")
    tab.evaluate("document.querySelector('input[value=admin]').checked = true")
    click(tab, "#key-form button[type=submit]")
    token = wait(tab, "document.getElementById('new-key-token').textContent")
    assert token.startswith("lsk_")
    checked.allow.add(401)  # the login page itself answers 401 by design
    tab.goto(live.url + "/studio/settings")
    assert tab.evaluate("document.title").startswith("Log in")
    tab.evaluate(f"document.getElementById('key').value = {json.dumps(token)}")
    click(tab, "form.stack button[type=submit]")
    wait(tab, "document.title.startsWith('Projects')")
    tab.goto(live.url + "/studio/settings")
    assert tab.evaluate("document.querySelectorAll('#keys tbody tr').length") == 1
    checked.shot(tab, "settings")
    checked.assert_clean()


@pytest.mark.slow
def test_whole_flow_upload_fix_train_and_enhance_with_the_toy_model(tmp_path, checked, photos):
    """12 toy photos with a planted confounder -> gallery -> edit + undo -> contamination fix -> train
    (loss streaming) -> enhance with the new LoRA -> before/after."""
    from lorastudio.toyworld.pretrain import shipped_base_dir

    data = tmp_path / "flow"
    data.mkdir()
    settings = Settings(data_dir=data, db_url=default_url(data), model=str(shipped_base_dir()), workers=1, lease_s=5.0)
    store = JobStore(settings.db_url)
    live = LiveServer(create_app(settings, store=store))
    live.data = data
    tab = checked.page()
    uncaptioned = tmp_path / "phone"  # the photos alone, as they come off a phone: no caption files
    uncaptioned.mkdir()
    for jpg in sorted(photos.glob("*.jpg")):
        shutil.copyfile(jpg, uncaptioned / jpg.name)
    _tiny_tagger(data, [("food", 0), ("bowl", 0)], bias=[2.0, -2.0])  # tags every photo "food", never "bowl"
    try:
        _upload_photos(live, tab, uncaptioned)
        tab.goto(live.url + "/studio/datasets/kfood")
        wait(tab, "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        end = time.time() + 300
        while not any(w["state"] in ("ready", "busy") for w in store.live_workers(15)):  # the toy model loads
            assert time.time() < end, store.live_workers(1e9)
            time.sleep(0.5)
        tab.click("#caption-job summary")  # caption from pixels with a backend, as a job
        tab.select_option("#cj-backend", "tagger")
        tab.fill("#cj-model", "wd-tiny")
        click(tab, "[data-action=caption-run]")
        wait(tab, "document.getElementById('cj-status').dataset.status === 'succeeded'", timeout=180)
        images = data / "studio" / "datasets" / "kfood" / "dataset" / "images"
        captions = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in sorted(images.glob("*.jpg"))]
        assert len(captions) >= 10 and all("food" in c and "bowl" not in c and "black" not in c for c in captions)
        tab.goto(live.url + "/studio/datasets/kfood")
        first = tab.evaluate("document.querySelector('li.cell').dataset.id")
        sidecar = data / "studio" / "datasets" / "kfood" / "dataset" / "images" / f"{first}.txt"
        original = sidecar.read_text(encoding="utf-8")
        tab.goto(f"{live.url}/studio/datasets/kfood/images/{first}")
        tab.evaluate("document.getElementById('slot-style').focus()")
        tab.keyboard.insert_text("glossy")
        _blur_and_wait_saved(tab)
        assert "glossy" in sidecar.read_text(encoding="utf-8")
        click(tab, "[data-action=undo]")
        wait(tab, "document.getElementById('flash').textContent === 'Undone'")
        assert sidecar.read_text(encoding="utf-8") == original
        tab.goto(live.url + "/studio/datasets/kfood/audit")
        click(tab, "[data-action=run-audit]")
        wait(tab, "document.querySelector('tr[data-attr=\"black background\"].verdict-contaminant') !== null", timeout=120)
        click(tab, "[data-action=fix-preview]")
        wait(tab, "document.querySelectorAll('#diff tr').length > 0")
        click(tab, "[data-action=apply-diff]")
        wait(tab, "document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)') !== null && "
                 "document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)').textContent.trim() === '100 %'",
                 timeout=120)
        from lorastudio.serving.routes.admin import list_jobs

        audits = list_jobs(store, None, None, "audit", 10)  # the audit and the re-audit after the fix ran on the worker
        assert len(audits) == 2 and all(j.status == "succeeded" for j in audits)
        tab.goto(live.url + "/studio/runs/new?dataset=kfood")
        tab.evaluate("(() => { const s = document.getElementById('t-preset'); s.value = 'toy';"
                 " s.dispatchEvent(new Event('change')); })()")
        tab.evaluate("document.getElementById('t-lora_id').value = 'kfood-flow'")
        if tab.evaluate("document.getElementById('t-override') !== null"):
            tab.evaluate("document.getElementById('t-override').focus()")
            tab.keyboard.insert_text("toy run: the remaining findings are expected")
        checked.shot(tab, "train-form")
        click(tab, "#t-submit")
        wait(tab, "location.pathname.startsWith('/studio/jobs/')", timeout=120)
        wait(tab, "Number(document.getElementById('loss-line').dataset.points || 0) >= 2", timeout=300)
        seen = int(tab.evaluate("document.getElementById('loss-line').dataset.points"))
        tab.goto(tab.evaluate("location.href"))  # a reload restores the whole curve and keeps streaming
        wait(tab, f"Number(document.getElementById('loss-line').dataset.points || 0) >= {seen}", timeout=120)
        wait(tab, "document.getElementById('job-status').textContent === 'completed'", timeout=600)
        assert int(tab.evaluate("document.getElementById('loss-line').dataset.points")) == 20  # toy preset: 20 steps, each logged
        wait(tab, "document.getElementById('val-line').dataset.points === '3'")  # validation at steps 0, 10 and 20
        assert "(4 training images, fixed noise)" in tab.text_content("#live-val")
        tab.reload()  # the run record: final/'s checksums and the resolved config, without server paths
        run_id = list_jobs(store, None, None, "train", 1)[0].params["run_id"]
        complete = json.loads((data / "datasets" / run_id / "run" / "final" / "COMPLETE.json").read_text(encoding="utf-8"))
        rows = tab.evaluate("Array.from(document.querySelectorAll('#run-checksums tbody tr')).map(r => [r.cells[0].textContent,"
                            " r.cells[1].textContent])")
        assert rows and dict(rows) == complete["files"]
        config = tab.text_content("#resolved-config pre")
        assert "<data>/datasets/" in config and str(data) not in config and "max_steps: 20" in config
        checked.shot(tab, "run")
        tab.goto(live.url + "/studio/enhance")
        tab.set_input_files("#e-image", str(sorted(photos.glob("*.jpg"))[1]))
        tab.evaluate("document.getElementById('e-lora').value = 'kfood-flow'")
        tab.evaluate("document.getElementById('e-steps').value = '4'")
        click(tab, "#enhance-form button[type=submit]")
        wait(tab, "document.getElementById('after').complete && document.getElementById('after').naturalWidth > 0",
                 timeout=300)
        assert tab.evaluate("document.getElementById('before').naturalWidth > 0")
        value = drag_slider(tab, "#slider", 0.2)  # before/after, dragged with the mouse
        assert 10 <= value <= 30
        assert tab.evaluate("document.getElementById('after').style.clipPath") == f"inset(0px 0px 0px {value}%)"
        checked.shot(tab, "enhance")
        tab.goto(live.url + "/studio/jobs?kind=enhance")  # the enhance run is a job like any other (P8.1)
        rows = tab.evaluate("Array.from(document.querySelectorAll('#job-rows tr')).map(r => r.textContent)")
        assert len(rows) == 1 and "enhance" in rows[0] and "succeeded" in rows[0]
        checked.assert_clean()
    finally:
        live.close()
        store.close()


def test_compare_grid_has_a_leak_row_and_an_ab_slider(tmp_path, checked):
    data = tmp_path / "cmp"
    data.mkdir()
    settings = Settings(data_dir=data, db_url=default_url(data), fake_workers=True, workers=1, fake_step_s=0.001)
    store = JobStore(settings.db_url)
    live = LiveServer(create_app(settings, store=store))
    tab = checked.page()
    try:
        end = time.time() + 60
        while not any(w["state"] in ("ready", "busy") for w in store.live_workers(15)):
            assert time.time() < end, "the fake worker did not start"
            time.sleep(0.2)
        tab.goto(live.url + "/studio/compare")
        tab.evaluate("document.getElementById('c-trigger').value = 'ohwx_kfood_style'")
        tab.evaluate("document.getElementById('c-prompts').value = "
                 "'ohwx_kfood_style, a photo of bibimbap\\nohwx_kfood_style, a photo of japchae'")
        tab.evaluate("document.getElementById('c-size').value = '64x64'")
        click(tab, "#compare-form button[type=submit]")
        wait(tab, "document.getElementById('flash').textContent.startsWith('Grid done')", timeout=120)
        # "Grid done" comes before the cells' images have arrived: wait for every one to decode
        wait(tab, "Array.from(document.querySelectorAll('#cmp-grid img')).every(i => i.complete && i.naturalWidth > 0)")
        cells = tab.evaluate("Array.from(document.querySelectorAll('#cmp-grid img')).map(i => i.complete && i.naturalWidth > 0)")
        assert cells == [True, True, True]  # 2 prompts + the leak row, base column
        assert tab.evaluate("document.querySelector('#cmp-grid tr:last-child td').textContent").endswith("(leak row)")
        click(tab, "#cmp-grid tr:nth-child(2) img")
        click(tab, "#cmp-grid tr:nth-child(4) img")
        value = drag_slider(tab, "#slider", 0.2)  # the A/B handle, dragged with the mouse (P7.3)
        assert 10 <= value <= 30  # it followed the pointer from 50 to about 20
        assert tab.evaluate("document.getElementById('after').style.clipPath") == f"inset(0px 0px 0px {value}%)"
        assert tab.evaluate("document.getElementById('cmp-a').src") != tab.evaluate("document.getElementById('after').src")
        checked.shot(tab, "compare")
        checked.assert_clean()
    finally:
        live.close()
        store.close()


@pytest.fixture
def fake_live(tmp_path):
    """The app with one fake worker (jobs run as timing stand-ins, no model)."""
    data = tmp_path / "fake"
    data.mkdir()
    settings = Settings(data_dir=data, db_url=default_url(data), fake_workers=True, workers=1, fake_step_s=0.001)
    store = JobStore(settings.db_url)
    server = LiveServer(create_app(settings, store=store))
    server.data, server.store = data, store
    end = time.time() + 60
    while not any(w["state"] in ("ready", "busy") for w in store.live_workers(15)):
        assert time.time() < end, "the fake worker did not start"
        time.sleep(0.2)
    yield server
    server.close()
    store.close()


def test_training_form_yaml_typo_blocks_submit_and_the_yaml_itself_submits(fake_live, tab, checked):
    from lorastudio.serving.routes.admin import list_jobs

    live = fake_live
    synthetic_dataset(live.data, "small", 6)
    checked.allow.add(422)  # the typo's answer, shown on the page
    tab.goto(live.url + "/studio/runs/new?dataset=small")
    assert tab.evaluate("document.getElementById('t-submit').disabled")  # never audited: the gate blocks
    assert tab.evaluate("document.getElementById('y-submit').disabled")
    assert "6 images" in tab.evaluate("document.getElementById('epochs').textContent")
    tab.evaluate("document.getElementById('t-override').focus()")
    tab.keyboard.insert_text("reviewed by hand")
    assert not tab.evaluate("document.getElementById('t-submit').disabled")
    tab.evaluate("document.getElementById('yaml-tab').open = true")
    click(tab, "[data-action=yaml-defaults]")
    wait(tab, "document.getElementById('y-text').value.includes('max_steps')")
    tab.evaluate("(() => { const t = document.getElementById('y-text'); t.value = t.value.replace('max_steps:', 'max_stepz:'); })()")
    click(tab, "[data-action=yaml-check]")
    wait(tab, "document.getElementById('y-result').textContent.includes('did you mean')")
    assert tab.evaluate("document.getElementById('t-submit').disabled")
    assert tab.evaluate("document.getElementById('y-submit').disabled")
    checked.shot(tab, "yaml-typo")
    tab.evaluate("(() => { const t = document.getElementById('y-text');"
                 " t.value = t.value.replace('max_stepz:', 'max_steps:').replace(/max_steps: \\d+/, 'max_steps: 12'); })()")
    click(tab, "[data-action=yaml-check]")
    wait(tab, "document.getElementById('y-result').textContent === 'valid'")
    assert not tab.evaluate("document.getElementById('t-submit').disabled")
    tab.fill("#t-lora_id", "small-yaml")
    click(tab, "#y-submit")
    wait(tab, "location.pathname.startsWith('/studio/jobs/')", timeout=60)
    params = list_jobs(live.store, None, None, "train", 1)[0].params
    assert params["steps"] == 12 and params["config"]["train"]["max_steps"] == 12 and params["lora_id"] == "small-yaml"
    checked.shot(tab, "yaml-submitted")
    checked.assert_clean()


def test_training_form_family_fields_are_labelled_and_submit_with_the_form(fake_live, tab, checked):
    """§5.2 P5: the served family's config fields are on the form, labelled, and what the user sets
    in them is what the job trains with."""
    from lorastudio.serving.routes.admin import list_jobs

    live = fake_live
    synthetic_dataset(live.data, "small", 6)
    tab.goto(live.url + "/studio/runs/new?dataset=small")
    legend = tab.evaluate("document.querySelector('#family-options legend').textContent")
    assert legend == "sd15 settings"
    unlabelled = tab.evaluate("Array.from(document.querySelectorAll('[data-option]'))"
                              ".filter(el => !el.labels.length || !el.getAttribute('aria-describedby')).length")
    assert unlabelled == 0
    tab.evaluate("document.getElementById('t-override').focus()")
    tab.keyboard.insert_text("reviewed by hand")
    tab.fill("#t-lora_id", "small-opts")
    tab.fill("#o-train-min_snr_gamma", "5")
    tab.select_option("#o-network-targets", "attn_ff")
    tab.check("#o-data-flip")
    checked.shot(tab, "family-fields")
    click(tab, "#t-submit")
    wait(tab, "location.pathname.startsWith('/studio/jobs/')", timeout=60)
    params = list_jobs(live.store, None, None, "train", 1)[0].params
    assert params["lora_id"] == "small-opts"
    assert params["options"] == {"train": {"min_snr_gamma": 5.0, "noise_offset": 0.0}, "network": {"targets": "attn_ff"},
                                 "data": {"flip": True}}
    checked.assert_clean()


def test_jobs_page_pauses_and_resumes_the_queue(fake_live, tab, checked):
    from lorastudio.serving.routes.admin import queue_paused

    tab.goto(fake_live.url + "/studio/jobs")
    assert tab.text_content("#queue-label") == "queue running"
    click(tab, "[data-action=pause-queue]")
    wait(tab, "document.getElementById('flash').textContent === 'Queue paused'")
    assert queue_paused(fake_live.store) and tab.text_content("#queue-toggle") == "Resume queue"
    store = fake_live.store
    a, b, c = (store.submit("generate", "local", {"prompt": p, "size": "64x64", "steps": 2, "seed": 1})[0]
               for p in ("bibimbap", "japchae", "kimchi stew"))
    tab.wait_for_timeout(1500)  # the fake worker polls meanwhile and must take nothing
    assert [store.get(j.id).status for j in (a, b, c)] == ["queued"] * 3
    checked.shot(tab, "queue-paused")
    tab.reload()
    assert tab.text_content("#queue-label").startswith("queue paused")
    click(tab, f"tr[data-job='{b.id}'] [data-action=cancel-job]")  # cancel the middle one (P9.1)
    wait(tab, f"document.getElementById('flash').textContent === 'Job {b.id[:8]}: canceled'")
    click(tab, f"tr[data-job='{c.id}'] [data-action=prepend-job]")  # the last one runs next (P9.5)
    wait(tab, f"document.getElementById('flash').textContent === 'Job {c.id[:8]} runs next'")
    wait(tab, f"(document.querySelector(\"tr[data-job='{c.id}']\") || {{}}).textContent.includes('(#1)') && "
              f"(document.querySelector(\"tr[data-job='{a.id}']\") || {{}}).textContent.includes('(#2)')")  # live rows
    assert store.get(b.id).status == "canceled"
    click(tab, "[data-action=resume-queue]")
    wait(tab, "document.getElementById('flash').textContent === 'Queue resumed'")
    end = time.time() + 60
    while not all(store.get(j.id).status == "succeeded" for j in (a, c)):
        assert time.time() < end, [store.get(j.id).status for j in (a, c)]
        time.sleep(0.1)
    assert store.get(c.id).started_at <= store.get(a.id).started_at and store.get(b.id).status == "canceled"
    checked.assert_clean()


def test_run_page_shows_lr_eta_and_samples_from_the_event_stream(live, tab, checked):
    from studio_data import train_job_with_samples

    job_id, run_id = train_job_with_samples(live.store, live.data)
    log = live.data / "datasets" / run_id / "train.log"
    log.write_text(f"data: {live.data}/datasets/{run_id}/dataset\n", encoding="utf-8")
    tab.goto(f"{live.url}/studio/jobs/{job_id}")
    wait(tab, "document.getElementById('loss-line').dataset.points === '2'")
    assert tab.text_content("#log") == f"data: <data>/datasets/{run_id}/dataset\n"  # no server path reaches the page
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("step 3: loss 0.1000\n")
    wait(tab, "document.getElementById('log').textContent.endsWith('step 3: loss 0.1000\\n')")  # the log view streams
    assert tab.text_content("#live-lr") == "1.00e-3"
    assert tab.evaluate("document.getElementById('live-eta').dataset.seconds") == "9"  # (20 - 2) steps x 0.5 s
    wait(tab, "document.querySelectorAll('#samples figure[data-step=\"10\"] img').length === 2 && "
              "Array.from(document.querySelectorAll('#samples img')).every(i => i.complete && i.naturalWidth === 32)")
    live.store.add_event(job_id, "step", {"step": 3, "loss": 0.1, "n": 20, "lr": 5e-4, "s_per_step": 1.0})
    wait(tab, "document.getElementById('live-lr').textContent === '5.00e-4'")  # live, not just the replay
    assert tab.evaluate("document.getElementById('live-eta').dataset.seconds") == "17"
    raw = tab.get_attribute("#loss-line", "points")  # losses 0.5, 0.25, 0.1 at steps 1-3
    click(tab, "#loss-ema")
    smoothed = tab.get_attribute("#loss-line", "points")
    assert smoothed != raw and smoothed.split()[0] == raw.split()[0]  # the EMA starts at the first loss
    click(tab, "#loss-log")
    assert tab.get_attribute("#loss-line", "points") not in (raw, smoothed)
    click(tab, "#loss-ema")
    click(tab, "#loss-log")
    assert tab.get_attribute("#loss-line", "points") == raw  # both off: the per-step curve again
    checked.shot(tab, "run-page")
    tab.reload()  # a reload replays the whole history: curve, rate and samples
    wait(tab, "document.getElementById('loss-line').dataset.points === '3' && "
              "document.querySelectorAll('#samples img').length === 2")
    checked.assert_clean()


def test_reloading_mid_run_restores_the_curve_and_keeps_streaming_while_the_job_runs(live, tab, checked):
    """§5.4 P6.2: a reload while the job is running restores every step so far, the job still
    reads running, and the steps that arrive afterwards extend the curve with no gap and no repeat."""
    job, _ = live.store.submit("train", "local", {"run_id": "cd" * 16, "steps": 10, "lora_id": "x"})
    assert live.store.claim("w-test", 600, kinds=("train",)).id == job.id
    emit = lambda step: live.store.add_event(job.id, "step", {"step": step, "loss": 1.0 / step, "n": 10,  # noqa: E731
                                                              "lr": 1e-3, "s_per_step": 0.5})
    check = lambda step, val, leak: (  # noqa: E731 - the worker's validation / leak events (runners._report_checks)
        live.store.add_event(job.id, "validation", {"step": step, "val_loss": val, "val_split": "held-out", "val_images": 2}),
        live.store.add_event(job.id, "leak", {"step": step, "leak": {"black_background": leak, "sesame": 0.0},
                                              "leak_images": 2}))
    for step in range(1, 5):
        emit(step)
    tab.goto(f"{live.url}/studio/jobs/{job.id}")
    wait(tab, "document.getElementById('loss-line').dataset.points === '4'")
    assert tab.is_visible("#no-leak") and not tab.is_visible("#leak-table")
    emit(5)
    check(5, 0.2, 0.5)
    wait(tab, "document.getElementById('loss-line').dataset.points === '5' && "
              "document.getElementById('val-line').dataset.points === '1'")
    assert tab.text_content("#live-val") == "0.2000 at step 5 (2 held-out images)"
    leak = tab.evaluate("Array.from(document.querySelectorAll('#leak-table tbody tr')).map(r => [r.dataset.attr, r.className,"
                        " Array.from(r.cells).map(c => c.textContent)])")
    assert leak == [["black_background", "leaking", ["black background", "+50 %", "5"]], ["sesame", "", ["sesame", "0 %", "5"]]]
    tab.reload()
    wait(tab, "document.getElementById('loss-line').dataset.points === '5' && "
              "document.getElementById('val-line').dataset.points === '1' && "
              "document.querySelectorAll('#leak-table tbody tr').length === 2")
    assert live.store.get(job.id).status == "running"
    assert tab.text_content("#job-status") == "running"
    click(tab, "[data-action=save-now]")  # asks the worker to signal the trainer (SIGUSR2): a checkpoint after the next step
    wait(tab, "document.getElementById('flash').textContent.startsWith('Checkpoint asked for')")
    assert [k for _, k, _ in live.store.events_after(job.id, 0)].count("save_asked") == 1
    for step in range(6, 11):
        emit(step)
    check(10, 0.15, 0.0)
    wait(tab, "document.getElementById('loss-line').dataset.points === '10' && "
              "document.getElementById('val-line').dataset.points === '2'")
    assert tab.text_content("#leak-table tbody tr[data-attr=black_background] td:nth-child(2)") == "0 %"
    val_ys = [float(p.split(",")[1]) for p in tab.get_attribute("#val-line", "points").split()]
    assert val_ys[1] > val_ys[0]  # a lower validation loss is drawn lower (larger y)
    xs = [float(p.split(",")[0]) for p in tab.get_attribute("#loss-line", "points").split()]
    assert len(xs) == 10 and all(a < b for a, b in zip(xs, xs[1:]))  # one point per step, in order
    shown = tab.evaluate("Array.from(document.querySelectorAll('#events li[data-event]')).map(li => li.dataset.event)")
    assert len(shown) == len(set(shown)) == 2 + 10 + 4  # queued, started, ten steps, two checks; none twice
    checked.shot(tab, "run-reloaded")
    checked.assert_clean()


def test_gallery_runs_a_captioning_backend_as_a_job(fake_live, tab, checked, photos):
    _tiny_tagger(fake_live.data, [("black_background", 0), ("food", 0)], bias=[2.0, 0.0])
    _upload_photos(fake_live, tab, photos)
    tab.goto(fake_live.url + "/studio/datasets/kfood")
    tab.click("#caption-job summary")
    tab.select_option("#cj-backend", "tagger")
    tab.fill("#cj-model", "wd-tiny")
    tab.check("#cj-overwrite")
    click(tab, "[data-action=caption-run]")
    wait(tab, "document.getElementById('cj-status').dataset.status === 'succeeded'", timeout=120)
    checked.shot(tab, "caption-job")
    wait(tab, "document.querySelector('li.cell p.cap') !== null && "
              "Array.from(document.querySelectorAll('li.cell p.cap')).every(p => p.textContent.includes('black background'))",
         timeout=30)
    checked.assert_clean()


def _fake_toy_server(data: Path):  # noqa: ANN202 - (data dir, store, live server)
    """A live studio with one fast fake worker that knows the shipped toy model (its folder is what
    real runs, checkpoints and evaluate read)."""
    from lorastudio.toyworld.pretrain import shipped_base_dir

    data.mkdir()
    settings = Settings(data_dir=data, db_url=default_url(data), fake_workers=True, workers=1, fake_step_s=0.001,
                        model=str(shipped_base_dir()))
    store = JobStore(settings.db_url)
    return data, store, LiveServer(create_app(settings, store=store))


def test_compare_grid_has_checkpoint_columns_and_marks_the_recommended_one(tmp_path, checked):
    from studio_data import finished_run_with_checkpoints, toy_lora_bytes

    data, store, live = _fake_toy_server(tmp_path / "ckpt")
    tab = checked.page()
    try:
        job = finished_run_with_checkpoints(store, data, toy_lora_bytes(tmp_path / "l"))
        tab.goto(live.url + "/studio/compare")
        assert tab.text_content("#c-checkpoints strong.recommended").startswith("★ recommended")
        tab.check(f"input[name=ckpt][value='{job}:10']")
        tab.fill("#c-scales", "0.8, 1.0")
        tab.fill("#c-prompts", "ohwx_kfood_style, a photo of bibimbap")
        tab.fill("#c-trigger", "ohwx_kfood_style")
        tab.select_option("#c-size", "64x64")
        click(tab, "#compare-form button[type=submit]")
        wait(tab, "document.getElementById('flash').textContent.startsWith('Grid done')", timeout=120)
        heads = tab.evaluate("Array.from(document.querySelectorAll('#cmp-grid th')).map(t => t.textContent)")
        assert heads == ["prompt", "base", "kfood-v1 step 10 × 0.8 ★", "kfood-v1 step 10 × 1"]
        wait(tab, "Array.from(document.querySelectorAll('#cmp-grid img')).every(i => i.complete && i.naturalWidth > 0)")
        cells = tab.evaluate("Array.from(document.querySelectorAll('#cmp-grid img')).map(i => i.complete && i.naturalWidth > 0)")
        assert cells == [True] * 6  # (prompt + leak row) x (base + 2 scales)
        assert tab.evaluate("document.querySelectorAll('#cmp-grid td.recommended img').length") == 2
        checked.shot(tab, "compare-checkpoints")
        checked.assert_clean()
    finally:
        live.close()
        store.close()


def test_compare_evaluates_a_real_run_then_renders_seeds_and_exports_the_grid(tmp_path, checked, photos):
    """Evaluate from the page (a real `evaluate` job on a real 6-step run) marks the checkpoint that
    evaluation.json recommends; a grid of 2 runs x 3 checkpoints x 3 scales x 2 seeds (36 cells, plus
    the base column) renders and exports as one PNG of matching size."""
    import json

    from PIL import Image
    from studio_data import trained_run

    data, store, live = _fake_toy_server(tmp_path / "eval")
    tab = checked.page()
    try:
        job = trained_run(store, data, photos, "kfood-a", "a1" * 16, steps=6)
        other = trained_run(store, data, photos, "kfood-b", "b2" * 16, steps=6, seed=1)
        tab.goto(live.url + "/studio/compare")
        assert tab.evaluate("document.querySelector('#c-checkpoints strong.recommended') === null")
        tab.fill("#c-prompts", "ohwx_kfood_style, a photo of bibimbap")
        tab.fill("#c-scales", "1.0")
        tab.fill("#c-seed", "3")
        tab.fill("#c-steps", "2")
        tab.select_option("#c-size", "64x64")
        click(tab, f"[data-action=evaluate-run][data-job='{job}']")
        wait(tab, "document.querySelector('#c-checkpoints strong.recommended') !== null", timeout=300)
        rec = json.loads((data / "datasets" / ("a1" * 16) / "run" / "evaluation.json").read_text())["recommendation"]
        marked = tab.evaluate("document.querySelector('#c-checkpoints strong.recommended').closest('label')"
                              ".querySelector('input').value")
        assert marked == f"{job}:{rec['step']}" and rec["scale"] == 1.0
        for run in (job, other):  # §5.4 P7.1: 2 runs x 3 checkpoints x 3 scales x 2 seeds
            for step in (2, 4, 6):
                tab.check(f"input[name=ckpt][value='{run}:{step}']")
        tab.fill("#c-prompts", "ohwx_kfood_style, a photo of bibimbap")
        tab.fill("#c-trigger", "")
        tab.fill("#c-scales", "0.5, 0.8, 1.0")
        tab.fill("#c-seed", "1, 2")
        tab.select_option("#c-size", "64x64")
        click(tab, "#compare-form button[type=submit]")
        wait(tab, "document.getElementById('flash').textContent.startsWith('Grid done')", timeout=180)
        wait(tab, "Array.from(document.querySelectorAll('#cmp-grid img')).every(i => i.complete && i.naturalWidth > 0)")
        heads = tab.evaluate("Array.from(document.querySelectorAll('#cmp-grid th')).map(t => t.textContent)")
        assert len(heads) == 2 + 18 and sum(h.startswith(("kfood-a step", "kfood-b step")) for h in heads) == 18
        assert tab.evaluate("document.querySelectorAll('#cmp-grid td:not(:first-child) img').length") == 2 * 19
        assert tab.evaluate("document.querySelectorAll('#cmp-grid td:nth-child(n+3) img').length") == 36  # every checkpoint x scale x seed cell rendered (plus 2 base cells)
        assert tab.evaluate("document.querySelectorAll('#cmp-grid td.recommended img').length") == 2  # 1 column x 2 seeds
        labels = tab.evaluate("Array.from(document.querySelectorAll('#cmp-grid tr td:first-child')).map(t => t.textContent)")
        assert [label.rsplit(" · seed ", 1)[1] for label in labels] == ["1", "2"]
        side = tab.evaluate("document.querySelector('#cmp-grid img').naturalWidth")
        with tab.expect_download() as download:
            click(tab, "#cmp-export")
        exported = Image.open(download.value.path())
        assert download.value.suggested_filename == "lorastudio-compare.png"
        assert exported.format == "PNG" and exported.size == (19 * side, 24 + 2 * side)
        checked.shot(tab, "compare-evaluated")
        checked.assert_clean()
    finally:
        live.close()
        store.close()


def _token_fixture(data: Path) -> tuple[list[str], list[str], object]:
    """10 captioned images whose captions run from 1 short line to exactly 75 and exactly 76 tokens of the
    served (toy) tokenizer, counted by transformers (not the studio's own counter); returns ids, texts, tokenizer."""
    from lorastudio.captions.slots import Caption, compose
    from lorastudio.captions.tokens import count_tokens, load_tokenizers
    from lorastudio.data.manifest import read_manifest, write_manifest, write_sidecar
    from lorastudio.serving.routes.datasets import model_dir
    from types import SimpleNamespace

    home = synthetic_dataset(data, "tok", 10, seed=4) / "dataset"
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(model=None))))
    (name, tok), = load_tokenizers(model_dir(request))
    n = lambda cap: count_tokens(tok, compose(cap))  # noqa: E731
    words = ["glossy", "warm light", "soft shadows", "steam", "sesame", "dark wood", "a", "matte", "red", "bowl"]

    def grown(target: int) -> Caption:
        cap = Caption.from_dict({"trigger": TRIGGER, "subject": "a photo of bibimbap", "style": ""})
        i = 0
        while n(cap) < target:  # add words while they fit, then single 'a's to land exactly on the target
            trial = Caption.from_dict({**cap.to_dict(), "style": cap.style + [words[i % len(words)]]})
            if n(trial) > target:
                trial = Caption.from_dict({**cap.to_dict(), "style": [*cap.style[:-1], (cap.style or ["a"])[-1] + " a"]})
            cap = trial
            i += 1
        return cap

    records = read_manifest(home)
    targets = [None, None, None, 25, 40, 60, 74, 75, 76, 90]
    for record, target, extra in zip(records, targets, ["", "studio lighting", "양념치킨", *[""] * 7]):
        cap = grown(target) if target else Caption.from_dict({"trigger": TRIGGER, "subject": "a photo of bibimbap", "style": extra})
        assert target is None or n(cap) == target, (target, n(cap))
        record["caption"], record["caption_text"] = cap.to_dict(), compose(cap)
        write_sidecar(home, record)
    write_manifest(home, records)
    return [r["id"] for r in records], [r["caption_text"] for r in records], (name, tok)


def test_editor_token_badges_equal_the_tokenizer_and_flag_76_red(live, tab, checked):
    from lorastudio.captions.tokens import count_tokens

    ids, texts, (name, tok) = _token_fixture(live.data)
    expected = [count_tokens(tok, t) for t in texts]
    assert 76 in expected and 75 in expected
    for image, want in zip(ids, expected):
        tab.goto(f"{live.url}/studio/datasets/tok/images/{image}")
        wait(tab, "document.body.dataset.ready === '1'")
        badges = tab.evaluate("Array.from(document.querySelectorAll('#tokens .token')).map(b => "
                              "[b.dataset.encoder, b.textContent.trim(), b.classList.contains('over'), getComputedStyle(b).color])")
        assert [b[:3] for b in badges] == [[name, f"{name}: {want}/75", want > 75]], (want, badges)
        if want == 76:
            checked.shot(tab, "editor-76-tokens")
            over_colour = badges[0][3]
            lint = tab.evaluate("Array.from(document.querySelectorAll('#lint li')).map(l => l.dataset.code)")
            assert "over_budget" in lint
        if want == 75:
            fine_colour, at_75 = badges[0][3], image
    assert over_colour != fine_colour  # red, not the normal text colour
    tab.goto(f"{live.url}/studio/datasets/tok/images/{at_75}")  # typing one more word: the live badge turns red
    tab.evaluate("document.getElementById('slot-style').focus()")
    tab.keyboard.press("End")
    tab.keyboard.insert_text(" a")
    wait(tab, "document.querySelector('#tokens .token').textContent.trim() !== 'tokenizer: 75/75'")
    shown = tab.evaluate("[document.querySelector('#tokens .token').textContent.trim(), "
                         "document.querySelector('#tokens .token').classList.contains('over')]")
    from lorastudio.captions.slots import compose
    from lorastudio.studio.datasets import caption_from_form

    slots = tab.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('#caption-form textarea')).map(t => [t.name, t.value]))")
    now = count_tokens(tok, compose(caption_from_form(slots)))
    assert now > 75 and shown == [f"{name}: {now}/75", True]
    checked.assert_clean()


def test_training_form_audit_errors_need_a_10_character_override(live, tab, checked):
    from lorastudio.studio import datasets as ds

    home = synthetic_dataset(live.data, "errs", 6)
    next((home / "dataset" / "images").glob("*.txt")).unlink()  # a missing sidecar is an audit error
    assert ds.audit(home, tokenizer_dir=None)["counts"]["error"] >= 1
    tab.goto(live.url + "/studio/runs/new?dataset=errs")
    wait(tab, "document.body.dataset.ready === '1'")
    assert "latest audit has" in tab.evaluate("document.getElementById('gate').textContent")
    disabled = "[document.getElementById('t-submit').disabled, document.getElementById('y-submit').disabled]"
    assert tab.evaluate(disabled) == [True, True]
    tab.evaluate("document.getElementById('t-override').focus()")
    tab.keyboard.insert_text("  checked")  # leading spaces do not count
    assert tab.evaluate("document.getElementById('t-override').value.trim().length") == 7
    tab.keyboard.insert_text("ok")
    assert tab.evaluate("document.getElementById('t-override').value.trim().length") == 9
    assert tab.evaluate(disabled) == [True, True]
    checked.shot(tab, "override-9")
    tab.keyboard.insert_text("!")
    wait(tab, "!document.getElementById('t-submit').disabled")
    assert tab.evaluate(disabled) == [False, False]
    checked.shot(tab, "override-10")
    tab.keyboard.press("Backspace")  # back to 9: blocked again
    wait(tab, "document.getElementById('t-submit').disabled")
    checked.assert_clean()


def test_each_audit_history_entry_opens_with_its_table_and_the_one_before(live, tab, checked, photos):
    from lorastudio.studio import datasets as ds

    ds.create_dataset(live.data, "kfood", [(p.name, p.read_bytes()) for p in sorted(photos.iterdir())], trigger=TRIGGER)
    home = ds.dataset_home(live.data, "kfood")
    first = ds.audit(home, tokenizer_dir=None)
    assert ds.plan_fix(home, apply=True)["op"]  # names the confounder everywhere
    second = ds.audit(home, tokenizer_dir=None)
    named = {a["audit_id"]: next(r for r in a["contamination"] if r["id"] == "bg.black") for a in (first, second)}
    assert named[first["audit_id"]]["mention_rate"] == 0 and named[second["audit_id"]]["mention_rate"] == 1
    tab.goto(live.url + "/studio/datasets/kfood/audit")
    links = tab.evaluate("Array.from(document.querySelectorAll('#history a')).map(a => a.textContent)")
    assert links == [second["audit_id"], first["audit_id"]]
    for index, audit_id in enumerate(links):
        click(tab, f"#history li:nth-child({index + 1}) a")
        wait(tab, f"location.search.includes('{audit_id}') && document.getElementById('audit-shown') !== null")
        assert tab.evaluate("document.getElementById('audit-shown').dataset.audit") == audit_id
        cells = tab.evaluate("Array.from(document.querySelectorAll('tr[data-attr=\"black background\"] td'))"
                             ".map(t => t.textContent.trim())")
        row = named[audit_id]
        assert cells[1] == f"{round(row['present_rate'] * 100)} %" and cells[2] == f"{round(row['mention_rate'] * 100)} %"
        assert cells[4] == row["verdict"]
        rows = tab.evaluate("document.querySelectorAll('table.contamination tbody tr').length")
        assert rows == len((second if audit_id == second["audit_id"] else first)["contamination"])
        if audit_id == second["audit_id"]:  # the newer one shows the older figures beside its own
            old = named[first["audit_id"]]
            assert cells[6] == f"{round(old['present_rate'] * 100)} % / 0 %, {old['verdict']}"
            checked.shot(tab, "audit-before-after")
        else:
            assert len(cells) == 6 and "Before:" not in tab.evaluate("document.getElementById('audit-shown').textContent")
        tab.goto(live.url + "/studio/datasets/kfood/audit")
    checked.assert_clean()


def test_enhance_shows_a_clear_error_for_a_file_that_is_not_an_image_and_the_server_stays_up(fake_live, tab, checked,
                                                                                              tmp_path):
    import urllib.request

    checked.allow.update({413, 415, 422})  # the refusal is the point: its status is shown on the page
    fake = tmp_path / "menu.jpg"
    fake.write_bytes(b"%PDF-1.7 this is a restaurant menu, not a photo\n" * 20)
    tab.goto(fake_live.url + "/studio/enhance")
    tab.set_input_files("#e-image", str(fake))
    click(tab, "#enhance-form button[type=submit]")
    wait(tab, "document.getElementById('flash').className === 'error'")
    message = tab.text_content("#flash")
    assert message and "image" in message.lower() and "Traceback" not in message and "/" not in message.replace("/v1", "")
    with urllib.request.urlopen(fake_live.url + "/healthz", timeout=10) as answer:  # still serving
        assert answer.status == 200
    assert tab.evaluate("document.getElementById('results').hidden")  # no before/after for a refused upload
    checked.shot(tab, "enhance-refused")
    checked.assert_clean()


def test_a_page_on_another_loopback_port_cannot_act_for_the_logged_in_user(fake_live, tab, checked, tmp_path):
    """The same browser, logged in (local session), opens a page served from another port of
    127.0.0.1 (same site, other origin) that posts a form and a credentialed fetch to the studio:
    both are refused and nothing changes."""
    import http.server
    import threading

    from lorastudio.serving.routes.admin import queue_paused

    checked.allow.update({403})
    tab.goto(fake_live.url + "/studio/jobs")  # the session cookie is set
    attack = tmp_path / "attack"
    attack.mkdir()
    (attack / "index.html").write_text(
        "<!doctype html><title>prize</title><form method=post action='" + fake_live.url + "/v1/queue/pause'>"
        "<input name=x value=1></form><script>fetch('" + fake_live.url + "/v1/datasets/x/undo', {method: 'POST', "
        "credentials: 'include'}).catch(() => {}).finally(() => document.forms[0].submit());</script>", encoding="utf-8")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            super().__init__(*args, directory=str(attack), **kwargs)

        def log_message(self, *args):  # noqa: ANN002
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        evil = f"http://127.0.0.1:{other.server_address[1]}"
        tab.goto(evil + "/index.html")
        wait(tab, f"location.href.startsWith('{fake_live.url}/v1/queue/pause')")  # the form went through...
        assert "bad_origin" in tab.content()  # ...and was refused for its origin
        assert not queue_paused(fake_live.store)
    finally:
        other.shutdown()
    # Not faults of the studio: the attacker's own pages (no CSP, no favicon) and the browser
    # refusing the credentialed cross-origin fetch (no CORS grant).
    checked.problems = [p for p in checked.problems if evil not in p and "ERR_FAILED" not in p]
    checked.assert_clean()
