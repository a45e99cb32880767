"""The LoRA registry: upload a safetensors adapter, list, delete. Requests name LoRAs by id only."""

from __future__ import annotations

import hashlib
import os
import re
import uuid

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.files import content_path
from lorastudio.serving.http import ApiError, Caller, not_found, require
from lorastudio.serving.schemas import LORA_ID_RE
from lorastudio.serving.store import StoreError
from lorastudio.serving.trigger_embeddings import holds_embedding, register_embedding
from lorastudio.serving.uploads import UploadError, base_width, inspect_lora

router = APIRouter()
MAX_LORA_BYTES = 1024 * 1024 * 1024


def _public(row: dict) -> dict:
    out = {k: row[k] for k in ("id", "sha256", "family", "format", "modules", "created_at")}
    if row.get("embedding"):  # a textual-inversion file, or a pivotal LoRA's partner
        out["embedding"] = {k: row["embedding"][k] for k in ("trigger", "vectors", "sha256")}
    return out


def move_into_place(settings, tmp_path) -> tuple[str, str]:
    """Store a checked upload content-addressed; returns (sha256, path relative to the data dir)."""
    digest = hashlib.sha256(tmp_path.read_bytes()).hexdigest()
    final = content_path(settings.data_dir, "loras", digest, "safetensors")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_path, final)
    return digest, str(final.relative_to(settings.data_dir))


def register_file(settings, store, tmp_path, lora_id: str, key_id: str) -> dict:
    """Validate a file already on disk under the data dir, move it into place, register it."""
    try:
        info = inspect_lora(tmp_path, settings.family, base_width(settings.model))
    except UploadError:
        tmp_path.unlink(missing_ok=True)
        raise
    digest, file = move_into_place(settings, tmp_path)
    store.add_lora(lora_id, sha256=digest, family=info.family, fmt=info.format, modules=info.modules,
                   file=file, key_id=key_id)
    return {**store.get_lora(lora_id), "coverage": info.coverage}


@router.post("/v1/loras", status_code=201)
async def upload_lora(request: Request, file: UploadFile = File(...), id: str = Form(...),
                      embedding: UploadFile | None = File(None), trigger: str | None = Form(None),
                      caller: Caller = Depends(require("train"))):
    """Register an adapter: the header is parsed (pickles refused whatever the name), family checked.

    `file` may also be a textual-inversion embedding (registered alone), and `embedding` a
    pivotal LoRA's embedding file (registered with it); `trigger` overrides the prompt word
    the file names (its metadata, else its file name).
    """
    if not re.match(LORA_ID_RE, id):
        raise ApiError(422, "bad_lora_id", "LoRA ids are 1-64 lowercase letters, digits, '_' or '-'")
    settings, store = request.app.state.settings, request.app.state.store
    if await run_in_threadpool(store.get_lora, id) is not None:
        raise ApiError(409, "lora_exists", f"a LoRA with id '{id}' is already registered")
    tmp_path = await _receive(file, settings.data_dir / "tmp")
    try:
        if embedding is not None or await run_in_threadpool(holds_embedding, tmp_path):
            try:
                emb_path = await _receive(embedding, settings.data_dir / "tmp") if embedding is not None else None
            except ApiError:
                tmp_path.unlink(missing_ok=True)
                raise
            name = (embedding or file).filename
            row = await run_in_threadpool(register_embedding, settings, store, tmp_path, id, caller.key_id,
                                          emb_path, trigger, name)
        elif trigger is not None:
            tmp_path.unlink(missing_ok=True)
            raise ApiError(422, "bad_trigger", "a trigger names an embedding; this file is not one (send a pivotal "
                           "LoRA's embedding as the embedding field)")
        else:
            row = await run_in_threadpool(register_file, settings, store, tmp_path, id, caller.key_id)
    except UploadError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    except StoreError as exc:
        raise ApiError(409, exc.code, str(exc)) from None
    return {**_public(row), "coverage": row["coverage"]} if row.get("coverage") else _public(row)


async def _receive(file: UploadFile, tmp_dir) -> object:
    """Stream an upload to a fresh file under the data dir's tmp/, within the size cap."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp_path = tmp_dir / f"{uuid.uuid4().hex}.upload"
    written = 0
    with open(tmp_path, "wb") as out:
        while chunk := await file.read(1 << 20):
            written += len(chunk)
            if written > MAX_LORA_BYTES:
                out.close()
                tmp_path.unlink(missing_ok=True)
                raise ApiError(413, "lora_too_large", f"LoRA files are limited to {MAX_LORA_BYTES} bytes")
            out.write(chunk)
    return tmp_path


@router.get("/v1/loras")
async def list_loras(request: Request, caller: Caller = Depends(require("generate"))):
    """Every registered adapter."""
    rows = await run_in_threadpool(request.app.state.store.list_loras)
    return {"data": [_public(r) for r in rows]}


@router.delete("/v1/loras/{lora_id}")
async def delete_lora(lora_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """Unregister an adapter (its owner or an admin); its file goes when no other id uses it."""
    store, settings = request.app.state.store, request.app.state.settings
    row = await run_in_threadpool(store.get_lora, lora_id)
    if row is None or (row["key_id"] != caller.key_id and not caller.admin):
        raise not_found("LoRA")
    await run_in_threadpool(store.delete_lora, lora_id)
    rest = await run_in_threadpool(store.list_loras)
    in_use = {r["sha256"] for r in rest} | {r["embedding"]["sha256"] for r in rest if r["embedding"]}
    for sha, file in [(row["sha256"], row["file"])] + ([(row["embedding"]["sha256"], row["embedding"]["file"])]
                                                      if row["embedding"] else []):
        if sha not in in_use:
            (settings.data_dir / file).unlink(missing_ok=True)
    return {"id": lora_id, "deleted": True}
