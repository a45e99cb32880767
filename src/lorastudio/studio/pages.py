"""The studio's HTML pages under /studio: views of the JSON API, rendered on the server.

Jinja2 autoescapes every value (a caption holding markup shows as text). Pages carry no
inline script or style: behaviour lives in static/studio.js and studio_runs.js, which call the same JSON API
with the session cookie and the page's CSRF token. A request without a session gets the
login page with status 401; on a loopback bind with no key yet, a local session is issued.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.http import ApiError, Caller
from lorastudio.studio import datasets as ds
from lorastudio.studio import trainform
from lorastudio.studio.security import COOKIE, LOCAL_KEY, SESSION_S

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_FILES = {"htmx.min.js": "text/javascript", "studio.js": "text/javascript", "studio_runs.js": "text/javascript",
                "studio.css": "text/css", "htmx.LICENSE.txt": "text/plain"}
PAGE_SIZE = 48
router = APIRouter(include_in_schema=False)  # HTML pages; the JSON API is what OpenAPI documents
_env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(default=True),
                   trim_blocks=True, lstrip_blocks=True)


def served_defaults(settings: Any) -> Any:
    """The served model's request defaults (Flux dev 28 steps, schnell 4, SD 20), so forms start there."""
    from lorastudio.serving.served import SD_DEFAULTS, ServedModel, served_model

    try:
        return served_model(settings.model, settings.family)
    except Exception:  # noqa: BLE001 - a fake-worker server may name no readable model; forms fall back
        return ServedModel(settings.family, "", "sd", size_multiple=8, **SD_DEFAULTS)


def status_label(job: dict) -> str:
    """A job's state as the studio words it: a training run stopped with a saved checkpoint is
    'stopped (saved)' (Resume continues from it), not a bare 'canceled'; one queued again after
    its worker or the whole service went away mid-run is 'interrupted' until a worker resumes it."""
    if job["kind"] == "train" and job["status"] == "canceled" and (job.get("result") or {}).get("saved_step"):
        return "stopped (saved)"
    if job["kind"] == "train" and job["status"] == "queued" and job.get("attempts"):
        return "interrupted (resumes from its last checkpoint)"  # its worker or the service went away mid-run
    return job["status"]


_env.globals["status_label"] = status_label


@dataclass
class Ctx:
    """Who is looking, their CSRF token, and a cookie to set when the session is new."""

    caller: Caller
    csrf: str
    new_cookie: str | None = None


class LoginRequired(Exception):
    """No valid session: answer with the login page (401)."""


async def session(request: Request) -> Ctx:
    """The page's session, issuing a local one on a key-less loopback server."""
    sessions = request.app.state.sessions
    cookie = request.cookies.get(COOKIE)
    caller = await run_in_threadpool(sessions.caller_for, cookie)
    if caller is not None:
        return Ctx(caller, sessions.csrf_token(cookie))
    if await run_in_threadpool(sessions.local_mode):
        fresh = sessions.issue(LOCAL_KEY)
        return Ctx(Caller(LOCAL_KEY, ("admin",)), sessions.csrf_token(fresh), fresh)
    raise LoginRequired()


def set_session_cookie(response: Response, value: str, secure: bool = False) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, whole site; Secure when served over HTTPS."""
    response.set_cookie(COOKIE, value, max_age=SESSION_S, httponly=True, samesite="strict", path="/", secure=secure)


def render(name: str, ctx: Ctx | None, status: int = 200, **values: Any) -> HTMLResponse:
    """A template rendered with the session's CSRF token."""
    html = _env.get_template(name).render(csrf=ctx.csrf if ctx else "", caller=ctx.caller if ctx else None, **values)
    response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
    if ctx is not None and ctx.new_cookie:
        set_session_cookie(response, ctx.new_cookie)
    return response


def login_page(error: str = "", status: int = 401) -> HTMLResponse:
    """The login form."""
    return render("login.html", None, status=status, error=error, title="Log in")


