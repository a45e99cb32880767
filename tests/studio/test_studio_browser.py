"""The studio in headless Chromium (studio.md §5.4): every test also fails on a non-loopback request,
a console error, a CSP violation or a dialog, and saves screenshots."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, Browser, LiveServer
from studio_data import synthetic_dataset

from lorastudio.serving.app import create_app
from lorastudio.serving.http import Settings
from lorastudio.serving.store import JobStore, default_url

if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("chromium is missing in CI: .ci/run installs it through `make setup-browser`", pytrace=False)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make setup-browser`)")
TRIGGER = "ohwx_kfood_style"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Browser(tmp_path_factory.mktemp("profile"))
    print(f"\nbrowser: {chrome.version}")
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
def tab(browser):
    page = browser.tab()
    page.viewport(1280, 900)
    yield page
    page.close()


def _upload_photos(live, tab, photos: Path) -> None:
    """Create the toy dataset through the page's own upload form (a real multipart POST)."""
    tab.goto(live.url + "/studio")
    tab.eval("document.getElementById('ds-id').value = 'kfood'")
    files = [str(p) for p in sorted(photos.iterdir())]
    node = tab.call("DOM.getDocument")["root"]["nodeId"]
    found = tab.call("DOM.querySelector", nodeId=node, selector="#ds-files")["nodeId"]
    tab.call("DOM.setFileInputFiles", files=files, nodeId=found)
    tab.eval(f"document.getElementById('ds-trigger').value = '{TRIGGER}'")
    tab.click("#upload-form button[type=submit]")
    tab.wait("document.querySelector('#upload-result a') !== null", timeout=120)


def _sidecars(live) -> dict[str, str]:
    folder = live.data / "studio" / "datasets" / "kfood" / "dataset" / "images"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.txt"))}


def _blur_and_wait_saved(tab, next_field: str = "slot-trigger") -> None:
    """Move focus to another slot (the autosave trigger) and wait for the version to change."""
    before = tab.eval("document.getElementById('version').textContent")
    tab.eval(f"document.getElementById('{next_field}').focus()")
    tab.wait(f"document.getElementById('version').textContent !== '{before}'")


def test_gallery_with_1000_images_pages_lazily_and_caches(live, tab, shots):
    synthetic_dataset(live.data, "big", 1000)
    tab.goto(live.url + "/studio/datasets/big")
    tab.wait("Array.from(document.images).slice(0, 24).every(i => i.complete && i.naturalWidth > 0)")
    assert tab.eval("document.images.length") <= 200
    tab.screenshot(shots / "gallery-desktop.png")
    tab.call("Performance.enable")
    heap = {m["name"]: m["value"] for m in tab.call("Performance.getMetrics")["metrics"]}
    assert heap["JSHeapUsedSize"] <= 50 * 1024 * 1024
    for _ in range(200):  # scrolling to the end loads every page
        if tab.eval("document.querySelectorAll('li.cell').length") >= 1000:
            break
        tab.eval("window.scrollTo(0, document.body.scrollHeight)")
        tab.pump(0.2)
    assert tab.eval("document.querySelectorAll('li.cell').length") == 1000
    tab.eval("window.scrollTo(0, 0)")
    tab.goto(live.url + "/studio/datasets/big")
    tab.wait("Array.from(document.images).slice(0, 24).every(i => i.complete && i.naturalWidth > 0)")
    tab.pump(0.5)
    cached = {e["params"]["requestId"] for e in tab.events if e.get("method") == "Network.requestServedFromCache"}
    thumbs = [e["params"] for e in tab.events if e.get("method") == "Network.responseReceived"
              and "/thumbnail" in e["params"]["response"]["url"]]
    first = set(tab.eval("Array.from(document.images).slice(0, 24).map(i => i.src)"))
    thumbs = [t for t in thumbs if t["response"]["url"] in first]
    fresh = [t["response"]["url"] for t in thumbs if t["requestId"] not in cached and not t["response"].get("fromDiskCache")]
    assert len(thumbs) >= 24 and fresh == []  # a reload takes thumbnails from the browser cache
    tab.assert_clean()


