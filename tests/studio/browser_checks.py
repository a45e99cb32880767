"""Playwright (sync API) driving Debian's Chromium for the browser checks (studio and run report).

No browser is ever downloaded: Chromium is launched from `executable_path` (the system
`chromium`). Every page opened in a `Checked` context records what would make it
untrustworthy, and `Checked.assert_clean()` fails on it: a request to any non-loopback
address, a console error or uncaught exception, a CSP violation (reported by a listener
installed before any page script, which CSP cannot block), and a JavaScript dialog (what a
caption XSS would open). Screenshots go to `LORASTUDIO_ARTIFACTS` (or the test's tmp dir).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
_CSP_WATCH = """
document.addEventListener('securitypolicyviolation',
  e => window.__lsCsp(e.violatedDirective + ' ' + e.blockedURI));
"""
# Chromium logs every 4xx/5xx answer as a console error; tests list the statuses they cause on purpose.
_STATUS = re.compile(r"status of (\d{3})")


def require_chromium() -> None:
    """Skip without Chromium locally; fail under CI=true, where `.ci/run` must have installed it."""
    if CHROMIUM is None and os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: .ci/run installs it through `make setup-browser`", pytrace=False)
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; `make setup-browser`)",
                    allow_module_level=True)


def launch(playwright):  # noqa: ANN001, ANN201 - playwright.sync_api types
    """Headless system Chromium (never a downloaded one)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                            "--disable-component-update", "--disable-sync", "--no-first-run"])


