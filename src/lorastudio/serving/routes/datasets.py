"""Datasets over the API: upload + prepare, images and thumbnails, caption edits, bulk edits, undo, audit.

These are the studio's data endpoints, and any API client may use them with a key: the
pages only render what these return. Ids name everything; no request ever names a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.http import ApiError, Caller, require
from lorastudio.serving.uploads import MAX_IMAGE_BYTES, MAX_ZIP_BYTES
from lorastudio.studio import datasets as ds
from lorastudio.studio import lint

router = APIRouter()
MAX_FILES = 2000
_SLOT_TEXT = Field(default="", max_length=2000)


class Slots(BaseModel):
    """The editor's five slots (list slots as comma-separated text)."""

    model_config = ConfigDict(extra="forbid")
    trigger: str = _SLOT_TEXT
    subject: str = _SLOT_TEXT
    shot: str = _SLOT_TEXT
    objective: str = _SLOT_TEXT
    unplaced: str = _SLOT_TEXT
    style: str = _SLOT_TEXT


class CaptionPut(BaseModel):
    """A caption save: the slots and the version they were loaded at."""

    model_config = ConfigDict(extra="forbid")
    slots: Slots
    version: str = Field(max_length=64)


class BulkEdit(BaseModel):
    """Add one phrase to one slot on selected images."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1, max_length=MAX_FILES)
    slot: Literal["shot", "objective", "style", "unplaced"]
    phrase: str = Field(min_length=1, max_length=200)
    dry_run: bool = True


class Review(BaseModel):
    """Reject the selected images from training (they stay on disk and in the manifest) or restore them."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1, max_length=MAX_FILES)
    action: Literal["reject", "restore"]
    reason: str = Field(default="", max_length=200)


class CaptionJob(BaseModel):
    """Caption the dataset with a backend: a model folder name under models/captioners/ or a hub id."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["hf-caption", "hf-vlm", "tagger", "clip-probe"]
    model: str = Field(min_length=1, max_length=200)
    overwrite: bool = Field(default=False, description="re-caption images that already have a caption")


class LintBody(BaseModel):
    """Slots to check (the editor calls this as you type)."""

    model_config = ConfigDict(extra="forbid")
    slots: Slots


def model_dir(request: Request) -> str:
    """The tokenizer source: the served base model, else the shipped toy base."""
    return ds.tokenizer_source(request.app.state.settings.model)


async def call(fn, *args, **kwargs):  # noqa: ANN001, ANN201 - a thin threadpool + error mapping wrapper
    """Run a blocking studio function; its refusals become problem+json answers."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except ds.StudioError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


def home(request: Request, dataset_id: str) -> Path:
    """The dataset's folder (404 for a bad or unknown id)."""
    try:
        return ds.dataset_home(request.app.state.settings.data_dir, dataset_id)
    except ds.StudioError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


async def writable(request: Request, dataset_id: str) -> Path:
    """The dataset's folder for a change: 409 while a caption job on it is queued or running."""
    from lorastudio.studio import captioning

    folder = home(request, dataset_id)
    if await run_in_threadpool(captioning.busy, request.app.state.store, dataset_id):
        raise ApiError(409, "captioning", "a caption job is working on this dataset; change it when the job has finished")
    return folder


_audit_calls: dict[str, dict[str, dict[str, dict]]] = {}


