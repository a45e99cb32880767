"""Jobs: state and queue position, cancel, the SSE event stream and the per-job trace."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.http import Caller, not_found, require
from lorastudio.serving.store import TERMINAL

router = APIRouter()
_END_EVENTS = {"completed", "failed", "canceled", "expired"}
PING_S = 15.0


def job_view(store, job) -> dict:
    """The public JSON of a job."""
    timings = {"queued_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at}
    if job.started_at:
        timings["queue_wait_s"] = round(job.started_at - job.created_at, 4)
    if job.started_at and job.finished_at:
        timings["service_s"] = round(job.finished_at - job.started_at, 4)
    view = {"id": job.id, "kind": job.kind, "status": job.status, "priority": job.priority,
            "position": store.position(job), "attempts": job.attempts, "timings": timings,
            "images": (job.result or {}).get("images", []), "result": job.result,
            "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None}
    return view


async def _own_job(request: Request, caller: Caller, job_id: str):
    job = await run_in_threadpool(request.app.state.store.get, job_id, caller.owner_filter())
    if job is None:
        raise not_found()
    return job


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, request: Request, caller: Caller = Depends(require("generate"))):
    """A job's state, queue position, timings, result image ids and error."""
    job = await _own_job(request, caller, job_id)
    return await run_in_threadpool(job_view, request.app.state.store, job)


@router.delete("/v1/jobs/{job_id}")
async def cancel_job(job_id: str, request: Request, caller: Caller = Depends(require("generate"))):
    """Cancel: a queued job never runs; a running one stops at its next denoising step."""
    await _own_job(request, caller, job_id)
    store = request.app.state.store
    job = await run_in_threadpool(store.cancel, job_id, caller.owner_filter())
    view = await run_in_threadpool(job_view, store, job)
    view["cancel_requested"] = job.cancel_requested or job.status == "canceled"
    return view


@router.get("/v1/jobs/{job_id}/trace")
async def job_trace(job_id: str, request: Request, caller: Caller = Depends(require("generate"))):
    """The job's debug log: stages with timings, every step, seed, model and LoRA hashes, worker."""
    job = await _own_job(request, caller, job_id)
    return {"id": job.id, "status": job.status, "worker": job.worker_id, "trace": job.trace or []}


@router.get("/v1/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request, caller: Caller = Depends(require("generate"))):
    """Server-sent events: queued, started, step, completed, failed, canceled (JSON data). A client
    that reconnects with `Last-Event-ID` gets only what came after that event; a new one gets it all."""
    await _own_job(request, caller, job_id)
    hub, store = request.app.state.hub, request.app.state.store
    last = request.headers.get("last-event-id", "")
    resume_after = int(last) if last.isdigit() and len(last) < 19 else 0

    async def stream():
        queue = hub.subscribe(job_id)
        try:
            seen = resume_after
            for event_id, kind, data in await run_in_threadpool(store.events_after, job_id, resume_after):
                seen = event_id
                yield _sse(event_id, kind, data)
                if kind in _END_EVENTS:
                    return
            job = await run_in_threadpool(store.get, job_id)
            if job.status in TERMINAL:
                return
            while True:
                try:
                    event_id, kind, data = await asyncio.wait_for(queue.get(), timeout=PING_S)
                except asyncio.TimeoutError:
                    yield ": ping\n\n"
                    continue
                if event_id <= seen:
                    continue
                seen = event_id
                yield _sse(event_id, kind, data)
                if kind in _END_EVENTS:
                    return
        finally:
            hub.unsubscribe(job_id, queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _sse(event_id: int, kind: str, data: dict) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
