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
from lorastudio.studio import trainform
from lorastudio.studio.evaluating import EvaluationRequest

router = APIRouter()


class StudioTraining(TrainingFields):
    """A training request for a studio dataset: the service's bounded fields plus the gate's override."""

    trigger: str = Field(default="", pattern=r"^([A-Za-z0-9_]{2,64})?$", description="empty = the dataset's trigger")
    override_reason: str = Field(default="", max_length=500, description="why to train despite audit errors")
    config_yaml: str = Field(default="", max_length=64 * 1024,
                             description="the Advanced tab's YAML: a whole training config; its values win over the fields")
    options: dict[str, bool | int | float | str | None] = Field(
        default_factory=dict, max_length=16,
        description="the form's family fields as 'section.key': value (studio/trainform.py FAMILY_OPTIONS)")


# Keys the server decides: the served base model, the staged dataset, where the run is written,
# caches and debug switches. YAML from the Advanced tab may not change them from their defaults.
SERVER_KEYS = {"model": ("path", "revision", "variant"), "data": ("datasets", "regularization"),
               "train": ("method", "cache", "cache_dir", "debug_nan_at_steps", "debug_stop_after_step")}
YAML_SECTIONS = ("data", "network", "train", "sample", "save", "logging", "flux", "validation")


def parse_config(text: str):  # noqa: ANN201 - TrainConfig, imported lazily
    """YAML text -> the typed training config, or a 422 with the CLI's message ('did you mean ...')."""
    import yaml

    from lorastudio.config.loader import format_validation_error
    from lorastudio.config.train import TrainConfig

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ApiError(422, "bad_yaml", f"not valid YAML: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "bad_yaml", "the config must be a YAML mapping")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_config", format_validation_error(TrainConfig, exc, "YAML tab")[:4000]) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_config", str(exc)[:1000]) from None


def yaml_overrides(text: str, family: str) -> tuple[dict, dict]:
    """The Advanced tab's config as (per-section values the worker merges into its config, the form
    fields they imply); refuses a different family and any change to a key the server decides."""
    from lorastudio.config.train import FAMILY_DEFAULTS, TrainConfig

    cfg = parse_config(text)
    if cfg.model.family != family:
        raise ApiError(422, "wrong_family", f"model.family: this server trains '{family}' models, the YAML says "
                                            f"'{cfg.model.family}'")
    given = cfg.model_dump(mode="json")
    default = TrainConfig.model_validate(FAMILY_DEFAULTS[family]).model_dump(mode="json")
    if given["output_dir"] != default["output_dir"]:
        raise ApiError(422, "server_key", "output_dir is decided by the server (each run has its own folder); "
                                          "remove it from the YAML")
    for section, keys in SERVER_KEYS.items():
        for key in keys:
            if given[section][key] != default[section][key]:
                raise ApiError(422, "server_key", f"{section}.{key} is decided by the server; remove it from the YAML")
    overrides = {section: {k: v for k, v in given[section].items() if k not in SERVER_KEYS.get(section, ())}
                 for section in YAML_SECTIONS}
    if cfg.train.max_steps is None:
        raise ApiError(422, "invalid_config", "train.max_steps: the studio trains by steps; set it (epochs are not used)")
    fields = {"steps": cfg.train.max_steps, "rank": cfg.network.rank, "learning_rate": cfg.train.lr,
              "checkpoint_every": cfg.save.every_n_steps}
    return overrides, fields


def audit_gate(folder) -> dict:  # noqa: ANN001
    """What the latest audit says about training now: ok, or the reason it is blocked."""
    latest = ds.load_audit(folder)
    if latest is None:
        return {"ok": False, "reason": "the dataset has not been audited", "errors": None}
    errors = latest["counts"]["error"]
    return {"ok": errors == 0, "reason": f"the latest audit has {errors} error(s)" if errors else "",
            "errors": errors, "audit_id": latest["audit_id"]}


