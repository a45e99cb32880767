"""Images: text-to-image and enhance as jobs, and content-addressed results.

Both POST routes answer like OpenAI's images API (`{"created", "data": [{"b64_json"}]}`),
waiting for the job up to the server's wait cap; with `Prefer: respond-async` (or when the
cap passes) they answer 202 with the job id and `Location: /v1/jobs/{id}`.
"""

from __future__ import annotations

import base64
import json
import time

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.files import read_content, store_bytes
from lorastudio.serving.http import ApiError, Caller, admit, not_found, require
from lorastudio.serving.schemas import EditFields, GenerationBody, parse_size
from lorastudio.serving.served import request_defaults, served_model
from lorastudio.serving.store import TERMINAL
from lorastudio.serving.uploads import MAX_IMAGE_BYTES, UploadError, clean_photo

router = APIRouter()


def _check_loras(request: Request, refs: list) -> list[dict]:
    store = request.app.state.store
    out = []
    for ref in refs:
        row = store.get_lora(ref.id)
        if row is None:
            raise ApiError(422, "unknown_lora", f"no LoRA with id '{ref.id}' is registered")
        out.append({"id": ref.id, "scale": ref.scale, "sha256": row["sha256"]})
    return out


async def _submit(request: Request, caller: Caller, kind: str, params: dict, body) -> object:
    store = request.app.state.store
    await run_in_threadpool(admit, request, caller)
    deadline = time.time() + body.deadline_s if body.deadline_s else None
    idempotency = request.headers.get("idempotency-key")
    if idempotency is not None and not (1 <= len(idempotency) <= 128 and idempotency.isprintable()):
        raise ApiError(422, "bad_idempotency_key", "Idempotency-Key must be 1-128 printable characters")
    job, _created = await run_in_threadpool(lambda: store.submit(
        kind, caller.key_id, params, priority=body.priority, deadline_at=deadline, idempotency_key=idempotency))
    return job


async def _answer(request: Request, job, response_format: str) -> Response:
    """202 right away when asked, else wait up to the cap and answer like OpenAI."""
    settings = request.app.state.settings
    accepted = JSONResponse({"id": job.id, "status": job.status}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})
    if "respond-async" in request.headers.get("prefer", ""):
        return accepted
    job = await wait_for(request, job.id, settings.wait_cap_s)
    if job.status not in TERMINAL:
        return accepted
    if job.status != "succeeded":
        raise job_error(job)
    data = []
    for sha in job.result["images"]:
        if response_format == "url":
            data.append({"url": f"/v1/images/{sha}"})
        else:
            png = read_content(settings.data_dir, "outputs", sha, "png")
            data.append({"b64_json": base64.b64encode(png).decode("ascii")})
    return JSONResponse({"created": int(job.created_at), "data": data}, headers={"X-Job-Id": job.id})


# HTTP status for a job that ended without an image, by state or error code.
_FAILED_STATUS = {"canceled": 409, "expired": 503, "storage_full": 507, "bad_input": 422, "lora_unusable": 409}


def job_error(job) -> ApiError:
    """The problem a synchronous call answers with when its job did not succeed."""
    code = job.error_code or job.status
    status = _FAILED_STATUS.get(code, _FAILED_STATUS.get(job.status, 500))
    return ApiError(status, code, job.error_message or f"the job was {job.status}")


async def wait_for(request: Request, job_id: str, timeout: float):
    """The job once it ends, or as it stands after `timeout` seconds."""
    import asyncio

    hub, store = request.app.state.hub, request.app.state.store
    queue = hub.subscribe(job_id)
    try:
        end = time.monotonic() + timeout
        while True:
            job = await run_in_threadpool(store.get, job_id)
            left = end - time.monotonic()
            if job.status in TERMINAL or left <= 0:
                return job
            try:
                await asyncio.wait_for(queue.get(), timeout=min(left, 1.0))
            except asyncio.TimeoutError:
                pass
    finally:
        hub.unsubscribe(job_id, queue)


