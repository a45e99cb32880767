"""What every route shares: problem+json errors, key checks with scopes, admission control.

Errors are RFC 9457 `application/problem+json` bodies with a stable `code`; they never hold a
traceback or a server path. A job belonging to another key answers exactly like a job that
does not exist.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

PROBLEM_TYPE = "application/problem+json"


@dataclass
class Settings:
    """How a server runs (the `serve` options)."""

    data_dir: Path
    db_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = ""
    family: str = "sd15"
    workers: int = 1
    devices: list[str] = field(default_factory=list)
    fake_workers: bool = False  # timing stand-ins for load tests; no model is loaded
    fake_step_s: float = 0.01
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    max_queue: int = 64
    max_inflight_per_key: int = 16
    wait_cap_s: float = 60.0
    lease_s: float = 10.0
    worker_stale_s: float = 15.0
    drain_timeout_s: float = 30.0
    lora_cache: int = 4
    default_steps: int = 20
    controlnet: str = ""  # a canny ControlNet (folder or hub id) for enhance's control=canny; "" = none

    def hosts(self) -> set[str]:
        """Host header values accepted (loopback names, the bind address, and any added)."""
        return {"127.0.0.1", "localhost", "::1", "[::1]", self.host, *self.allowed_hosts}


class ApiError(Exception):
    """An error answered as problem+json."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 421: "Misdirected Request",
           422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable", 507: "Insufficient Storage"}


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status, "code": code,
            "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def not_found(what: str = "job") -> ApiError:
    """The one answer for a missing id and for another key's id."""
    return ApiError(404, "not_found", f"no such {what}")


@dataclass(frozen=True)
class Caller:
    """The key a request authenticated with."""

    key_id: str
    scopes: tuple[str, ...]

    @property
    def admin(self) -> bool:
        """Admin keys may see every job."""
        return "admin" in self.scopes

    def owner_filter(self) -> str | None:
        """The key id jobs are filtered by (None for admin keys)."""
        return None if self.admin else self.key_id


def require(scope: str) -> Callable:
    """A dependency: a valid, unrevoked `Authorization: Bearer` key holding `scope` (or admin)."""

    async def check(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        sessions = getattr(request.app.state, "sessions", None)
        if not header and sessions is not None:  # the studio's cookie (CSRF-checked on mutations)
            caller = await run_in_threadpool(sessions.authenticate, request)
            if caller is not None:
                if scope not in caller.scopes and not caller.admin:
                    raise ApiError(403, "forbidden", f"this key lacks the '{scope}' scope")
                return caller
        if kind.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "send an API key as `Authorization: Bearer KEY`",
                           {"WWW-Authenticate": "Bearer"})
        found = await run_in_threadpool(request.app.state.store.verify_key, token.strip())
        if found is None:
            raise ApiError(401, "unauthorized", "the API key is not valid", {"WWW-Authenticate": "Bearer"})
        key_id, scopes = found
        if scope not in scopes and "admin" not in scopes:
            raise ApiError(403, "forbidden", f"this key lacks the '{scope}' scope")
        return Caller(key_id, tuple(scopes))

    return check


def _retry_after(store: Any, depth: int, workers: int) -> str:
    recent = store.recent_service_seconds()
    service = sum(recent) / len(recent) if recent else 2.0
    return str(max(1, math.ceil((depth + 1) * service / max(1, workers))))


def admit(request: Request, caller: Caller) -> None:
    """Refuse work the server cannot take now: draining or no worker (503), full queue or key cap (429)."""
    state = request.app.state
    settings: Settings = state.settings
    store = state.store
    live = [w for w in store.live_workers(settings.worker_stale_s) if w["state"] in ("ready", "busy")]
    if state.draining:
        raise ApiError(503, "draining", "the server is shutting down; retry on another instance",
                       {"Retry-After": str(max(1, int(settings.drain_timeout_s)))})
    if not live:
        raise ApiError(503, "no_worker", "no worker has its model loaded yet", {"Retry-After": "5"})
    counts = store.counts()
    depth = counts.get("queued", 0)
    if depth >= settings.max_queue:
        store.bump("rejected_429")
        raise ApiError(429, "queue_full", f"the queue holds {depth} jobs, its limit",
                       {"Retry-After": _retry_after(store, depth, len(live))})
    mine = store.counts(caller.key_id)
    inflight = mine.get("queued", 0) + mine.get("running", 0)
    if inflight >= settings.max_inflight_per_key:
        store.bump("rejected_429")
        raise ApiError(429, "too_many_inflight", f"this key has {inflight} jobs queued or running, its limit",
                       {"Retry-After": _retry_after(store, depth, len(live))})


class EventHub:
    """One poller per API process turns new event rows into wake-ups for waiting requests.

    Idle SSE clients and synchronous waits cost a queue each, not a database query each.
    """

    def __init__(self, store: Any, interval_s: float = 0.02) -> None:
        self.store, self.interval_s = store, interval_s
        self.last_id = 0
        self.subscribers: dict[str, set[asyncio.Queue]] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Begin polling from the newest event."""
        self.last_id = await run_in_threadpool(self.store.last_event_id)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                fresh = await run_in_threadpool(self.store.events_since, self.last_id)
            except Exception:  # a database hiccup must not end the poller; the next poll retries
                continue
            for event_id, job_id, kind, data in fresh:
                self.last_id = max(self.last_id, event_id)
                for queue in self.subscribers.get(job_id, ()):
                    queue.put_nowait((event_id, kind, data))

    def subscribe(self, job_id: str) -> asyncio.Queue:
        """A queue receiving this job's new events."""
        queue: asyncio.Queue = asyncio.Queue()
        self.subscribers.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        """Stop delivering to `queue`."""
        group = self.subscribers.get(job_id)
        if group is not None:
            group.discard(queue)
            if not group:
                self.subscribers.pop(job_id, None)