def stage_run(data_dir, folder, run_id: str) -> int:  # noqa: ANN001
    """Copy processed images + sidecars (rejected images left out) into the run's raw/ folder; returns the count."""
    from lorastudio.data.manifest import REJECTED_FLAG

    raw = data_dir / "datasets" / run_id / "raw"
    raw.mkdir(parents=True)
    count = 0
    for record in ds.records(folder):
        if REJECTED_FLAG in record.get("flags", []):
            continue
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
    config = None
    if body.config_yaml.strip():  # the Advanced tab: its values replace the form's, within the same bounds
        config, implied = await run_in_threadpool(yaml_overrides, body.config_yaml, settings.family)
        try:
            body = StudioTraining.model_validate({**body.model_dump(), **implied})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ApiError(422, "out_of_bounds", f"{first['loc'][-1]}: {first['msg']} (this service's limit)") from None
    options = {}
    if body.options and config is None:  # the Advanced tab's YAML is a whole config: it replaces the form's options
        try:
            options = await run_in_threadpool(trainform.option_overrides, body.options, settings.family)
        except trainform.OptionError as exc:
            raise ApiError(422, "invalid_option", str(exc)) from None
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
    fields = body.model_dump(exclude={"override_reason", "config_yaml", "options"})
    fields["trigger"] = fields["trigger"] or ds.trigger_of(folder) or ""
    if not fields["trigger"]:
        raise ApiError(422, "no_trigger", "the dataset has no trigger word; give one")
    params = {**fields, "run_id": run_id, "dataset": dataset_id, "images": images,
              "override_reason": body.override_reason.strip() or None}
    if config is not None:
        params["config"] = config
    if options:
        params["options"] = options
    job, _ = await run_in_threadpool(lambda: store.submit("train", caller.key_id, params, priority=body.priority,
                                                          max_attempts=3))
    return {**await run_in_threadpool(job_view, store, job), "lora_id": body.lora_id}


@router.get("/v1/jobs/{job_id}/samples/{step}/{name}")
async def job_sample(job_id: str, step: int, name: str, request: Request,
                     caller: Caller = Depends(require("generate"))):
    """One sample image a training job rendered at `step` (the Run page shows them as `sample` events arrive)."""
    import re

    from fastapi.responses import Response

    job = await run_in_threadpool(request.app.state.store.get, job_id, caller.owner_filter())
    run_id = str((job.params or {}).get("run_id", "")) if job is not None else ""
    if job is None or job.kind != "train" or not re.fullmatch(r"[0-9a-f]{32}", run_id) \
            or not re.fullmatch(r"\d{1,4}\.png", name) or step < 0:
        raise ApiError(404, "not_found", "no such sample")
    base = request.app.state.settings.data_dir / "datasets" / run_id / "run" / "samples"
    try:
        data = await run_in_threadpool(ds.read_contained, base, f"step_{step}/{name}")
    except ds.StudioError:
        raise ApiError(404, "not_found", "no such sample") from None
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


LOG_CHUNK = 64 * 1024


def job_log(data_dir, job):  # noqa: ANN001, ANN201 - Path | None
    """The log a job's child processes write: train.log of its run, or its caption/evaluate log."""
    import re

    run_id = str((job.params or {}).get("run_id", ""))
    if job.kind == "train" and re.fullmatch(r"[0-9a-f]{32}", run_id):
        return data_dir / "datasets" / run_id / "train.log"
    if job.kind in ("caption", "evaluate") and re.fullmatch(r"[0-9a-f]{32}", job.id):
        folder, name = ("captions", "caption.log") if job.kind == "caption" else ("evaluations", "evaluate.log")
        return data_dir / folder / job.id / name
    return None


def read_log(data_dir, job, offset: int) -> tuple[str, int] | tuple[None, int]:  # noqa: ANN001
    """(text from byte `offset` on, at most LOG_CHUNK; the offset to ask for next). A negative offset
    is the tail. The server's own folder is shown as `<data>`: a log never hands out server paths.
    (None, 0) when the job has no log (yet)."""
    log = job_log(data_dir, job)
    if log is None or not log.is_file() or log.is_symlink():
        return None, 0
    size = log.stat().st_size
    start = max(0, size + offset) if offset < 0 else (offset if offset <= size else 0)  # a shorter file: a new log
    with open(log, "rb") as handle:
        handle.seek(start)
        data = handle.read(LOG_CHUNK)
    cut = data.rfind(b"\n") + 1 if len(data) == LOG_CHUNK else len(data)  # whole lines only, unless one is huge
    data = data[:cut or len(data)]
    return redact(data.decode("utf-8", "replace"), data_dir), start + len(data)


