"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.http import Caller, require

router = APIRouter()
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@router.get("/healthz")
async def healthz():
    """The API process is up (says nothing about workers)."""
    return {"ok": True}


@router.get("/readyz")
async def readyz(request: Request, caller: Caller = Depends(require("generate"))):
    """200 when at least one worker has its model loaded, else 503."""
    state = request.app.state
    live = await run_in_threadpool(state.store.live_workers, state.settings.worker_stale_s)
    view = [{"id": w["id"], "pid": w["pid"], "state": w["state"], "device": w["device"]} for w in live]
    ready = any(w["state"] in ("ready", "busy") for w in live) and not state.draining
    return JSONResponse({"ready": ready, "draining": state.draining, "workers": view}, status_code=200 if ready else 503)


def _histogram(name: str, values: list[float]) -> list[str]:
    lines = [f"# TYPE {name} histogram"]
    for edge in BUCKETS:
        lines.append(f'{name}_bucket{{le="{edge}"}} {sum(v <= edge for v in values)}')
    lines += [f'{name}_bucket{{le="+Inf"}} {len(values)}', f"{name}_sum {sum(values):.6f}", f"{name}_count {len(values)}"]
    return lines


def render_metrics(store, settings) -> str:
    """The Prometheus text exposition of the shared counters and job histograms."""
    counts = store.counts()
    counters = store.counter_values()
    lines = ["# TYPE lorastudio_queue_depth gauge", f"lorastudio_queue_depth {counts.get('queued', 0)}",
             "# TYPE lorastudio_jobs gauge"]
    lines += [f'lorastudio_jobs{{status="{s}"}} {n}' for s, n in sorted(counts.items())]
    lines += ["# TYPE lorastudio_workers_live gauge",
              f"lorastudio_workers_live {len(store.live_workers(settings.worker_stale_s))}"]
    for name in ("rejected_429", "lora_cache_hits", "lora_cache_misses", "worker_restarts"):
        lines += [f"# TYPE lorastudio_{name}_total counter", f"lorastudio_{name}_total {counters.get(name, 0)}"]
    lines += _histogram("lorastudio_queue_wait_seconds", store.durations("wait"))
    lines += _histogram("lorastudio_service_seconds", store.durations("service"))
    return "\n".join(lines) + "\n"


@router.get("/metrics")
async def metrics(request: Request, caller: Caller = Depends(require("admin"))):
    """Prometheus metrics (admin scope)."""
    state = request.app.state
    text = await run_in_threadpool(render_metrics, state.store, state.settings)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