def test_gallery_bulk_edit_preview_apply_and_undo(live, tab, shots, photos):
    _upload_photos(live, tab, photos)
    tab.goto(live.url + "/studio/datasets/kfood")
    before = _sidecars(live)
    boxes = tab.eval("document.querySelectorAll('input.sel').length")
    assert boxes == len(before)
    tab.click("li.cell:nth-child(1) input.sel")
    tab.click("li.cell:nth-child(5) input.sel", modifiers=8)  # shift-click selects the range
    tab.wait("document.getElementById('selected-count').textContent === '5 selected'")
    chosen = tab.eval("Array.from(document.querySelectorAll('input.sel:checked')).map(b => b.value)")
    tab.eval("document.getElementById('bulk-phrase').value = 'on a black background'")
    tab.click("[data-action=preview]")
    tab.wait("document.querySelectorAll('#diff tr').length === 5")
    tab.screenshot(shots / "bulk-diff.png")
    assert _sidecars(live) == before
    tab.click("[data-action=apply-diff]")
    tab.wait("document.getElementById('flash').textContent.startsWith('Applied')")
    after = _sidecars(live)
    assert {n for n in before if before[n] != after[n]} == {f"{i}.txt" for i in chosen}
    tab.pump(0.8)  # the page reloads itself
    tab.goto(live.url + "/studio/datasets/kfood")
    tab.click("[data-action=undo-op]")
    tab.wait("document.getElementById('flash').textContent.startsWith('Undone')")
    assert _sidecars(live) == before
    tab.assert_clean()


def test_caption_editor_autosaves_undoes_lints_and_detects_conflicts(live, tab, browser, shots, photos):
    _upload_photos(live, tab, photos)
    image = json.loads(tab.eval("fetch('/v1/datasets/kfood').then(r => r.text())"))["images"][0]["id"]
    sidecar = live.data / "studio" / "datasets" / "kfood" / "dataset" / "images" / f"{image}.txt"
    original = sidecar.read_text(encoding="utf-8")
    url = f"{live.url}/studio/datasets/kfood/images/{image}"
    tab.goto(url)
    tab.call("DOM.getDocument")
    tab.eval("document.getElementById('slot-style').focus()")
    tab.type("glossy, studio lighting")
    _blur_and_wait_saved(tab)  # leaving the style slot autosaves
    puts = [r for r in tab.requests if r["method"] == "PUT"]
    assert len(puts) == 1 and sidecar.read_text(encoding="utf-8").strip().endswith("glossy, studio lighting")
    tab.goto(url)
    assert tab.eval("document.getElementById('slot-style').value") == "glossy, studio lighting"
    tab.eval("document.activeElement.blur()")
    tab.key("z", "KeyZ", 90, modifiers=2)  # Ctrl+Z: server-side undo
    tab.wait("document.getElementById('flash').textContent === 'Undone'")
    assert sidecar.read_text(encoding="utf-8") == original
    tab.key("Z", "KeyZ", 90, modifiers=10)  # Ctrl+Shift+Z: redo
    tab.wait("document.getElementById('flash').textContent === 'Redone'")
    assert "glossy" in sidecar.read_text(encoding="utf-8")
    tab.eval("document.getElementById('slot-subject').focus()")
    tab.eval("document.getElementById('slot-subject').select()")
    tab.type("a photo of 양념치킨")
    tab.wait("document.querySelector('#lint li[data-code=hangul]') !== null")
    tab.wait("document.getElementById('glossary').textContent.includes('yangnyeom chicken')")
    tab.screenshot(shots / "editor-hangul.png")
    _blur_and_wait_saved(tab, "slot-objective")
    other = browser.tab()  # a second tab loaded now, then the first one saves first
    try:
        other.goto(url)
        tab.eval("document.getElementById('slot-style').focus()")
        tab.type(", warm")
        _blur_and_wait_saved(tab)
        saved = sidecar.read_text(encoding="utf-8")
        other.eval("document.getElementById('slot-style').focus()")
        other.type(", matte")
        other.eval("document.getElementById('slot-trigger').focus()")
        other.wait("document.getElementById('conflict').open")
        other.screenshot(shots / "editor-conflict.png")
        assert sidecar.read_text(encoding="utf-8") == saved  # no silent overwrite
        other.assert_clean()
    finally:
        other.close()
    tab.eval("document.getElementById('slot-subject').focus()")
    tab.eval("document.getElementById('slot-subject').select()")
    tab.type("<img src=x onerror=alert(1)>")
    _blur_and_wait_saved(tab)
    tab.goto(f"{live.url}/studio/datasets/kfood")
    assert tab.eval("document.body.textContent.includes('<img src=x onerror=alert(1)>')")
    assert tab.eval("document.querySelectorAll('img[src=x]').length") == 0
    tab.goto(url)
    tab.key("j", "KeyJ", 74)
    tab.wait(f"location.pathname !== '/studio/datasets/kfood/images/{image}'")
    tab.assert_clean()  # also: no dialog ever opened