@router.get("/studio/static/{name}")
async def static(name: str):
    """The studio's own scripts and styles (package files, listed by name; no user data)."""
    if name not in STATIC_FILES:
        raise ApiError(404, "not_found", "no such file")
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
async def favicon():
    """No icon (browsers ask anyway; an empty answer keeps their consoles clean)."""
    return Response(status_code=204)


@router.get("/studio/login")
async def login_form(request: Request):
    """The login page (or straight in when the server needs no login)."""
    try:
        ctx = await session(request)
    except LoginRequired:
        return login_page(status=200)
    response = RedirectResponse("/studio", status_code=303)
    if ctx.new_cookie:
        set_session_cookie(response, ctx.new_cookie)
    return response


@router.post("/studio/login")
async def login(request: Request, key: str = Form(..., max_length=200)):
    """Trade an API key for a session cookie."""
    sessions = request.app.state.sessions
    client = request.client.host if request.client else "unknown"
    wait_s = sessions.login_wait(client)
    if wait_s:  # brute force: a few wrong keys per minute per address, then a pause
        page = login_page(f"Too many wrong keys from this address; try again in {wait_s} s.", status=429)
        page.headers["Retry-After"] = str(wait_s)
        return page
    found = await run_in_threadpool(request.app.state.store.verify_key, key.strip())
    if found is None:
        sessions.login_failed(client)
        return login_page("That API key is not valid.")
    sessions.failures.pop(client, None)
    response = RedirectResponse("/studio", status_code=303)
    set_session_cookie(response, sessions.issue(found[0]), secure=request.url.scheme == "https")
    return response


