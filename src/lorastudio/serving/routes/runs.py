"""Training from a studio dataset: the audit gate, then the same `train` job `/v1/trainings` queues.

The dataset's processed images and caption sidecars are copied into the run's `raw/` folder,
so the worker runs exactly the path an uploaded zip takes (prepare -> manual captions ->
train). A dataset whose latest audit has errors (or that was never audited) is refused
unless the request carries an override reason, which is stored with the job.
"""

from __future__ import annotations

import shutil
import uuid

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from lorastudio.serving.http import ApiError, Caller, admit, require
from lorastudio.serving.routes.datasets import home
from lorastudio.serving.routes.jobs import job_view
from lorastudio.serving.schemas import TrainingFields
from lorastudio.studio import datasets as ds

router = APIRouter()


class StudioTraining(TrainingFields):
    """A training request for a studio dataset: the service's bounded fields plus the gate's override."""

    trigger: str = Field(default="", pattern=r"^([A-Za-z0-9_]{2,64})?$", description="empty = the dataset's trigger")
    override_reason: str = Field(default="", max_length=500, description="why to train despite audit errors")


def audit_gate(folder) -> dict:  # noqa: ANN001
    """What the latest audit says about training now: ok, or the reason it is blocked."""
    latest = ds.load_audit(folder)
    if latest is None:
        return {"ok": False, "reason": "the dataset has not been audited", "errors": None}
    errors = latest["counts"]["error"]
    return {"ok": errors == 0, "reason": f"the latest audit has {errors} error(s)" if errors else "",
            "errors": errors, "audit_id": latest["audit_id"]}


def stage_run(data_dir, folder, run_id: str) -> int:  # noqa: ANN001
    """Copy processed images + sidecars into the run's raw/ folder; returns the image count."""
    raw = data_dir / "datasets" / run_id / "raw"
    raw.mkdir(parents=True)
    count = 0
    for record in ds.records(folder):
        image = ds.contained(folder / "dataset", record["file"])
        shutil.copyfile(image, raw / image.name)
        sidecar = image.with_suffix(".txt")
        if sidecar.is_file() and not sidecar.is_symlink():
            shutil.copyfile(sidecar, raw / sidecar.name)
        count += 1
    return count


@router.get("/v1/datasets/{dataset_id}/gate")
async def gate(dataset_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """Whether the audit lets this dataset train now."""
    return await run_in_threadpool(audit_gate, home(request, dataset_id))


@router.post("/v1/datasets/{dataset_id}/trainings", status_code=202)
async def train_dataset(dataset_id: str, body: StudioTraining, request: Request,
                        caller: Caller = Depends(require("train"))):
    """Queue a training run on this dataset (its LoRA is registered as `lora_id` when it succeeds)."""
    folder = home(request, dataset_id)
    store, settings = request.app.state.store, request.app.state.settings
    verdict = await run_in_threadpool(audit_gate, folder)
    if not verdict["ok"] and len(body.override_reason.strip()) < 10:
        raise ApiError(409, "audit_gate", f"{verdict['reason']}; fix it or give an override reason (10+ characters)")
    if await run_in_threadpool(store.get_lora, body.lora_id) is not None:
        raise ApiError(409, "lora_exists", f"a LoRA with id '{body.lora_id}' is already registered")
    await run_in_threadpool(admit, request, caller)
    run_id = uuid.uuid4().hex
    try:
        images = await run_in_threadpool(stage_run, settings.data_dir, folder, run_id)
    except ds.StudioError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    fields = body.model_dump(exclude={"override_reason"})
    fields["trigger"] = fields["trigger"] or ds.trigger_of(folder) or ""
    if not fields["trigger"]:
        raise ApiError(422, "no_trigger", "the dataset has no trigger word; give one")
    params = {**fields, "run_id": run_id, "dataset": dataset_id, "images": images,
              "override_reason": body.override_reason.strip() or None}
    job, _ = await run_in_threadpool(lambda: store.submit("train", caller.key_id, params, priority=body.priority,
                                                          max_attempts=3))
    return {**await run_in_threadpool(job_view, store, job), "lora_id": body.lora_id}


class ConfigText(BaseModel):
    """A training config as YAML text (the training form's Advanced tab)."""

    model_config = ConfigDict(extra="forbid")
    yaml: str = Field(max_length=64 * 1024)


@router.get("/v1/configs/default")
async def default_config(family: str = "sd15", caller: Caller = Depends(require("train"))):
    """What `lorastudio init-config --family F` prints: every key with its default and description."""
    from lorastudio.config.loader import commented_yaml
    from lorastudio.config.train import FAMILY_DEFAULTS, TrainConfig

    if family not in FAMILY_DEFAULTS:
        raise ApiError(422, "bad_family", f"family must be one of {', '.join(sorted(FAMILY_DEFAULTS))}")
    return {"family": family, "yaml": commented_yaml(TrainConfig.model_validate(FAMILY_DEFAULTS[family]))}


@router.post("/v1/configs/check")
async def check_config(body: ConfigText, caller: Caller = Depends(require("train"))):
    """Validate YAML against the typed training config: the resolved YAML, or the CLI's errors ('did you mean')."""
    import yaml

    from lorastudio.config.loader import commented_yaml, format_validation_error
    from lorastudio.config.train import TrainConfig

    try:
        data = yaml.safe_load(body.yaml)
    except yaml.YAMLError as exc:
        raise ApiError(422, "bad_yaml", f"not valid YAML: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "bad_yaml", "the config must be a YAML mapping")
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_config", format_validation_error(TrainConfig, exc, "YAML tab")[:4000]) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_config", str(exc)[:1000]) from None
    return {"ok": True, "yaml": commented_yaml(cfg)}