def test_contamination_page_shows_the_confounder_and_applies_the_fix(live, tab, shots, photos):
    _upload_photos(live, tab, photos)
    tab.goto(live.url + "/studio/datasets/kfood/audit")
    tab.click("[data-action=run-audit]")
    tab.wait("document.querySelector('tr[data-attr=\"black background\"]') !== null", timeout=120)
    row = tab.eval("Array.from(document.querySelectorAll('tr[data-attr=\"black background\"] td')).map(t => t.textContent.trim())")
    assert int(row[1].split()[0]) >= 90 and row[2] == "0 %" and row[4] == "contaminant"
    tab.screenshot(shots / "contamination.png")
    tab.click("tr[data-attr=\"black background\"] a")
    tab.wait("location.search.includes('attr')")
    shown = tab.eval("document.querySelectorAll('li.cell').length")
    assert shown >= 0.9 * len(_sidecars(live))
    before = _sidecars(live)
    tab.goto(live.url + "/studio/datasets/kfood/audit")
    tab.click("[data-action=fix-preview]")
    tab.wait("document.querySelectorAll('#diff tr').length > 0")
    assert tab.eval("document.querySelectorAll('#diff tr').length") == shown
    tab.click("[data-action=apply-diff]")
    tab.wait("document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)') !== null && "
             "document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)').textContent.trim() === '100 %'",
             timeout=120)
    tab.click("[data-action=undo-op]")
    tab.wait("document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)').textContent.trim() === '0 %'",
             timeout=120)
    assert _sidecars(live) == before
    tab.assert_clean()


def test_pages_fit_a_phone_and_settings_turn_on_login(live, tab, shots, photos):
    _upload_photos(live, tab, photos)
    image = json.loads(tab.eval("fetch('/v1/datasets/kfood').then(r => r.text())"))["images"][0]["id"]
    tab.viewport(390, 844, mobile=True)
    for name, path in (("projects", "/studio"), ("gallery", "/studio/datasets/kfood"),
                       ("editor", f"/studio/datasets/kfood/images/{image}"), ("audit", "/studio/datasets/kfood/audit"),
                       ("jobs", "/studio/jobs"), ("settings", "/studio/settings"), ("train", "/studio/runs/new"),
                       ("enhance", "/studio/enhance"), ("compare", "/studio/compare")):
        tab.goto(live.url + path)
        width = tab.eval("document.documentElement.scrollWidth")
        tab.screenshot(shots / f"phone-{name}.png")
        assert width <= 390, (name, width)
    tab.viewport(1280, 900)
    tab.goto(live.url + "/studio/settings")
    tab.eval("document.getElementById('key-name').value = 'lead'")
    tab.eval("document.querySelector('input[value=admin]').checked = true")
    tab.click("#key-form button[type=submit]")
    token = tab.wait("document.getElementById('new-key-token').textContent")
    assert token.startswith("lsk_")
    tab.goto(live.url + "/studio/settings")
    assert tab.eval("document.title").startswith("Log in")
    tab.eval(f"document.getElementById('key').value = {json.dumps(token)}")
    tab.click("form.stack button[type=submit]")
    tab.wait("document.title.startsWith('Projects')")
    tab.goto(live.url + "/studio/settings")
    assert tab.eval("document.querySelectorAll('#keys tbody tr').length") == 1
    tab.screenshot(shots / "settings.png")
    tab.problems = [p for p in tab.problems if "401" not in p]  # the login page itself answers 401 by design
    tab.assert_clean()