class Checked:
    """A browser context whose pages are all watched; `allow` lists HTTP statuses a test causes on purpose."""

    def __init__(self, browser, shots: Path, width: int = 1280, height: int = 900, **options) -> None:  # noqa: ANN001
        self.context = browser.new_context(viewport={"width": width, "height": height}, **options)
        self.shots = shots
        self.problems: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.allow: set[int] = set()
        self.context.expose_function("__lsCsp", lambda text: self.problems.append(f"CSP violation {text}"))
        self.context.add_init_script(_CSP_WATCH)
        self.context.on("request", self._request)
        self.context.on("response", self._response)
        self.context.on("page", self._watch)

    def _request(self, request) -> None:  # noqa: ANN001
        self.requests.append((request.method, request.url))
        parsed = urllib.parse.urlparse(request.url)
        if parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOOPBACK:
            self.problems.append(f"non-loopback request {request.url}")

    def _response(self, response) -> None:  # noqa: ANN001
        """Every answer the studio gives the browser (pages, API JSON, images, errors) carries the CSP."""
        parsed = urllib.parse.urlparse(response.url)
        if parsed.scheme in ("http", "https") and "content-security-policy" not in response.headers:
            self.problems.append(f"no CSP header on {response.status} {response.url}"[:300])

    def _console(self, message) -> None:  # noqa: ANN001
        if message.type != "error":
            return
        status = _STATUS.search(message.text)
        if status and int(status.group(1)) in self.allow:
            return
        self.problems.append(f"console error: {message.text} {message.location.get('url', '')}"[:300])

    def _dialog(self, dialog) -> None:  # noqa: ANN001
        self.problems.append(f"dialog {dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _watch(self, page) -> None:  # noqa: ANN001
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught exception: {error}"[:300]))
        page.on("dialog", self._dialog)

    def page(self):  # noqa: ANN201
        """A new watched page."""
        page = self.context.new_page()
        page.set_default_timeout(45_000)
        return page

    def shot(self, page, name: str) -> bytes:  # noqa: ANN001
        """Save a PNG screenshot of `page` as `<shots>/<name>.png`."""
        self.shots.mkdir(parents=True, exist_ok=True)
        return page.screenshot(path=str(self.shots / f"{name}.png"))

    def assert_clean(self) -> None:
        """No non-loopback request, console error, exception, CSP violation or dialog so far."""
        for page in self.context.pages:
            page.wait_for_timeout(200)  # let late console messages arrive
        assert not self.problems, self.problems

    def close(self) -> None:
        for index, page in enumerate(self.context.pages):  # every test leaves a picture of where it ended
            try:
                self.shot(page, f"final-{index}")
            except Exception:  # noqa: BLE001 - a page already gone has nothing to show
                pass
        self.context.close()


def wait(page, expression: str, timeout: float = 45) -> object:  # noqa: ANN001
    """Wait until a JS expression is truthy (surviving navigations); returns its value."""
    end = time.monotonic() + timeout
    while True:
        try:
            # As a function: a string predicate would be eval()ed in the page, which its CSP forbids.
            return page.wait_for_function(f"() => ({expression})",
                                          timeout=max(1.0, end - time.monotonic()) * 1000).json_value()
        except Exception as exc:  # noqa: BLE001 - a reload in flight destroys the context: ask again
            if "context was destroyed" in str(exc) or "navigation" in str(exc).lower():
                if time.monotonic() < end:
                    continue
            flash = page.evaluate("(document.getElementById('flash') || {}).textContent || ''")
            raise AssertionError(f"waiting for: {expression} (page says: {flash!r}): {exc}"[:1500]) from exc


def click(page, selector: str, modifiers: list[str] | None = None) -> None:  # noqa: ANN001
    """Click once the studio's handlers are attached (studio.js marks <body data-ready=1>)."""
    page.wait_for_function("document.body && document.body.dataset.ready === '1'")
    page.click(selector, modifiers=modifiers or [])


def cdp_metrics(page) -> dict[str, float]:  # noqa: ANN001
    """Chromium's Performance.getMetrics for `page` (JSHeapUsedSize, Nodes, ...)."""
    session = page.context.new_cdp_session(page)
    try:
        session.send("Performance.enable")
        return {m["name"]: m["value"] for m in session.send("Performance.getMetrics")["metrics"]}
    finally:
        session.detach()


class LiveServer:
    """The real app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app) -> None:  # noqa: ANN001
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < end, "uvicorn did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def drag_slider(page, selector: str, fraction: float) -> int:  # noqa: ANN001
    """Drag a range input's handle with the mouse from its middle to `fraction` of its width; its new value."""
    handle = page.locator(selector)
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    return int(page.evaluate(f"document.querySelector({selector!r}).value"))


GLYPH_JS = """([selector, chars]) => {
  // Each character drawn alone, in the element's own font, on a canvas: its pixels as a string.
  const font = getComputedStyle(document.querySelector(selector)).fontFamily;
  return chars.map(ch => {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 48;
    const ctx = canvas.getContext("2d");
    ctx.font = `40px ${font}`;
    ctx.fillStyle = "#000";
    ctx.fillText(ch, 4, 40);
    const alpha = Array.from(ctx.getImageData(0, 0, 48, 48).data).filter((_, i) => i % 4 === 3);
    return {ink: alpha.filter(a => a > 0).length, pixels: alpha.join(",")};
  });
}"""


def assert_glyphs_render(page, selector: str, text: str) -> None:  # noqa: ANN001
    """Every character of `text` draws with ink, in `selector`'s font, and no two distinct ones draw
    alike nor like a code point no font has (a missing font draws one .notdef box for all of them)."""
    chars = sorted(set(text) - {" "})
    drawn = page.evaluate(GLYPH_JS, [selector, [*chars, "\U0010fffd"]])
    notdef = drawn[-1]["pixels"]
    for ch, glyph in zip(chars, drawn, strict=False):
        assert glyph["ink"] > 20, f"{ch!r} draws nothing in the font of {selector}"
        assert glyph["pixels"] != notdef, f"{ch!r} draws as the missing-glyph box in the font of {selector}"
    assert len({g["pixels"] for g in drawn[:-1]}) == len(chars), f"two characters of {text!r} draw alike"