def audit_calls(audit: dict | None) -> dict[str, dict[str, dict]]:
    """Per image, per attribute (keyed by its id and by its phrase with '_' for spaces): what the audit
    says, {"present": bool, "named": bool | None, "phrase": str}. `named` is False where the audit
    saw the attribute and the caption does not name it, True where the caption names it (present, or
    confidently absent), None where the audit cannot say. Built once per audit (ids are unique)."""
    if not audit:
        return {}
    key = str(audit.get("audit_id"))
    if key not in _audit_calls:
        out: dict[str, dict[str, dict]] = {}
        for row in audit.get("contamination", []):
            unnamed = set(row.get("present_unnamed", []))
            present = set(row.get("present", row.get("present_unnamed", [])))  # older audits list only the unnamed
            calls = {i: {"present": True, "named": i not in unnamed, "phrase": row["phrase"]} for i in present}
            for i in row.get("named_absent", []):
                calls.setdefault(i, {"present": False, "named": True, "phrase": row["phrase"]})
            names = {row["id"].lower(), row["phrase"].lower().replace(" ", "_")}
            for image_id, call in calls.items():
                out.setdefault(image_id, {}).update(dict.fromkeys(names, call))
        if len(_audit_calls) >= 8:
            _audit_calls.pop(next(iter(_audit_calls)))
        _audit_calls[key] = out
    return _audit_calls[key]


def image_view(request: Request, record: dict, trigger: str | None, audit: dict | None) -> dict:
    """One image as the gallery sees it: flags, caption and its slots, lint codes, the audit's per-attribute
    calls and the contaminants present but unnamed."""
    text = record.get("caption_text") or ""
    counts = lint.token_counts(model_dir(request), text) if text else {}
    attrs = audit_calls(audit).get(record["id"], {})
    unnamed = list(dict.fromkeys(c["phrase"] for c in attrs.values() if c["present"] and c["named"] is False))
    return {"id": record["id"], "width": record["width"], "height": record["height"], "flags": record.get("flags", []),
            "caption_text": text, "version": ds.version_of(record), "tokens": counts, "slots": ds.slots_view(record),
            "lint": [p["code"] for p in lint.lint(text, None, trigger, counts)], "unnamed": unnamed, "attrs": attrs}


@router.get("/v1/datasets")
async def list_datasets(request: Request, caller: Caller = Depends(require("train"))):
    """Every studio dataset id."""
    return {"data": await call(ds.list_datasets, request.app.state.settings.data_dir)}


@router.post("/v1/datasets", status_code=201)
async def create_dataset(request: Request, files: list[UploadFile] = File(...), id: str = Form(...),
                         trigger: str = Form(..., pattern=r"^[A-Za-z0-9_]{2,64}$"),
                         resolution: int = Form(512, ge=64, le=2048), caller: Caller = Depends(require("train"))):
    """Upload photos or zips; `prepare` runs on them and the answer lists accepted and rejected files."""
    if len(files) > MAX_FILES:
        raise ApiError(413, "too_many_files", f"at most {MAX_FILES} files per upload")
    blobs = []
    for upload in files:
        cap = MAX_ZIP_BYTES if (upload.filename or "").lower().endswith(".zip") else MAX_IMAGE_BYTES
        data = await upload.read(cap + 1)
        if len(data) > cap:
            raise ApiError(413, "file_too_large", f"'{(upload.filename or '')[:80]}' is over {cap} bytes")
        blobs.append((upload.filename or "upload", data))
    return await call(ds.create_dataset, request.app.state.settings.data_dir, id, blobs, trigger=trigger,
                      resolution=resolution)