@pytest.mark.slow
def test_whole_flow_upload_fix_train_and_enhance_with_the_toy_model(browser, tmp_path, shots, photos):
    """12 toy photos with a planted confounder -> gallery -> edit + undo -> contamination fix -> train
    (loss streaming) -> enhance with the new LoRA -> before/after."""
    from lorastudio.toyworld.pretrain import shipped_base_dir

    data = tmp_path / "flow"
    data.mkdir()
    settings = Settings(data_dir=data, db_url=default_url(data), model=str(shipped_base_dir()), workers=1, lease_s=5.0)
    store = JobStore(settings.db_url)
    live = LiveServer(create_app(settings, store=store))
    live.data = data
    tab = browser.tab()
    tab.viewport(1280, 900)
    try:
        _upload_photos(live, tab, photos)
        tab.goto(live.url + "/studio/datasets/kfood")
        tab.wait("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        first = tab.eval("document.querySelector('li.cell').dataset.id")
        sidecar = data / "studio" / "datasets" / "kfood" / "dataset" / "images" / f"{first}.txt"
        original = sidecar.read_text(encoding="utf-8")
        tab.goto(f"{live.url}/studio/datasets/kfood/images/{first}")
        tab.eval("document.getElementById('slot-style').focus()")
        tab.type("glossy")
        _blur_and_wait_saved(tab)
        assert "glossy" in sidecar.read_text(encoding="utf-8")
        tab.click("[data-action=undo]")
        tab.wait("document.getElementById('flash').textContent === 'Undone'")
        assert sidecar.read_text(encoding="utf-8") == original
        tab.goto(live.url + "/studio/datasets/kfood/audit")
        tab.click("[data-action=run-audit]")
        tab.wait("document.querySelector('tr[data-attr=\"black background\"].verdict-contaminant') !== null", timeout=120)
        tab.click("[data-action=fix-preview]")
        tab.wait("document.querySelectorAll('#diff tr').length > 0")
        tab.click("[data-action=apply-diff]")
        tab.wait("document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)') !== null && "
                 "document.querySelector('tr[data-attr=\"black background\"] td:nth-child(3)').textContent.trim() === '100 %'",
                 timeout=120)
        tab.goto(live.url + "/studio/runs/new?dataset=kfood")
        tab.eval("(() => { const s = document.getElementById('t-preset'); s.value = 'toy';"
                 " s.dispatchEvent(new Event('change')); })()")
        tab.eval("document.getElementById('t-lora_id').value = 'kfood-flow'")
        if tab.eval("document.getElementById('t-override') !== null"):
            tab.eval("document.getElementById('t-override').focus()")
            tab.type("toy run: the remaining findings are expected")
        tab.screenshot(shots / "train-form.png")
        end = time.time() + 300
        while not any(w["state"] in ("ready", "busy") for w in store.live_workers(15)):  # the toy model loads
            assert time.time() < end, store.live_workers(1e9)
            time.sleep(0.5)
        tab.click("#t-submit")
        tab.wait("location.pathname.startsWith('/studio/jobs/')", timeout=120)
        tab.wait("Number(document.getElementById('loss-line').dataset.points || 0) >= 2", timeout=300)
        seen = int(tab.eval("document.getElementById('loss-line').dataset.points"))
        tab.goto(tab.eval("location.href"))  # a reload restores the whole curve and keeps streaming
        tab.wait(f"Number(document.getElementById('loss-line').dataset.points || 0) >= {seen}", timeout=120)
        tab.wait("document.getElementById('job-status').textContent === 'completed'", timeout=600)
        assert int(tab.eval("document.getElementById('loss-line').dataset.points")) == 20  # toy preset: 20 steps, each logged
        tab.screenshot(shots / "run.png")
        tab.goto(live.url + "/studio/enhance")
        node = tab.call("DOM.getDocument")["root"]["nodeId"]
        found = tab.call("DOM.querySelector", nodeId=node, selector="#e-image")["nodeId"]
        tab.call("DOM.setFileInputFiles", files=[str(sorted(photos.glob("*.jpg"))[1])], nodeId=found)
        tab.eval("document.getElementById('e-lora').value = 'kfood-flow'")
        tab.eval("document.getElementById('e-steps').value = '4'")
        tab.click("#enhance-form button[type=submit]")
        tab.wait("document.getElementById('after').complete && document.getElementById('after').naturalWidth > 0",
                 timeout=300)
        assert tab.eval("document.getElementById('before').naturalWidth > 0")
        tab.eval("(() => { const s = document.getElementById('slider'); s.value = 20; s.dispatchEvent(new Event('input')); })()")
        assert tab.eval("document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 20%)"
        tab.screenshot(shots / "enhance.png")
        tab.assert_clean()
    finally:
        tab.close()
        live.close()
        store.close()


def test_compare_grid_has_a_leak_row_and_an_ab_slider(browser, tmp_path, shots):
    data = tmp_path / "cmp"
    data.mkdir()
    settings = Settings(data_dir=data, db_url=default_url(data), fake_workers=True, workers=1, fake_step_s=0.001)
    store = JobStore(settings.db_url)
    live = LiveServer(create_app(settings, store=store))
    tab = browser.tab()
    tab.viewport(1280, 900)
    try:
        end = time.time() + 60
        while not any(w["state"] in ("ready", "busy") for w in store.live_workers(15)):
            assert time.time() < end, "the fake worker did not start"
            time.sleep(0.2)
        tab.goto(live.url + "/studio/compare")
        tab.eval("document.getElementById('c-trigger').value = 'ohwx_kfood_style'")
        tab.eval("document.getElementById('c-prompts').value = "
                 "'ohwx_kfood_style, a photo of bibimbap\\nohwx_kfood_style, a photo of japchae'")
        tab.eval("document.getElementById('c-size').value = '64x64'")
        tab.click("#compare-form button[type=submit]")
        tab.wait("document.getElementById('flash').textContent.startsWith('Grid done')", timeout=120)
        cells = tab.eval("Array.from(document.querySelectorAll('#cmp-grid img')).map(i => i.complete && i.naturalWidth > 0)")
        assert cells == [True, True, True]  # 2 prompts + the leak row, base column
        assert tab.eval("document.querySelector('#cmp-grid tr:last-child td').textContent").endswith("(leak row)")
        tab.click("#cmp-grid tr:nth-child(2) img")
        tab.click("#cmp-grid tr:nth-child(4) img")
        tab.eval("(() => { const s = document.getElementById('slider'); s.value = 30; s.dispatchEvent(new Event('input')); })()")
        assert tab.eval("document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 30%)"
        assert tab.eval("document.getElementById('cmp-a').src") != tab.eval("document.getElementById('after').src")
        tab.screenshot(shots / "compare.png")
        tab.assert_clean()
    finally:
        tab.close()
        live.close()
        store.close()


def test_training_form_yaml_typo_blocks_submit_and_the_gate_needs_a_reason(live, tab, shots):
    synthetic_dataset(live.data, "small", 6)
    tab.goto(live.url + "/studio/runs/new?dataset=small")
    assert tab.eval("document.getElementById('t-submit').disabled")  # never audited: the gate blocks
    assert "6 images" in tab.eval("document.getElementById('epochs').textContent")
    tab.eval("document.getElementById('t-override').focus()")
    tab.type("reviewed by hand")
    assert not tab.eval("document.getElementById('t-submit').disabled")
    tab.eval("document.getElementById('yaml-tab').open = true")
    tab.click("[data-action=yaml-defaults]")
    tab.wait("document.getElementById('y-text').value.includes('max_steps')")
    tab.eval("(() => { const t = document.getElementById('y-text'); t.value = t.value.replace('max_steps:', 'max_stepz:'); })()")
    tab.click("[data-action=yaml-check]")
    tab.wait("document.getElementById('y-result').textContent.includes('did you mean')")
    assert tab.eval("document.getElementById('t-submit').disabled")
    tab.screenshot(shots / "yaml-typo.png")
    tab.eval("(() => { const t = document.getElementById('y-text'); t.value = t.value.replace('max_stepz:', 'max_steps:'); })()")
    tab.click("[data-action=yaml-check]")
    tab.wait("document.getElementById('y-result').textContent === 'valid'")
    assert not tab.eval("document.getElementById('t-submit').disabled")
    tab.problems = [p for p in tab.problems if "status of 422" not in p]  # the typo's answer, shown on the page
    tab.assert_clean()
