"""The FastAPI application factory. Nothing here imports torch.

Guards run before any route, as plain ASGI middleware:
- Host must be one of the server's own names (DNS rebinding) -> 421;
- a request carrying an Origin that is neither its own (same scheme, Host and port) nor allow-listed (or `null`) -> 403; no CORS headers;
- the body is capped per route before it is read whole: Content-Length is checked first,
  and a chunked body is counted as it streams -> 413.
Every error, including unknown routes and unexpected exceptions, is problem+json; an
unexpected exception gets an error id that appears in the server log beside the traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorastudio.serving.http import ApiError, EventHub, Settings, problem
from lorastudio.serving.store import JobStore

log = logging.getLogger("lorastudio.serve")

# Body caps by path prefix (bytes); everything else gets the default.
BODY_CAPS = {"/v1/loras": 1024 * 1024 * 1024, "/v1/trainings": 256 * 1024 * 1024,
             "/v1/images/edits": 25 * 1024 * 1024, "/v1/datasets": 512 * 1024 * 1024}
DEFAULT_BODY_CAP = 1024 * 1024


class BodyTooLarge(Exception):
    """Raised inside `receive` when a streamed body passes its cap."""


def _cap_for(path: str) -> int:
    return next((cap for prefix, cap in BODY_CAPS.items() if path.startswith(prefix)), DEFAULT_BODY_CAP)


async def _send_problem(send: Any, status: int, code: str, detail: str) -> None:
    body = json.dumps({"type": "about:blank", "title": "Error", "status": status, "code": code,
                       "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Host allow-list, Origin allow-list and body caps (see the module docstring)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if name not in self.settings.hosts():
            await _send_problem(send, 421, "bad_host", "this server does not answer for that Host")
            return
        origin = headers.get("origin")
        same_origin = origin == f"{scope.get('scheme', 'http')}://{host}"  # the studio's own pages (Host checked above)
        if origin is not None and not same_origin and origin not in self.settings.allowed_origins:
            await _send_problem(send, 403, "bad_origin", "cross-origin requests are not allowed")
            return
        cap = _cap_for(scope.get("path", ""))
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            await _send_problem(send, 413, "body_too_large", f"the request body is over {cap} bytes")
            return
        seen, over, started = 0, False, False

        async def counted_receive() -> dict:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    over = True
                    raise BodyTooLarge()  # reading stops here; nothing past the cap is buffered
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if over:  # whatever the app made of the aborted read (a parser's 400), the answer is 413
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_problem(send, 413, "body_too_large", f"the request body is over {cap} bytes")
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _send_problem(send, 413, "body_too_large", f"the request body is over {cap} bytes")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):  # noqa: ANN202
        return problem(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):  # noqa: ANN202
        # Field names and reasons only: the offending input is never echoed back.
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200]}
                  for e in exc.errors()[:20]]
        return problem(422, "invalid_request", "the request does not match the API", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):  # noqa: ANN202
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = "no such route" if exc.status_code == 404 else str(exc.detail)[:200]
        return problem(exc.status_code, code, detail)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):  # noqa: ANN202
        error_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s", error_id)
        return problem(500, "internal_error", f"unexpected server error (error id {error_id})", error_id=error_id)


def create_app(settings: Settings, *, store: JobStore | None = None, supervise: bool = True) -> FastAPI:
    """The API. `supervise=False` leaves workers to be started elsewhere (tests, other hosts)."""
    from lorastudio.serving.routes import admin, datasets, health, images, jobs, loras, runs, trainings
    from lorastudio.studio import pages as studio_pages
    from lorastudio.studio.security import SecurityHeaders
    from lorastudio.serving.supervisor import Supervisor

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = store or JobStore(settings.db_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        await app.state.hub.start()
        if app.state.supervisor is not None:
            app.state.supervisor.start()
        try:
            yield
        finally:
            await app.state.hub.stop()
            if app.state.supervisor is not None:
                app.state.supervisor.stop()

    app = FastAPI(title="lorastudio", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings, app.state.store = settings, store
    app.state.hub = EventHub(store)
    app.state.draining = False
    app.state.supervisor = Supervisor(settings, store) if supervise and settings.workers > 0 else None
    _install_error_handlers(app)
    for module in (images, jobs, loras, trainings, health, admin, datasets, runs):
        app.include_router(module.router)
    studio_pages.install(app)  # /studio pages; sessions let `require` accept the studio's cookie
    app.add_middleware(GuardMiddleware, settings=settings)
    app.add_middleware(SecurityHeaders)  # outermost: CSP and friends on every answer, guards' included
    return app