@router.get("/v1/datasets/{dataset_id}")
async def get_dataset(dataset_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """The dataset's images (with badges), rejected files and latest audit summary."""
    folder = home(request, dataset_id)
    recs = await call(ds.records, folder)
    trigger = ds.trigger_of(folder)
    audit = await call(ds.load_audit, folder)
    images = [image_view(request, r, trigger, audit) for r in recs]
    return {"id": dataset_id, "trigger": trigger, "images": images, "rejected": await call(ds.rejected, folder),
            "audit": {"id": audit["audit_id"], "counts": audit["counts"]} if audit else None}


@router.get("/v1/datasets/{dataset_id}/images/{image_id}")
async def get_image(dataset_id: str, image_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """One image's caption slots, version and checks."""
    folder = home(request, dataset_id)
    record = await call(lambda: ds.find(ds.records(folder), image_id))
    slots = ds.slots_view(record)
    checks = lint.check(model_dir(request), record.get("caption_text") or "", slots, ds.trigger_of(folder))
    return {"id": image_id, "slots": slots, "version": ds.version_of(record),
            "caption_text": record.get("caption_text") or "", "flags": record.get("flags", []), **checks}


@router.get("/v1/datasets/{dataset_id}/images/{image_id}/content")
async def image_content(dataset_id: str, image_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """The processed image."""
    data = await call(ds.image_bytes, home(request, dataset_id), image_id)
    return Response(data, media_type=_media(data), headers={"Cache-Control": "private, max-age=3600"})


@router.get("/v1/datasets/{dataset_id}/images/{image_id}/thumbnail")
async def image_thumbnail(dataset_id: str, image_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """A 256 px JPEG, generated once per content hash and cached by the browser for good."""
    data, digest = await call(ds.thumbnail, request.app.state.settings.data_dir, home(request, dataset_id), image_id)
    etag = f'"{digest[:32]}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=31536000, immutable", "ETag": etag})


def _media(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


@router.put("/v1/datasets/{dataset_id}/images/{image_id}/caption")
async def put_caption(dataset_id: str, image_id: str, body: CaptionPut, request: Request,
                      caller: Caller = Depends(require("train"))):
    """Save one caption; 409 (with the stored caption) when someone saved since `version`."""
    folder = await writable(request, dataset_id)
    try:
        return await run_in_threadpool(ds.save_caption, folder, image_id,
                                       body.slots.model_dump(), body.version)
    except ds.StudioError as exc:
        from lorastudio.serving.http import problem

        if exc.status == 409:
            return problem(409, exc.code, str(exc), **exc.extra)
        raise ApiError(exc.status, exc.code, str(exc)) from None


@router.post("/v1/datasets/{dataset_id}/images/{image_id}/undo")
async def undo_caption(dataset_id: str, image_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """Step this caption back one version (server history)."""
    return await call(ds.undo_image, await writable(request, dataset_id), image_id)


@router.post("/v1/datasets/{dataset_id}/images/{image_id}/redo")
async def redo_caption(dataset_id: str, image_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """Re-apply the caption version last undone."""
    return await call(ds.redo_image, await writable(request, dataset_id), image_id)


@router.post("/v1/datasets/{dataset_id}/lint")
async def lint_caption(dataset_id: str, body: LintBody, request: Request, caller: Caller = Depends(require("train"))):
    """Token counts, lint and glossary suggestions for slots being typed."""
    from lorastudio.captions.slots import compose

    folder = home(request, dataset_id)
    slots = body.slots.model_dump()
    text = compose(ds.caption_from_form(slots))
    return await run_in_threadpool(lint.check, model_dir(request), text, slots, ds.trigger_of(folder))


@router.post("/v1/datasets/{dataset_id}/edits")
async def bulk_edit(dataset_id: str, body: BulkEdit, request: Request, caller: Caller = Depends(require("train"))):
    """Add a phrase to a slot on the selected images; `dry_run` returns the diff only."""
    folder = home(request, dataset_id) if body.dry_run else await writable(request, dataset_id)
    return await call(ds.bulk_add, folder, body.ids, body.slot, body.phrase, dry_run=body.dry_run)


@router.post("/v1/datasets/{dataset_id}/review")
async def review_images(dataset_id: str, body: Review, request: Request, caller: Caller = Depends(require("train"))):
    """Reject images from training (flag `rejected`, nothing deleted) or restore them; lists the ones changed."""
    return await call(ds.review, await writable(request, dataset_id), body.ids, reject=body.action == "reject",
                      reason=body.reason)


@router.get("/v1/captioners")
async def captioners(request: Request, caller: Caller = Depends(require("train"))):
    """The captioning backends a caption job can run, and the model folders under models/captioners/."""
    from lorastudio.studio import captioning

    return {"backends": list(captioning.BACKENDS),
            "models": await call(captioning.local_models, request.app.state.settings.data_dir)}


@router.post("/v1/datasets/{dataset_id}/captions", status_code=202)
async def caption_dataset(dataset_id: str, body: CaptionJob, request: Request,
                          caller: Caller = Depends(require("train"))):
    """Queue a `caption` job: the backend writes golden-order captions (one undoable operation)."""
    from lorastudio.serving.http import admit
    from lorastudio.serving.routes.jobs import job_view
    from lorastudio.studio import captioning

    folder = await writable(request, dataset_id)  # one caption job per dataset at a time
    store = request.app.state.store
    await call(captioning.resolve_model, request.app.state.settings.data_dir, body.model)
    await run_in_threadpool(admit, request, caller)
    params = {"dataset": dataset_id, "backend": body.backend, "model": body.model, "overwrite": body.overwrite,
              "trigger": ds.trigger_of(folder) or ""}
    job, _ = await run_in_threadpool(lambda: store.submit("caption", caller.key_id, params, max_attempts=1))
    return await run_in_threadpool(job_view, store, job)


@router.post("/v1/datasets/{dataset_id}/undo")
async def undo_op(dataset_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """Revert the latest caption operation (bulk edit, fix or save) on every image it touched."""
    return await call(ds.undo_last_op, await writable(request, dataset_id))


@router.post("/v1/datasets/{dataset_id}/audits", status_code=201)
async def run_audit(dataset_id: str, request: Request, background: bool = False,
                    caller: Caller = Depends(require("train"))):
    """Audit the dataset (text rules, pixel detectors, contamination table). By default now, in
    this call (201 with the audit). With `?background=true` it becomes an `audit` job (202 with
    the job) when a worker is idle, so a large dataset keeps neither the request nor the API
    process busy; with every worker busy (a training run) or none up, it runs now after all,
    rather than waiting behind a run for hours."""
    from fastapi.responses import JSONResponse

    from lorastudio.serving.http import admit
    from lorastudio.serving.routes.jobs import job_view

    folder = home(request, dataset_id)
    store, settings = request.app.state.store, request.app.state.settings

    def worker_free() -> bool:  # one idle and nothing queued ahead of the audit
        idle = any(w["state"] == "ready" for w in store.live_workers(settings.worker_stale_s))
        return idle and not store.counts().get("queued", 0)

    if not background or not await run_in_threadpool(worker_free):
        return await call(ds.audit, folder, tokenizer_dir=model_dir(request))
    await run_in_threadpool(admit, request, caller)
    job, _ = await run_in_threadpool(lambda: store.submit("audit", caller.key_id, {"dataset": dataset_id},
                                                          max_attempts=2))
    return JSONResponse(await run_in_threadpool(job_view, store, job), status_code=202)


@router.get("/v1/datasets/{dataset_id}/audits/{audit_id}")
async def get_audit(dataset_id: str, audit_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """A stored audit ('latest' for the newest)."""
    found = await call(ds.load_audit, home(request, dataset_id), None if audit_id == "latest" else audit_id)
    if found is None:
        raise ApiError(404, "not_found", "no audit yet")
    return found


@router.post("/v1/datasets/{dataset_id}/fix")
async def fix(dataset_id: str, request: Request, apply: bool = False, reaudit: bool = True,
              caller: Caller = Depends(require("train"))):
    """The caption diff `audit --fix` would write; `?apply=true` writes it as one undoable op and
    re-audits (`&reaudit=false` leaves that to the caller, e.g. as a background audit job)."""
    folder = await writable(request, dataset_id) if apply else home(request, dataset_id)
    out = await call(ds.plan_fix, folder, apply=apply)
    if apply and out["op"] and reaudit:
        out["audit"] = await call(ds.audit, folder, tokenizer_dir=model_dir(request))
    return out
