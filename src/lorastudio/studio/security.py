"""Studio sessions, CSRF and security headers, shared by the pages and the JSON API.

A browser logs in once with an API key and gets a `SameSite=Strict`, `HttpOnly` cookie that
names the key id, an expiry and a nonce, signed with a per-data-dir secret. The key is checked
on every request, so revoking it ends its sessions. On a loopback bind with no active key the
studio opens without a login (a `local` session), as a single-user desktop tool; it stops
working the moment the first key is created.

Every request authenticated by the cookie and not a GET/HEAD must carry `X-CSRF-Token`, an
HMAC of the cookie only the studio's own pages know (cross-origin pages cannot read it).
Every response carries a strict Content-Security-Policy: scripts and styles only from the
studio's own static files, no inline code, no eval.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import Request

from lorastudio.serving.http import ApiError, Caller

COOKIE = "ls_session"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 12 * 3600
LOCAL_KEY = "local"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]


def load_secret(data_dir: Path) -> bytes:
    """The signing secret of this data dir (created once, mode 0600)."""
    path = Path(data_dir) / "studio.secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        secret = secrets.token_bytes(32)
        handle.write(secret.hex())
    return secret


def is_loopback(host: str) -> bool:
    """Whether a bind address or client address is loopback."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


LOGIN_FAILURES = 5  # wrong keys allowed per client address per window
LOGIN_WINDOW_S = 60.0


class Sessions:
    """Issues and checks signed session cookies and their CSRF tokens."""

    def __init__(self, secret: bytes, store: Any, bind_host: str) -> None:
        self.secret, self.store, self.bind_host = secret, store, bind_host
        self.failures: dict[str, list[float]] = {}  # client address -> times of its recent wrong keys

    def login_wait(self, client: str, now: float | None = None) -> int:
        """Seconds this client must wait before trying another key (0: it may try now)."""
        now = time.time() if now is None else now
        recent = [t for t in self.failures.get(client, []) if now - t < LOGIN_WINDOW_S]
        if recent:
            self.failures[client] = recent
        else:
            self.failures.pop(client, None)
        return int(LOGIN_WINDOW_S - (now - recent[0])) + 1 if len(recent) >= LOGIN_FAILURES else 0

    def login_failed(self, client: str, now: float | None = None) -> None:
        """Count a wrong key from this client (the table is pruned so it cannot grow without bound)."""
        if len(self.failures) > 10_000:
            self.failures = {c: t for c, t in self.failures.items() if t and time.time() - t[-1] < LOGIN_WINDOW_S}
        self.failures.setdefault(client, []).append(time.time() if now is None else now)

    def _mac(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, now: float | None = None) -> str:
        """A cookie value for `key_id`."""
        body = f"{key_id}.{int((now or time.time()) + SESSION_S)}.{secrets.token_hex(8)}"
        return f"{body}.{self._mac(body)}"

    def csrf_token(self, cookie: str) -> str:
        """The CSRF token that goes with a cookie value."""
        return self._mac("csrf|" + cookie)[:40]

    def local_mode(self) -> bool:
        """Loopback bind and no active key: the studio opens without a login."""
        return is_loopback(self.bind_host) and not self.store.has_keys()

    def caller_for(self, cookie: str | None) -> Caller | None:
        """The caller a cookie stands for, or None when it is missing, forged, expired or revoked."""
        if not cookie or cookie.count(".") != 3:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        key_id, expires, _nonce = body.split(".")
        if not expires.isdigit() or int(expires) < time.time():
            return None
        if key_id == LOCAL_KEY:
            return Caller(LOCAL_KEY, ("admin",)) if self.local_mode() else None
        for key in self.store.list_keys():
            if key["id"] == key_id and not key["revoked"]:
                return Caller(key_id, tuple(key["scopes"]))
        return None

    def authenticate(self, request: Request) -> Caller | None:
        """The cookie's caller, enforcing CSRF on mutations (used by `require` without a Bearer key)."""
        cookie = request.cookies.get(COOKIE)
        caller = self.caller_for(cookie)
        if caller is None:
            return None
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent, self.csrf_token(cookie)):
                raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header (reload the page)")
        return caller


class SecurityHeaders:
    """Plain ASGI middleware adding CSP and friends to every HTTP response, errors included."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in SECURITY_HEADERS if h[0] not in names]
            await send(message)

        await self.app(scope, receive, with_headers)
