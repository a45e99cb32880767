"""Drive Debian's Chromium over the DevTools protocol for the studio's browser checks.

Every tab records what would make a page untrustworthy and `Tab.assert_clean()` fails on it:
a request to any non-loopback address, a console error or uncaught exception, a CSP
violation (a listener injected before any page script, which CSP cannot block), and a
JavaScript dialog (what a caption XSS would open). Screenshots go to `LORASTUDIO_ARTIFACTS`
(or the test's tmp dir).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


class Tab:
    """One page target."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []
        self.requests: list[dict] = []
        self.problems: list[str] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Page.addScriptToEvaluateOnNewDocument", source=_WATCH)

    def _record(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            self.requests.append({"url": url, "method": params["request"]["method"], "id": params["requestId"]})
            parsed = urllib.parse.urlparse(url)
            if parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOOPBACK:
                self.problems.append(f"non-loopback request {url}")
        elif method == "Runtime.exceptionThrown":
            self.problems.append("exception " + json.dumps(params["exceptionDetails"])[:300])
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.problems.append("console error " + json.dumps(params["args"])[:300])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            if not (entry.get("source") == "network" and expected_status(entry.get("text", ""))):
                self.problems.append(f"log error {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}"[:300])
        elif method == "Page.javascriptDialogOpening":
            self.problems.append("dialog " + params.get("message", ""))
            self.send("Page.handleJavaScriptDialog", accept=False)
        self.events.append(msg)

    def send(self, method: str, **params) -> int:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        return self.next_id

    def call(self, method: str, **params) -> dict:
        wanted = self.send(method, **params)
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._record(msg)

    def pump(self, seconds: float) -> None:
        """Receive events for a while."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                self._record(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def eval(self, expression: str):
        """The value of a JS expression (promises awaited)."""
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(json.dumps(out["exceptionDetails"])[:500])
        return out["result"].get("value")

    def wait(self, expression: str, timeout: float = 45) -> object:
        """Poll until a JS expression is truthy; returns its value."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                value = self.eval(expression)
            except RuntimeError:  # the page is mid-navigation (a reload): ask again
                value = None
            if value:
                return value
            self.pump(0.1)
        flash = self.eval("(document.getElementById('flash') || {}).textContent || ''")
        self.screenshot(Path(os.environ.get("LORASTUDIO_ARTIFACTS") or "/tmp") / "wait-timeout.png")
        raise AssertionError(f"timed out waiting for: {expression} (page says: {flash!r}; {self.problems})")

    def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        end = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self._record(json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic()))))
        target = urllib.parse.urlparse(url)
        want = json.dumps(target.path + (f"?{target.query}" if target.query else ""))
        # A reload the previous page started can fire its own load event first: wait for ours.
        self.wait(f"document.readyState === 'complete' && location.pathname + location.search === {want}")

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """Emulate a screen size (390x844 is a phone)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)

    def type(self, text: str) -> None:
        """Type into the focused element."""
        self.call("Input.insertText", text=text)

    def key(self, key: str, code: str, keycode: int, modifiers: int = 0) -> None:
        """Press a key (modifiers: 2 = Ctrl, 8 = Shift)."""
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=keycode,
                      modifiers=modifiers)

    def click(self, selector: str, modifiers: int = 0) -> None:
        """Click the centre of the first element matching `selector` with a real mouse event (8 = Shift)."""
        self.wait("document.readyState === 'complete' && document.body.dataset.ready === '1' && "
                  f"document.querySelector({json.dumps(selector)}) !== null")
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
                        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1,
                      modifiers=modifiers)

    def screenshot(self, path: Path) -> bytes:
        """Save a PNG of the page."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def assert_clean(self) -> None:
        """No non-loopback request, console error, CSP violation or dialog so far."""
        self.pump(0.2)
        csp = self.eval("window.__csp || []")
        assert not csp, f"CSP violations: {csp}"
        assert not self.problems, self.problems

    def close(self) -> None:
        self.ws.close()


def expected_status(text: str) -> bool:
    """Chromium logs every 4xx as a network error; the tests' deliberate 409s are not page faults."""
    return bool(re.search(r"status of 409", text))


class Browser:
    """Headless Chromium with a DevTools endpoint."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-default-apps", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        for line in self.proc.stderr:
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "chromium did not report its DevTools port"
        self.endpoint = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained
        with urllib.request.urlopen(f"{self.endpoint}/json/version", timeout=30) as resp:
            self.version = json.loads(resp.read())["Browser"]

    def tab(self) -> Tab:
        """A fresh tab."""
        request = urllib.request.Request(f"{self.endpoint}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as resp:
            return Tab(json.loads(resp.read())["webSocketDebuggerUrl"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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
