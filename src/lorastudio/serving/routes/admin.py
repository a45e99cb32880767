"""Queue listing and retry, API key management and versions (what the studio's Jobs and Settings pages use)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.http import ApiError, Caller, not_found, require
from lorastudio.serving.routes.jobs import job_view
from lorastudio.serving.store import QUEUE_PAUSED, STATES, TERMINAL, Job, StoreError, counters, jobs

router = APIRouter()


def list_jobs(store, owner: str | None, status: str | None, kind: str | None, limit: int) -> list[Job]:  # noqa: ANN001
    """Newest jobs first, filtered by owner, state and kind."""
    query = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
    if owner is not None:
        query = query.where(jobs.c.key_id == owner)
    if status:
        query = query.where(jobs.c.status == status)
    if kind:
        query = query.where(jobs.c.kind == kind)
    with store.engine.connect() as conn:
        return [Job.from_row(row) for row in conn.execute(query).all()]


@router.get("/v1/jobs")
async def jobs_index(request: Request, status: str | None = None, kind: str | None = None, limit: int = 100,
                     caller: Caller = Depends(require("generate"))):
    """The queue, newest first (admin keys see every key's jobs)."""
    if status is not None and status not in STATES:
        raise ApiError(422, "bad_status", f"status must be one of {', '.join(STATES)}")
    store = request.app.state.store
    found = await run_in_threadpool(list_jobs, store, caller.owner_filter(), status, kind, max(1, min(limit, 500)))
    return {"data": [await run_in_threadpool(job_view, store, job) for job in found]}


@router.post("/v1/jobs/{job_id}/retry", status_code=202)
async def retry_job(job_id: str, request: Request, caller: Caller = Depends(require("generate"))):
    """Queue a finished job again with the same parameters (a new job id)."""
    store = request.app.state.store
    job = await run_in_threadpool(store.get, job_id, caller.owner_filter())
    if job is None:
        raise not_found()
    if job.status not in TERMINAL:
        raise ApiError(409, "not_finished", f"the job is {job.status}; only finished jobs can be retried")
    if job.kind in ("train", "caption", "evaluate", "audit") and "train" not in caller.scopes and not caller.admin:
        raise ApiError(403, "forbidden", "this key lacks the 'train' scope")
    new, _ = await run_in_threadpool(lambda: store.submit(job.kind, caller.key_id, job.params, priority=job.priority))
    return await run_in_threadpool(job_view, store, new)


def prepend(store, job_id: str, owner: str | None) -> Job | None:  # noqa: ANN001
    """Move a queued job to the head of the queue (one priority above every other queued job, at most 10)."""
    from sqlalchemy import func, update

    with store._tx() as conn:  # the store's write transaction: read the top priority and set ours atomically
        query = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.key_id == owner)
        row = conn.execute(query).first()
        if row is None or row.status != "queued":
            return Job.from_row(row) if row is not None else None
        top = conn.execute(select(func.max(jobs.c.priority)).where(
            (jobs.c.status == "queued") & (jobs.c.id != job_id))).scalar()
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(
            priority=min(10, max(row.priority, (top if top is not None else row.priority) + 1))))
    return store.get(job_id)


@router.post("/v1/jobs/{job_id}/prepend")
async def prepend_job(job_id: str, request: Request, caller: Caller = Depends(require("admin"))):
    """Put a queued job first (admin: it reorders everyone's work)."""
    store = request.app.state.store
    job = await run_in_threadpool(prepend, store, job_id, None)
    if job is None:
        raise not_found()
    if job.status != "queued":
        raise ApiError(409, "not_queued", f"the job is {job.status}; only queued jobs can move")
    return await run_in_threadpool(job_view, store, job)


def queue_paused(store) -> bool:  # noqa: ANN001
    """Whether an admin paused the queue (workers claim nothing new while it is)."""
    with store.engine.connect() as conn:
        return bool(conn.execute(select(counters.c.value).where(counters.c.name == QUEUE_PAUSED)).scalar())


def set_paused(store, paused: bool) -> None:  # noqa: ANN001
    """Pause or resume the queue for every worker (the flag lives in the shared store)."""
    from sqlalchemy import insert, update

    with store._tx() as conn:
        done = conn.execute(update(counters).where(counters.c.name == QUEUE_PAUSED).values(value=int(paused)))
        if done.rowcount == 0:
            conn.execute(insert(counters).values(name=QUEUE_PAUSED, value=int(paused)))


@router.get("/v1/queue")
async def queue_state(request: Request, caller: Caller = Depends(require("generate"))):
    """Whether the queue is paused, and how many jobs are queued and running."""
    store = request.app.state.store
    counts = await run_in_threadpool(store.counts)
    return {"paused": await run_in_threadpool(queue_paused, store), "queued": counts.get("queued", 0),
            "running": counts.get("running", 0)}


@router.post("/v1/queue/pause")
async def pause_queue(request: Request, caller: Caller = Depends(require("admin"))):
    """Stop handing out jobs (admin): running jobs finish, queued and new ones wait until resume."""
    await run_in_threadpool(set_paused, request.app.state.store, True)
    return await queue_state(request, caller)


@router.post("/v1/queue/resume")
async def resume_queue(request: Request, caller: Caller = Depends(require("admin"))):
    """Hand out queued jobs again (admin)."""
    await run_in_threadpool(set_paused, request.app.state.store, False)
    return await queue_state(request, caller)


@router.get("/v1/jobs/{job_id}/events-log")
async def job_event_log(job_id: str, request: Request, caller: Caller = Depends(require("generate"))):
    """Every event of a job so far, with its time (the trace page's history)."""
    store = request.app.state.store
    if await run_in_threadpool(store.get, job_id, caller.owner_filter()) is None:
        raise not_found()
    rows = await run_in_threadpool(store.event_log, job_id)
    return {"data": [{"id": i, "at": at, "type": kind, "data": data} for i, at, kind, data in rows]}


class KeyBody(BaseModel):
    """A new key's name and scopes."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=128)
    scopes: list[str] = Field(min_length=1, max_length=3)


@router.get("/v1/keys")
async def keys_index(request: Request, caller: Caller = Depends(require("admin"))):
    """Every key's id, name, scopes and state (never a token)."""
    return {"data": await run_in_threadpool(request.app.state.store.list_keys)}


@router.post("/v1/keys", status_code=201)
async def create_key(body: KeyBody, request: Request, caller: Caller = Depends(require("admin"))):
    """A new key; its token is in this answer only."""
    try:
        key_id, token = await run_in_threadpool(request.app.state.store.create_key, body.scopes, body.name)
    except StoreError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    return {"id": key_id, "token": token, "scopes": sorted(set(body.scopes)), "name": body.name}


@router.delete("/v1/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, caller: Caller = Depends(require("admin"))):
    """Revoke a key (its sessions end with it)."""
    if not await run_in_threadpool(request.app.state.store.revoke_key, key_id):
        raise not_found("key")
    return {"id": key_id, "revoked": True}


@router.get("/v1/versions")
async def versions(request: Request, caller: Caller = Depends(require("generate"))):
    """Installed versions of lorastudio and the libraries it runs on."""
    from lorastudio.environment import CORE, version_of

    names = ("lorastudio", *CORE, "fastapi", "sqlalchemy", "jinja2", "pillow")
    return {"data": {name: version_of(name) for name in names}}
