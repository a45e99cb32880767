"""Training runs as jobs: a dataset zip (images + caption sidecars) and a few bounded settings.

The zip is checked member by member before extraction (no `..`, absolute names, symlinks or
bombs). The run's config is built on the server from the bounded fields, so a request can
never name a path: the dataset, run and output folders all live under the data dir.
"""

from __future__ import annotations

import json
import uuid

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.http import ApiError, Caller, admit, not_found, require
from lorastudio.serving.routes.jobs import job_view
from lorastudio.serving.schemas import TrainingFields
from lorastudio.serving.uploads import MAX_ZIP_BYTES, UploadError, extract_zip

router = APIRouter()


@router.post("/v1/trainings", status_code=202)
async def create_training(request: Request, dataset: UploadFile = File(...), config: str = Form("{}"),
                          caller: Caller = Depends(require("train"))):
    """Queue a LoRA training run; its final LoRA is registered under `lora_id` when it succeeds."""
    try:
        fields = TrainingFields.model_validate(json.loads(config))
    except (ValueError, ValidationError) as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10]) \
            if isinstance(exc, ValidationError) else "`config` must be a JSON object"
        raise ApiError(422, "invalid_config", detail[:500]) from None
    store, settings = request.app.state.store, request.app.state.settings
    if await run_in_threadpool(store.get_lora, fields.lora_id) is not None:
        raise ApiError(409, "lora_exists", f"a LoRA with id '{fields.lora_id}' is already registered")
    await run_in_threadpool(admit, request, caller)
    data = await dataset.read(MAX_ZIP_BYTES + 1)
    run_id = uuid.uuid4().hex
    raw = settings.data_dir / "datasets" / run_id / "raw"
    try:
        files = await run_in_threadpool(extract_zip, data, raw)
    except UploadError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    if not any(f.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") for f in files):
        raise ApiError(422, "empty_dataset", "the zip holds no JPEG, PNG or WebP image")
    params = {**fields.model_dump(), "run_id": run_id}
    job, _ = await run_in_threadpool(lambda: store.submit("train", caller.key_id, params, priority=fields.priority,
                                                          max_attempts=3))
    view = await run_in_threadpool(job_view, store, job)
    return {**view, "lora_id": fields.lora_id}


@router.get("/v1/trainings/{job_id}")
async def get_training(job_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """A training job with its latest progress (step, loss)."""
    store = request.app.state.store
    job = await run_in_threadpool(store.get, job_id, caller.owner_filter())
    if job is None or job.kind != "train":
        raise not_found("training")
    view = await run_in_threadpool(job_view, store, job)
    steps = [d for _, kind, d in await run_in_threadpool(store.events_after, job_id, 0) if kind == "step"]
    view["progress"] = steps[-1] if steps else None
    view["lora_id"] = job.params.get("lora_id")
    return view
