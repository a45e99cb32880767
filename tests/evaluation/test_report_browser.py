"""The run report opens in headless Chromium: every image loads, no console errors."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from eval_helpers import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Page:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with remote debugging on a free port; yields its HTTP endpoint."""
    if CHROMIUM is None and os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: .ci/run installs it through `make setup-browser`", pytrace=False)
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; `make setup-browser`)")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
         f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = None
        for line in proc.stderr:
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "chromium did not report its DevTools port"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def open_page(endpoint: str, url: str) -> tuple[Page, list[dict]]:
    """Open `url` in a fresh tab, wait for the load event, return the page and its events."""
    request = urllib.request.Request(f"{endpoint}/json/new?about:blank", method="PUT")
    with urllib.request.urlopen(request, timeout=30) as resp:
        target = json.loads(resp.read())
    page = Page(target["webSocketDebuggerUrl"])
    for domain in ("Page", "Runtime", "Log"):
        page.call(f"{domain}.enable")
    page.call("Page.navigate", url=url)
    page.wait_for("Page.loadEventFired")
    return page, page.events


def test_report_opens_offline_with_every_image_loaded(run_dir, browser, tmp_path):
    result = run_cli(["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    report = Path(result.output.strip().splitlines()[-1])
    assert report == run_dir / "report.html"
    page, events = open_page(browser, report.as_uri())
    images = json.loads(page.call("Runtime.evaluate", returnByValue=True, expression=(
        "JSON.stringify(Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]))"
    ))["result"]["value"])
    sample_pngs = list((run_dir / "samples").rglob("*.png"))
    assert len(images) >= len(sample_pngs) > 0
    assert all(complete and width > 0 for _, complete, width in images), [i for i in images if not i[2]]
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    svgs = page.call("Runtime.evaluate", expression="document.querySelectorAll('svg polyline').length", returnByValue=True)
    assert svgs["result"]["value"] >= 2  # loss and lr curves
    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "report.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 5000
    page.ws.close()