@router.post("/v1/images/generations")
async def generations(body: GenerationBody, request: Request, caller: Caller = Depends(require("generate"))):
    """Text-to-image (OpenAI images API compatible); unset steps/guidance take the served model's defaults."""
    width, height = parse_size(body.size)
    settings = request.app.state.settings
    served = served_model(settings.model, settings.family)
    if width % served.size_multiple or height % served.size_multiple:
        raise ApiError(422, "invalid_request", f"size must be multiples of {served.size_multiple} for {served.family}")
    steps, guidance = request_defaults(body.model_fields_set, body.steps, body.guidance, served)
    params = {"prompt": body.prompt, "negative_prompt": body.negative_prompt, "n": body.n, "width": width,
              "height": height, "steps": steps, "guidance": guidance,
              "seed": body.seed if body.seed is not None else int.from_bytes(__import__("os").urandom(4), "big"),
              "loras": await run_in_threadpool(_check_loras, request, body.loras)}
    job = await _submit(request, caller, "generate", params, body)
    return await _answer(request, job, body.response_format)


@router.post("/v1/images/edits")
async def edits(request: Request, image: UploadFile = File(...), prompt: str = Form(...),
                caller: Caller = Depends(require("generate")), fields: str = Form("{}")):
    """Enhance a photo (OpenAI edits multipart body; other fields as form values or a `fields` JSON)."""
    form = await request.form()
    values = {k: v for k, v in form.items() if k not in ("image", "fields") and isinstance(v, str)}
    try:
        extra = json.loads(fields)
        if not isinstance(extra, dict):
            raise ValueError
    except ValueError:
        raise ApiError(422, "invalid_request", "`fields` must be a JSON object") from None
    if "loras" in values:
        try:
            values["loras"] = json.loads(values["loras"])
        except ValueError:
            raise ApiError(422, "invalid_request", "`loras` must be a JSON list of {id, scale}") from None
    try:
        body = EditFields.model_validate({**values, **extra, "prompt": prompt})
    except ValidationError as exc:
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"][:200]} for e in exc.errors()[:20]]
        raise ApiError(422, "invalid_request", f"invalid fields: {errors}") from None
    data = await image.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise ApiError(413, "image_too_large", f"the image is over {MAX_IMAGE_BYTES} bytes")
    try:
        clean = await run_in_threadpool(clean_photo, data)
    except UploadError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    settings = request.app.state.settings
    if body.control != "none" and not settings.controlnet:
        raise ApiError(422, "no_controlnet", f"control={body.control} needs a ControlNet: start the server with "
                                             "`lorastudio serve --controlnet FOLDER_OR_HUB_ID`")
    steps, guidance = request_defaults(body.model_fields_set, body.steps, body.guidance,
                                       served_model(settings.model, settings.family))
    sha = await run_in_threadpool(store_bytes, settings.data_dir, "inputs", clean.png, "png")
    params = {"prompt": body.prompt, "negative_prompt": body.negative_prompt, "image": sha, "strength": body.strength,
              "steps": steps, "guidance": guidance, "control": body.control, "control_scale": body.control_scale, "resolution": body.resolution,
              "seed": body.seed if body.seed is not None else 0,
              "loras": await run_in_threadpool(_check_loras, request, body.loras)}
    job = await _submit(request, caller, "enhance", params, body)
    return await _answer(request, job, body.response_format)


@router.get("/v1/images/{image_id}")
@router.get("/v1/images/{image_id}/content")
async def image_content(image_id: str, request: Request, caller: Caller = Depends(require("generate"))):
    """A result image by its SHA-256 (PNG)."""
    data = await run_in_threadpool(read_content, request.app.state.settings.data_dir, "outputs", image_id, "png")
    if data is None:
        raise not_found("image")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=31536000, immutable"})