def redact(text: str, data_dir) -> str:  # noqa: ANN001
    """`text` with the server's data folder shown as `<data>`: no server path reaches a page."""
    return text.replace(str(data_dir.resolve()), "<data>").replace(str(data_dir), "<data>")


def run_record(data_dir, job) -> dict | None:  # noqa: ANN001
    """A training run's resolved config (the data folder shown as `<data>`) and the sha256 of every
    file of its final adapter, else of its newest complete checkpoint (their COMPLETE.json)."""
    import json
    import re

    from lorastudio.serving.runners import complete_steps

    run_id = str((job.params or {}).get("run_id", ""))
    if job.kind != "train" or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        return None
    run = data_dir / "datasets" / run_id / "run"
    config = run / "config.resolved.yaml"
    out: dict = {"config": None, "complete": None}
    if config.is_file() and not config.is_symlink():
        out["config"] = redact(config.read_text(encoding="utf-8", errors="replace")[:LOG_CHUNK], data_dir)
    folders = [run / "final", *(run / "checkpoints" / f"step_{s}" for s in reversed(complete_steps(run / "checkpoints")))]
    for folder in folders:
        marker = folder / "COMPLETE.json"
        if marker.is_file() and not marker.is_symlink() and not folder.is_symlink():
            record = json.loads(marker.read_text(encoding="utf-8"))
            out["complete"] = {"where": "final" if folder.name == "final" else folder.name.replace("_", " "),
                               "step": record.get("step"), "files": dict(sorted((record.get("files") or {}).items()))}
            break
    return out if out["config"] or out["complete"] else None


@router.get("/v1/jobs/{job_id}/log")
async def job_log_text(job_id: str, request: Request, offset: int = 0, caller: Caller = Depends(require("generate"))):
    """A job's log from byte `offset` (the job page polls this while the job runs: the log view streams)."""
    from lorastudio.serving.store import TERMINAL

    job = await run_in_threadpool(request.app.state.store.get, job_id, caller.owner_filter())
    if job is None:
        raise ApiError(404, "not_found", "no such job")
    text, end = await run_in_threadpool(read_log, request.app.state.settings.data_dir, job, offset)
    return {"text": text or "", "offset": end if text is not None else offset, "done": job.status in TERMINAL}


def sample_prompts(job) -> list:  # noqa: ANN001
    """The sample prompts a training job's config gives its trainer (none: nothing to render)."""
    return list(((job.params or {}).get("config") or {}).get("sample", {}).get("prompts") or [])


async def ask_trainer(request: Request, caller: Caller, job_id: str, event: str, doing: str, need_prompts: bool) -> dict:
    """Leave `event` for the worker running this training job, which signals its trainer."""
    store = request.app.state.store
    job = await run_in_threadpool(store.get, job_id, caller.owner_filter())
    if job is None or job.kind != "train":
        raise ApiError(404, "not_found", "no such training job")
    if job.status != "running":
        raise ApiError(409, "not_running", f"the training job is {job.status}; {doing} only while it runs")
    if need_prompts and not sample_prompts(job):
        raise ApiError(409, "no_sample_prompts", "this run has no sample prompts; set sample.prompts in the YAML tab")
    await run_in_threadpool(store.add_event, job.id, event, {"by": caller.key_id})
    return {"id": job.id, "asked": True}