@router.post("/studio/logout")
async def logout(request: Request, csrf: str = Form("")):
    """End the session (CSRF-checked like any mutation)."""
    ctx = await session(request)
    if not hmac.compare_digest(csrf, ctx.csrf):
        raise ApiError(403, "csrf", "missing or wrong CSRF token")
    response = RedirectResponse("/studio/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _summary(data_dir: Path, dataset_id: str) -> dict[str, Any]:
    folder = ds.dataset_home(data_dir, dataset_id)
    recs = ds.records(folder)
    audit = ds.load_audit(folder)
    uncaptioned = sum(1 for r in recs if not r.get("caption_text"))
    view = {"id": dataset_id, "images": len(recs), "rejected": len(ds.rejected(folder)), "uncaptioned": uncaptioned}
    if audit is None:
        view["health"], view["next"] = "not audited", "run the audit"
    else:
        contaminants = sum(1 for row in audit["contamination"] if row["verdict"] == "contaminant")
        counts = audit["counts"]
        view["health"] = f"audit: {counts['error']} errors, {counts['warning']} warnings, {contaminants} contaminant(s)"
        view["next"] = ("caption the images" if uncaptioned else "fix the contamination" if contaminants
                        else "fix the errors" if counts["error"] else "train")
    return view


@router.get("/studio")
async def projects(request: Request):
    """P1: datasets and runs with a health line and the next suggested action."""
    ctx = await session(request)
    data_dir = request.app.state.settings.data_dir
    ids = await run_in_threadpool(ds.list_datasets, data_dir)
    summaries = [await run_in_threadpool(_summary, data_dir, i) for i in ids]
    from lorastudio.serving.routes.admin import list_jobs

    runs = await run_in_threadpool(list_jobs, request.app.state.store, ctx.caller.owner_filter(), None, "train", 20)
    return render("projects.html", ctx, title="Projects", datasets=summaries, runs=runs)


def _matches(image: dict, terms: list[str]) -> bool:
    """The gallery filter language, every term must hold: flag:X, lint:X, tokens:>N, slot:NAME:"" (empty
    slot) or slot:NAME:text, free text; attr:X (the latest audit sees attribute X, by id or phrase with '_'
    for spaces) and after it `present`, `named:no`, `named:yes`, which ask about that attribute."""
    attr: dict | None = None
    for term in terms:
        kind, _, value = term.partition(":")
        kind, value = kind.lower(), value.lower()
        if kind == "attr" and value:
            attr = image.get("attrs", {}).get(value.replace(" ", "_"))
            ok = attr is not None and attr["present"]
        elif term.lower() == "present" and attr is not None:
            ok = attr["present"]
        elif kind == "named" and value in ("yes", "no") and attr is not None:
            ok = attr["named"] is (value == "yes")
        elif kind == "flag" and value:
            ok = any(f.lower().startswith(value) for f in image["flags"])
        elif kind == "lint" and value:
            ok = value in image["lint"]
        elif kind == "tokens" and re.match(r"^[<>]\d+$", value):
            most = max(image["tokens"].values(), default=0)
            ok = most > int(value[1:]) if value[0] == ">" else most < int(value[1:])
        elif kind == "slot" and ":" in value:
            name, _, want = value.partition(":")
            slot = (image.get("slots") or {}).get(name)
            ok = slot is not None and (not slot.strip() if want in ('""', "''") else want.strip("\"'") in slot.lower())
        else:
            ok = term.lower() in image["caption_text"].lower()
        if not ok:
            return False
    return True


class _Views:
    """A dataset's gallery views, each built (caption tokenized, linted) the first time it is shown.

    An unfiltered page needs only its own 24 views, so a 2,000-image gallery opens without
    tokenizing 2,000 captions; a filter builds them all once, and the cache keeps them."""

    def __init__(self, recs: list[dict], make: Any) -> None:
        self.recs, self.make, self.built = recs, make, {}

    def page(self, start: int, stop: int) -> list[dict]:
        return [self.view(i) for i in range(start, min(stop, len(self.recs)))]

    def view(self, i: int) -> dict:
        if i not in self.built:
            self.built[i] = self.make(self.recs[i])
        return self.built[i]


async def _gallery_images(request: Request, dataset_id: str, q: str, page: int = 0
                          ) -> tuple[Path, list[dict], int, dict | None]:
    """One page of the gallery (views `page * PAGE_SIZE` on, after the filter) and the total."""
    from lorastudio.serving.routes.datasets import home, image_view

    folder = home(request, dataset_id)
    audit = await run_in_threadpool(ds.load_audit, folder)
    # Views are cached per manifest state and audit: scrolling a 2,000-image gallery must not
    # re-read the manifest and re-tokenize every caption for each page.
    stat = (folder / "dataset" / "manifest.jsonl").stat()
    key = (str(folder), stat.st_mtime_ns, stat.st_size, (audit or {}).get("audit_id"))
    cache = request.app.state.studio_views
    views = cache.get(key)
    if views is None:
        recs = await run_in_threadpool(ds.records, folder)
        trigger = ds.trigger_of(folder)
        views = _Views(recs, lambda r: image_view(request, r, trigger, audit))
        cache.clear()  # one dataset's views at a time keeps memory bounded
        cache[key] = views
    start = max(0, page) * PAGE_SIZE
    terms = q.split()
    if not terms:
        shown = await run_in_threadpool(views.page, start, start + PAGE_SIZE)
        return folder, shown, len(views.recs), audit
    every = await run_in_threadpool(views.page, 0, len(views.recs))
    matched = [v for v in every if _matches(v, terms)]
    return folder, matched[start:start + PAGE_SIZE], len(matched), audit


@router.get("/studio/datasets/{dataset_id}")
async def gallery(dataset_id: str, request: Request, q: str = ""):
    """P2: the gallery (first page; later pages load as you scroll)."""
    ctx = await session(request)
    folder, images, total, audit = await _gallery_images(request, dataset_id, q[:500])
    return render("gallery.html", ctx, title=f"Dataset {dataset_id}", dataset=dataset_id, q=q, images=images,
                  total=total, next_page=1 if total > PAGE_SIZE else None, audit=audit,
                  rejected=await run_in_threadpool(ds.rejected, folder), trigger=ds.trigger_of(folder),
                  **await _captioners(request))


async def _captioners(request: Request) -> dict[str, list[str]]:
    """What the "Caption with a model" form offers (the same lists GET /v1/captioners answers)."""
    from lorastudio.studio import captioning

    models = await run_in_threadpool(captioning.local_models, request.app.state.settings.data_dir)
    return {"caption_backends": list(captioning.BACKENDS), "caption_models": models}


@router.get("/studio/datasets/{dataset_id}/grid")
async def gallery_page(dataset_id: str, request: Request, page: int = 1, q: str = ""):
    """One more page of thumbnails (an htmx partial)."""
    ctx = await session(request)
    _folder, images, total, _audit = await _gallery_images(request, dataset_id, q[:500], page)
    more = page + 1 if total > max(0, page) * PAGE_SIZE + PAGE_SIZE else None
    return render("grid.html", ctx, dataset=dataset_id, q=q, images=images, next_page=more)


@router.get("/studio/datasets/{dataset_id}/images/{image_id}")
async def editor(dataset_id: str, image_id: str, request: Request):
    """P3: the caption editor."""
    from lorastudio.serving.routes.datasets import get_image, home

    ctx = await session(request)
    folder = home(request, dataset_id)
    ids = [r["id"] for r in await run_in_threadpool(ds.records, folder)]
    view = await get_image(dataset_id, image_id, request, ctx.caller)
    at = ids.index(image_id)
    audit = await run_in_threadpool(ds.load_audit, folder)
    evidence = [{"phrase": row["phrase"], "present": image_id in row.get("present_unnamed", []),
                 "verdict": row["verdict"]} for row in (audit or {}).get("contamination", [])
                if image_id in row.get("present_unnamed", [])]
    return render("editor.html", ctx, title=f"Caption {image_id}", dataset=dataset_id, image=view,
                  prev=ids[at - 1] if at > 0 else None, next=ids[at + 1] if at + 1 < len(ids) else None,
                  evidence=evidence, slots=SLOT_LABELS, **await _captioners(request))


SLOT_LABELS = [("trigger", "1. Trigger"), ("subject", "2. Subject"), ("shot", "3. Shot / composition"),
               ("objective", "4. Objective description"), ("unplaced", "4b. Not yet placed"),
               ("style", "5. Style / subjective")]


@router.get("/studio/datasets/{dataset_id}/audit")
async def contamination(dataset_id: str, request: Request, audit_id: str | None = None):
    """P4: present vs named per attribute, the fix diff, audit history."""
    from lorastudio.serving.routes.datasets import home

    ctx = await session(request)
    folder = home(request, dataset_id)
    try:
        audit = await run_in_threadpool(ds.load_audit, folder, audit_id)
    except ds.StudioError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    history = await run_in_threadpool(ds.audits, folder)
    before = None  # the audit just older than the one shown: its figures sit beside each row (before/after)
    if audit is not None and history.index(audit["audit_id"]) + 1 < len(history):
        older = await run_in_threadpool(ds.load_audit, folder, history[history.index(audit["audit_id"]) + 1])
        before = {"audit_id": older["audit_id"], "rows": {r["id"]: r for r in older["contamination"]}}
    return render("audit.html", ctx, title=f"Contamination {dataset_id}", dataset=dataset_id, audit=audit,
                  history=history, before=before)


@router.get("/studio/jobs")
async def jobs_page(request: Request, kind: str = "", status: str = ""):
    """P9: the durable queue."""
    from lorastudio.serving.routes.admin import list_jobs, queue_paused
    from lorastudio.serving.routes.jobs import job_view
    from lorastudio.serving.store import STATES

    ctx = await session(request)
    store = request.app.state.store
    found = await run_in_threadpool(list_jobs, store, ctx.caller.owner_filter(), status if status in STATES else None,
                                    kind or None, 200)
    views = [await run_in_threadpool(job_view, store, j) for j in found]
    template = "jobs_rows.html" if request.headers.get("hx-request") else "jobs.html"
    paused = await run_in_threadpool(queue_paused, store)
    return render(template, ctx, title="Jobs", jobs=views, kind=kind, state_filter=status, paused=paused)


@router.get("/studio/jobs/{job_id}")
async def job_page(job_id: str, request: Request):
    """One job: its trace, events and (for training) the log tail."""
    from lorastudio.serving.routes.jobs import job_view

    ctx = await session(request)
    store = request.app.state.store
    job = await run_in_threadpool(store.get, job_id, ctx.caller.owner_filter())
    if job is None:
        raise ApiError(404, "not_found", "no such job")
    events = await run_in_threadpool(store.event_log, job_id)
    from lorastudio.serving.routes.runs import job_log, read_log, run_record, sample_prompts

    data_dir = request.app.state.settings.data_dir
    log_tail, log_end = await run_in_threadpool(read_log, data_dir, job, -8000)
    if log_tail is None and job_log(data_dir, job) is not None and job.status in ("queued", "running"):
        log_tail = ""  # no log yet: the view fills in as the job writes one

    return render("job.html", ctx, title=f"Job {job_id[:8]}", job=await run_in_threadpool(job_view, store, job),
                  samples_possible=bool(sample_prompts(job)), record=await run_in_threadpool(run_record, data_dir, job),
                  trace=job.trace or [], events=events, log_tail=log_tail, log_end=log_end, params=job.params)


STORAGE_FOLDERS = ("studio", "datasets", "outputs", "inputs", "loras", "evaluations", "captions")


def storage_facts(data_dir: Path, max_files: int = 200_000) -> dict[str, Any]:
    """Bytes used per top folder of the data dir and the disk's free space (names only, never paths);
    a folder with more than `max_files` files is reported as at least what was counted."""
    import os
    import shutil

    used, counted = {}, 0
    for name in STORAGE_FOLDERS:
        total, root = 0, data_dir / name
        for folder, _dirs, files in os.walk(root) if root.is_dir() and not root.is_symlink() else ():
            for file in files:
                counted += 1
                try:
                    total += os.lstat(os.path.join(folder, file)).st_size
                except OSError:
                    continue
            if counted > max_files:
                break
        used[name] = total
    disk = shutil.disk_usage(data_dir)
    return {"used": used, "free": disk.free, "total": disk.total, "partial": counted > max_files}


@router.get("/studio/settings")
async def settings_page(request: Request):
    """P10: API keys, storage, bind address, versions."""
    from lorastudio.serving.routes.admin import versions

    ctx = await session(request)
    settings = request.app.state.settings
    keys = await run_in_threadpool(request.app.state.store.list_keys) if ctx.caller.admin else []
    from lorastudio.studio.captioning import local_models
    from lorastudio.studio.security import is_loopback

    served = served_defaults(settings)
    models = {"base model": f"{served.family}{' ' + served.variant if served.variant else ''}",
              "ControlNet (enhance canny)": "configured" if settings.controlnet else "none (serve --controlnet)",
              "captioners in models/captioners/": ", ".join(local_models(settings.data_dir)) or "none"}
    return render("settings.html", ctx, title="Settings", keys=keys, versions=(await versions(request, ctx.caller))["data"],
                  host=settings.host, port=settings.port, local=ctx.caller.key_id == LOCAL_KEY,
                  admin=ctx.caller.admin, exposed=not is_loopback(settings.host), models=models,
                  storage=await run_in_threadpool(storage_facts, settings.data_dir) if ctx.caller.admin else None)


@router.get("/studio/enhance")
async def enhance_page(request: Request):
    """P8: the enhance playground (each run is an `enhance` job through /v1/images/edits)."""
    from lorastudio.serving.routes.admin import list_jobs
    from lorastudio.serving.routes.jobs import job_view

    ctx = await session(request)
    store = request.app.state.store
    loras = await run_in_threadpool(store.list_loras)
    found = await run_in_threadpool(list_jobs, store, ctx.caller.owner_filter(), None, "enhance", 30)
    history = [await run_in_threadpool(job_view, store, j) for j in found]
    settings = request.app.state.settings
    return render("enhance.html", ctx, title="Enhance", loras=loras, history=history,
                  default_prompt="a photo of food, appetizing, studio lighting", controlnet=bool(settings.controlnet),
                  default_steps=served_defaults(settings).steps)


@router.get("/studio/compare")
async def compare_page(request: Request):
    """P7: a fixed-seed grid of prompt x LoRA x scale with a leak row and an A/B slider."""
    ctx = await session(request)
    loras = await run_in_threadpool(request.app.state.store.list_loras)
    data_dir = request.app.state.settings.data_dir
    ids = await run_in_threadpool(ds.list_datasets, data_dir)
    trigger = next((t for t in (ds.trigger_of(ds.dataset_home(data_dir, i)) for i in ids) if t), "ohwx_style")
    from lorastudio.serving.routes.admin import list_jobs
    from lorastudio.serving.routes.runs import run_checkpoints

    trains = await run_in_threadpool(list_jobs, request.app.state.store, ctx.caller.owner_filter(), "succeeded",
                                     "train", 10)
    runs = [r for r in [await run_in_threadpool(run_checkpoints, data_dir, j) for j in trains] if r and r["steps"]]
    return render("compare.html", ctx, title="Compare", loras=loras, trigger=trigger, runs=runs,
                  default_steps=served_defaults(request.app.state.settings).steps)


@router.get("/studio/runs/new")
async def training_form(request: Request, dataset: str = ""):
    """P5: presets, fields generated from the request schema, the audit gate, a steps/epochs calculator."""
    from lorastudio.serving.routes.datasets import home
    from lorastudio.serving.routes.runs import StudioTraining, audit_gate

    ctx = await session(request)
    data_dir = request.app.state.settings.data_dir
    ids = await run_in_threadpool(ds.list_datasets, data_dir)
    chosen = dataset if dataset in ids else (ids[0] if ids else "")
    gate, images = None, 0
    if chosen:
        folder = home(request, chosen)
        gate = await run_in_threadpool(audit_gate, folder)
        images = sum(1 for r in await run_in_threadpool(ds.records, folder) if "rejected" not in r.get("flags", []))
    schema = StudioTraining.model_json_schema()["properties"]
    described = trainform.config_descriptions()
    fields = [{"name": name, "type": spec.get("type", "string"), "default": spec.get("default", ""),
               "min": spec.get("minimum", spec.get("exclusiveMinimum")), "max": spec.get("maximum"),
               "description": described.get(name) or spec.get("description", ""), "pattern": spec.get("pattern")}
              for name, spec in schema.items() if name not in ("override_reason", "priority", "config_yaml", "options")]
    family = request.app.state.settings.family
    presets = {k: v for k, v in trainform.PRESETS.items() if family in trainform.PRESET_FAMILIES[k]}
    return render("train.html", ctx, title="New training run", datasets=ids, dataset=chosen, gate=gate,
                  images=images, fields=fields, options=trainform.option_fields(family), presets=presets, family=family)


def install(app: Any) -> None:
    """Mount the studio on the API app: sessions, pages, and the login page for 401s."""
    from lorastudio.studio.security import Sessions, load_secret

    settings = app.state.settings
    app.state.sessions = Sessions(load_secret(settings.data_dir), app.state.store, settings.host)
    app.state.studio_views = {}
    app.include_router(router)

    @app.exception_handler(LoginRequired)
    async def _login(_request: Request, _exc: LoginRequired):  # noqa: ANN202
        return login_page()
