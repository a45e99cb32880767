"""Studio security: local mode, login to a SameSite=Strict cookie, CSRF, CSP, autoescaping, path containment."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser

import pytest

PAGES = ["/studio", "/studio/jobs", "/studio/settings", "/studio/datasets/kfood", "/studio/datasets/kfood/audit",
         "/studio/datasets/kfood/grid?page=1", "/studio/runs/new", "/studio/enhance", "/studio/compare"]


@pytest.fixture
def svc(studio_factory, photos):
    with studio_factory(workers=0) as studio:
        studio.refresh_csrf()  # local mode: no key yet
        studio.upload(photos)
        yield studio


def _first_image(svc) -> str:
    return svc.client.get("/v1/datasets/kfood").json()["images"][0]["id"]


def test_loopback_without_keys_opens_with_a_local_session_and_still_needs_csrf(svc):
    page = svc.client.get("/studio")
    assert page.status_code == 200 and "Projects" in page.text
    image = _first_image(svc)
    body = {"slots": {"subject": "a photo of bibimbap"}, "version": "x"}
    missing = svc.client.put(f"/v1/datasets/kfood/images/{image}/caption", json=body)
    assert missing.status_code == 403 and missing.json()["code"] == "csrf"
    wrong = svc.client.put(f"/v1/datasets/kfood/images/{image}/caption", json=body, headers={"X-CSRF-Token": "0" * 40})
    assert wrong.status_code == 403
    stale = svc.client.put(f"/v1/datasets/kfood/images/{image}/caption", json=body, headers=svc.h())
    assert stale.status_code == 409  # past CSRF, refused for its stale version
    svc.client.cookies.clear()
    assert svc.client.get("/v1/datasets/kfood").status_code == 401  # the API itself never opens without a key or cookie


def test_once_a_key_exists_every_page_and_image_needs_a_login(svc):
    image = _first_image(svc)
    token = svc.key("generate", "train")
    urls = PAGES + [f"/studio/datasets/kfood/images/{image}", f"/v1/datasets/kfood/images/{image}/thumbnail",
                    f"/v1/datasets/kfood/images/{image}/content", "/v1/datasets/kfood", "/v1/jobs"]
    for url in urls:  # the old local cookie stopped working the moment a key was created
        response = svc.client.get(url, follow_redirects=False)
        assert response.status_code == 401, url
        assert "image" not in response.headers.get("content-type", ""), url
    bad = svc.client.post("/studio/login", data={"key": "lsk_wrong"}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text
    good = svc.client.post("/studio/login", data={"key": token}, follow_redirects=False)
    cookie = good.headers["set-cookie"]
    assert good.status_code == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert token not in cookie
    svc.refresh_csrf()
    for url in urls:
        assert svc.client.get(url).status_code == 200, url


def test_wrong_keys_are_rate_limited_per_address_without_locking_out_the_right_one_later(svc):
    from lorastudio.studio.security import LOGIN_FAILURES, LOGIN_WINDOW_S

    token = svc.key("generate", "train")
    for _ in range(LOGIN_FAILURES):
        assert svc.client.post("/studio/login", data={"key": "lsk_guess"}, follow_redirects=False).status_code == 401
    blocked = svc.client.post("/studio/login", data={"key": token}, follow_redirects=False)
    assert blocked.status_code == 429 and "Too many wrong keys" in blocked.text  # even the right key waits
    assert 1 <= int(blocked.headers["retry-after"]) <= LOGIN_WINDOW_S + 1
    sessions = svc.app.state.sessions
    assert sessions.login_wait("testclient") > 0 and sessions.login_wait("10.0.0.9") == 0  # per address
    start = min(sessions.failures["testclient"])  # the window passes: the right key works, and clears the count
    assert sessions.login_wait("testclient", now=start + LOGIN_WINDOW_S + 0.1) == 0
    assert svc.client.post("/studio/login", data={"key": "lsk_typo"}, follow_redirects=False).status_code == 401
    assert len(sessions.failures["testclient"]) == 1
    good = svc.client.post("/studio/login", data={"key": token}, follow_redirects=False)
    assert good.status_code == 303 and "testclient" not in sessions.failures


# Routes that answer without a key by design: liveness/readiness probes, the login form itself,
# the studio's packaged static files and the favicon (no data behind any of them).
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/studio/login"), ("POST", "/studio/login"),
          ("GET", "/studio/static/{name}"), ("GET", "/favicon.ico")}


def test_every_route_of_the_app_needs_a_key_except_the_public_few(svc):
    """Walk the app's own route table (so a route added later is covered too): without a key or
    session every method of every other route answers 401, and the body is a problem, not data."""
    from fastapi.routing import APIRoute

    image = _first_image(svc)
    job, _ = svc.store.submit("train", "local", {"run_id": "ab" * 16, "lora_id": "x", "steps": 2})
    values = {"dataset_id": "kfood", "image_id": image, "job_id": job.id, "step": "10", "name": "00.png",
              "audit_id": "a" * 12, "lora_id": "some-lora", "key_id": "k" * 12}
    svc.key("admin")  # a key exists: no more key-less local mode
    svc.client.cookies.clear()
    def walk(routes):  # included routers nest (FastAPI keeps each include as its own node); no prefixes here
        for route in routes:
            inner = getattr(route, "original_router", None) or getattr(route, "router", None)
            if isinstance(route, APIRoute):
                yield route
            elif inner is not None and hasattr(inner, "routes"):
                yield from walk(inner.routes)

    seen = 0
    for route in walk(svc.app.routes):
        url = route.path.format(**{k: values[k] for k in route.param_convertors})
        for method in sorted(route.methods - {"HEAD"}):
            if (method, route.path) in PUBLIC:
                continue
            response = svc.client.request(method, url, follow_redirects=False)
            assert response.status_code == 401, (method, route.path, response.status_code)
            assert image not in response.text and "kfood" not in response.text.replace(url, ""), (method, route.path)
            seen += 1
    assert seen >= 60  # the walk really covered the app (about 70 routes x methods today)


def test_revoking_the_key_ends_its_sessions(svc):
    key_id, token = svc.store.create_key(["generate", "train"])
    svc.key("admin")  # another key stays active, so the server is not back in key-less local mode
    svc.login(token)
    assert svc.client.get("/studio/jobs").status_code == 200
    svc.store.revoke_key(key_id)
    assert svc.client.get("/studio/jobs").status_code == 401


def test_forged_or_tampered_cookies_are_refused(svc):
    key_id, token = svc.store.create_key(["admin"])
    svc.login(token)
    value = svc.client.cookies.get("ls_session")
    kid, expires, nonce, mac = value.split(".")
    for forged in (f"{kid}.{int(expires) + 999}.{nonce}.{mac}", f"local.{expires}.{nonce}.{mac}", "local", ""):
        svc.client.cookies.clear()
        svc.client.cookies.set("ls_session", forged)
        assert svc.client.get("/studio").status_code == 401


def test_bearer_keys_use_the_same_api_without_csrf(svc):
    token = svc.key("train")
    svc.client.cookies.clear()
    listing = svc.client.get("/v1/datasets/kfood", headers={"Authorization": f"Bearer {token}"})
    assert listing.status_code == 200
    image = listing.json()["images"][0]
    saved = svc.client.put(f"/v1/datasets/kfood/images/{image['id']}/caption", headers={"Authorization": f"Bearer {token}"},
                           json={"slots": {"trigger": "ohwx_kfood_style", "subject": "a photo of japchae"},
                                 "version": image["version"]})
    assert saved.status_code == 200 and saved.json()["caption_text"] == "ohwx_kfood_style, a photo of japchae"
    only_generate = svc.key("generate")
    assert svc.client.get("/v1/datasets", headers={"Authorization": f"Bearer {only_generate}"}).status_code == 403


def test_cross_origin_posts_are_rejected(svc):
    image = _first_image(svc)
    for origin in ("http://127.0.0.1:9", "http://evil.example", "null"):
        response = svc.client.post("/v1/datasets/kfood/undo", headers={**svc.h(), "Origin": origin})
        assert response.status_code == 403 and response.json()["code"] == "bad_origin"
        login = svc.client.post("/studio/login", data={"key": "x"}, headers={"Origin": origin})
        assert login.status_code == 403
    assert svc.client.get(f"/studio/datasets/kfood/images/{image}", headers={"Host": "evil.example"}).status_code == 421


class _InlineFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {k for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("inline <style>")
        self.problems += [f"{tag}[{n}]" for n in names if n.startswith("on") or n == "style"]
        if tag in ("script", "link", "img") and any(v and v.startswith(("http:", "https:", "//")) for k, v in attrs
                                                     if k in ("src", "href")):
            self.problems.append(f"external {tag}")


def test_every_response_carries_a_strict_csp_and_pages_hold_no_inline_code(svc):
    image = _first_image(svc)
    urls = PAGES + [f"/studio/datasets/kfood/images/{image}", "/studio/login", "/studio/static/studio.js", "/studio/static/studio_runs.js",
                    "/v1/datasets/kfood", f"/v1/datasets/kfood/images/{image}/thumbnail", "/v1/nope", "/healthz"]
    for url in urls:
        response = svc.client.get(url)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp, url
        assert response.headers["x-content-type-options"] == "nosniff"
        if response.headers["content-type"].startswith("text/html"):
            finder = _InlineFinder()
            finder.feed(response.text)
            assert finder.problems == [], (url, finder.problems)
    assert "content-security-policy" in svc.client.get("/", headers={"Host": "evil.example"}).headers


def test_markup_in_a_caption_renders_as_text(svc):
    image = svc.client.get("/v1/datasets/kfood").json()["images"][0]
    evil = '<img src=x onerror=alert(1)>'
    saved = svc.client.put(f"/v1/datasets/kfood/images/{image['id']}/caption", headers=svc.h(),
                           json={"slots": {"trigger": "ohwx_kfood_style", "subject": evil}, "version": image["version"]})
    assert saved.status_code == 200
    for url in ("/studio/datasets/kfood", f"/studio/datasets/kfood/images/{image['id']}"):
        html = svc.client.get(url).text
        assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html, url


def test_paths_are_contained_with_symlinks_resolved(svc, tmp_path):
    from lorastudio.data.manifest import read_manifest, write_manifest

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff secret")
    home = svc.data / "studio" / "datasets" / "kfood"
    for url in ("/v1/datasets/..%2F..%2Fetc/images/x/content", "/v1/datasets/%2e%2e/images/x/content",
                "/v1/datasets/kfood/images/..%2F..%2Fjobs.sqlite3/content", "/v1/datasets/kfood/images/%2Fetc%2Fpasswd/content",
                "/studio/datasets/..%2F..", "/v1/datasets/KFOOD"):
        assert svc.client.get(url).status_code in (403, 404), url
    body = {"slots": {"subject": "x"}, "version": "v"}
    for bad in ("..%2F..%2Fjobs.sqlite3", "%2Fetc%2Fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e", "images%2F..%2F..%2Fdataset.json"):
        base = f"/v1/datasets/kfood/images/{bad}"  # the sidecar routes: read, write, undo, redo
        for method, url, extra in (("GET", base, {}), ("PUT", base + "/caption", {"json": body}),
                                   ("POST", base + "/undo", {}), ("POST", base + "/redo", {})):
            response = svc.client.request(method, url, headers=svc.h(), **extra)
            assert response.status_code in (403, 404, 422), (method, url, response.status_code)
            assert "root:" not in response.text and "sqlite" not in response.text.lower(), (method, url)
    records = read_manifest(home / "dataset")
    victim, linked = records[0], records[1]
    victim["file"] = "../../../../secret.jpg"
    write_manifest(home / "dataset", records)
    os.symlink(secret, home / "dataset" / "images" / "evil.jpg")
    (home / "dataset" / linked["file"]).unlink()
    os.symlink(secret, home / "dataset" / linked["file"])
    for rec in (victim, linked):
        for what in ("content", "thumbnail"):
            response = svc.client.get(f"/v1/datasets/kfood/images/{rec['id']}/{what}")
            assert response.status_code == 404 and b"secret" not in response.content, (rec["id"], what)
    os.symlink(home, svc.data / "studio" / "datasets" / "alias")
    assert svc.client.get("/v1/datasets/alias").status_code == 404
    assert "alias" not in svc.client.get("/v1/datasets").json()["data"]


def test_server_paths_never_reach_the_client(svc):
    body = svc.client.get("/v1/datasets/kfood").text + svc.client.get("/studio/datasets/kfood").text
    assert str(svc.data) not in body and "/tmp/" not in body
    audit = svc.client.post("/v1/datasets/kfood/audits", headers=svc.h())
    assert audit.status_code == 201 and str(svc.data) not in audit.text
    assert re.search(r"/tmp/|/work/", svc.client.get("/studio/datasets/kfood/audit").text) is None