@router.post("/v1/jobs/{job_id}/sample-now", status_code=202)
async def sample_now(job_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """Ask a running training job to render its sample prompts after its next step."""
    from lorastudio.serving.trace import SAMPLE_ASKED

    return await ask_trainer(request, caller, job_id, SAMPLE_ASKED, "samples render", need_prompts=True)


@router.post("/v1/jobs/{job_id}/save-now", status_code=202)
async def save_now(job_id: str, request: Request, caller: Caller = Depends(require("train"))):
    """Ask a running training job to write a checkpoint after its next step (it keeps training)."""
    from lorastudio.serving.trace import SAVE_ASKED

    return await ask_trainer(request, caller, job_id, SAVE_ASKED, "a checkpoint is saved", need_prompts=False)


def run_checkpoints(data_dir, job) -> dict | None:  # noqa: ANN001
    """A training job's complete checkpoints (steps) and `lorastudio evaluate`'s recommendation, if it ran."""
    import json
    import re

    run_id = str((job.params or {}).get("run_id", ""))
    if job.kind != "train" or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        return None
    from lorastudio.serving.runners import complete_steps

    run = data_dir / "datasets" / run_id / "run"
    steps = complete_steps(run / "checkpoints")
    recommended = None
    evaluation = run / "evaluation.json"
    if evaluation.is_file() and not evaluation.is_symlink():
        rec = json.loads(evaluation.read_text(encoding="utf-8")).get("recommendation") or {}
        if rec.get("step") is not None:
            recommended = {"step": int(rec["step"]), "scale": rec.get("scale"), "reason": rec.get("reason", "")}
    return {"job": job.id, "lora_id": job.params.get("lora_id"), "steps": steps, "recommended": recommended}


@router.get("/v1/jobs/{job_id}/checkpoints")
async def checkpoints(job_id: str, request: Request, caller: Caller = Depends(require("generate"))):
    """The run's checkpoints and the recommended one (from the run's evaluation.json)."""
    job = await run_in_threadpool(request.app.state.store.get, job_id, caller.owner_filter())
    found = await run_in_threadpool(run_checkpoints, request.app.state.settings.data_dir, job) if job else None
    if found is None:
        raise ApiError(404, "not_found", "no such training job")
    return found


@router.post("/v1/jobs/{job_id}/checkpoints/{step}/lora")
async def checkpoint_lora(job_id: str, step: int, request: Request, caller: Caller = Depends(require("train"))):
    """Register one checkpoint as the LoRA `<lora_id>-s<step>` (the Compare grid's columns); idempotent."""
    from lorastudio.serving.routes.loras import register_file
    from lorastudio.serving.uploads import UploadError

    settings, store = request.app.state.settings, request.app.state.store
    job = await run_in_threadpool(store.get, job_id, caller.owner_filter())
    found = await run_in_threadpool(run_checkpoints, settings.data_dir, job) if job else None
    if found is None or step not in found["steps"]:
        raise ApiError(404, "not_found", "no such checkpoint")
    lora_id = f"{found['lora_id']}-s{step}"[:64]
    existing = await run_in_threadpool(store.get_lora, lora_id)
    if existing is not None:
        return existing
    source = settings.data_dir / "datasets" / job.params["run_id"] / "run" / "checkpoints" / f"step_{step}" / "lora.safetensors"
    tmp = settings.data_dir / "tmp" / f"{uuid.uuid4().hex}.upload"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    await run_in_threadpool(shutil.copyfile, source, tmp)
    try:
        return await run_in_threadpool(register_file, settings, store, tmp, lora_id, caller.key_id)
    except UploadError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


@router.post("/v1/jobs/{job_id}/evaluations", status_code=202)
async def evaluate_run(job_id: str, body: EvaluationRequest, request: Request,
                       caller: Caller = Depends(require("train"))):
    """Queue an `evaluate` job on a finished training run: scores every checkpoint and writes the
    recommendation the Compare page marks (one evaluation of a run at a time)."""
    from lorastudio.studio import evaluating

    settings, store = request.app.state.settings, request.app.state.store
    job = await run_in_threadpool(store.get, job_id, caller.owner_filter())
    if job is None or job.kind != "train":
        raise ApiError(404, "not_found", "no such training job")
    if await run_in_threadpool(evaluating.run_folder, settings.data_dir, job) is None:
        raise ApiError(409, "not_evaluable", f"the training job is {job.status}; only a succeeded run can be evaluated")
    if await run_in_threadpool(evaluating.busy, store, job.id):
        raise ApiError(409, "busy", "an evaluation of this run is already queued or running")
    await run_in_threadpool(admit, request, caller)
    params = {**body.model_dump(), "train_job": job.id, "run_id": job.params["run_id"],
              "lora_id": job.params.get("lora_id")}
    new, _ = await run_in_threadpool(lambda: store.submit("evaluate", caller.key_id, params, max_attempts=1))
    return await run_in_threadpool(job_view, store, new)


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
    from lorastudio.config.loader import commented_yaml

    return {"ok": True, "yaml": commented_yaml(await run_in_threadpool(parse_config, body.yaml))}
