"""Evaluate jobs: `lorastudio evaluate` on a finished training run, started from the studio.

The Compare page marks the checkpoint `evaluate` recommends; a run trained from the studio
gets that mark by queueing an `evaluate` job here instead of running the CLI by hand. The
worker runs the real command as a child process on the run's own folder (its resolved config
names the base model and the staged dataset), so the figures, `evaluation.json` and
`report.html` are exactly the CLI's. The request carries only bounded values: prompts, scales,
seeds, steps and a size; the worker writes the prompts to a file in the job's own folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorastudio.studio import datasets as ds

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
SIZES = ("64x64", "256x256", "512x512", "768x768", "1024x1024")


class EvaluationRequest(BaseModel):
    """What to score: held-out prompts (they should not name the dataset's confounders, so a leak
    shows), LoRA scales (the base model, scale 0, is always added), seeds, denoising steps, size."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1, max_length=8, description="one to eight prompts")
    scales: list[float] = Field(default=[0.5, 0.75, 1.0], min_length=1, max_length=4)
    seeds: list[int] = Field(default=[1, 2], min_length=1, max_length=4)
    steps: int = Field(default=20, ge=1, le=50)
    size: str = Field(default="512x512", description="WxH, one of " + ", ".join(SIZES))

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[str]) -> list[str]:
        cleaned = [" ".join(p.split()) for p in value]
        if any(not p or len(p) > 300 for p in cleaned):
            raise ValueError("each prompt must be 1-300 characters on one line")
        return cleaned

    @field_validator("scales")
    @classmethod
    def _scales(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < s <= 2.0 for s in value):
            raise ValueError("scales must be in (0, 2]")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if any(not 0 <= s < 2**31 for s in value):
            raise ValueError("seeds must be in [0, 2^31)")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if value not in SIZES:
            raise ValueError("size must be one of " + ", ".join(SIZES))
        return value


def run_folder(data_dir: Path, job: Any) -> Path | None:
    """The run folder of a succeeded training job, or None when it has none to evaluate."""
    run_id = str((job.params or {}).get("run_id", ""))
    if job.kind != "train" or job.status != "succeeded" or not RUN_ID.match(run_id):
        return None
    run = Path(data_dir) / "datasets" / run_id / "run"
    if run.is_symlink() or not (run / "config.resolved.yaml").is_file():
        return None
    return run


def busy(store: Any, train_job_id: str) -> bool:
    """Whether an evaluate job on this run is queued or running (both would write evaluation.json)."""
    from lorastudio.serving.routes.admin import list_jobs

    return any((job.params or {}).get("train_job") == train_job_id
               for status in ("queued", "running") for job in list_jobs(store, None, status, "evaluate", 200))


def run_evaluation(runner: Any, job: Any, trace: Any) -> dict:
    """The worker side of an `evaluate` job: the `evaluate` command on the run folder, its log kept."""
    from lorastudio.serving.runners import _cli
    from lorastudio.serving.trace import JobFailed

    params = job.params
    if not RUN_ID.match(str(params.get("run_id", ""))):
        raise JobFailed("bad_request", "the job names no training run")
    run = runner.data / "datasets" / params["run_id"] / "run"
    work = runner.data / "evaluations" / job.id
    work.mkdir(parents=True, exist_ok=True)
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(params["prompts"]) + "\n", encoding="utf-8")
    log = work / "evaluate.log"
    argv = ["evaluate", str(run), "--prompts", str(prompts), "--scales", ",".join(str(s) for s in params["scales"]),
            "--seeds", ",".join(str(s) for s in params["seeds"]), "--steps", str(params["steps"]),
            "--size", params["size"], "--no-progress", "--device", getattr(runner, "device", "cpu") or "cpu"]
    with trace.span("evaluate", prompts=len(params["prompts"]), scales=params["scales"], seeds=params["seeds"]):
        code = _cli(runner, job, argv, work, log)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        raise JobFailed("evaluate_failed", f"evaluate exited with code {code}: {(tail or ['no output'])[0][:300]}")
    try:
        result = json.loads(ds.read_contained(run, "evaluation.json").decode("utf-8"))
    except (ds.StudioError, ValueError):
        raise JobFailed("evaluate_failed", "evaluate finished without writing evaluation.json") from None
    rec = result.get("recommendation") or {}
    summary = {k: rec.get(k) for k in ("checkpoint", "step", "scale", "reason")}
    trace.add("recommended", **summary)
    return {"train_job": params["train_job"], "recommendation": summary, "rows": len(result.get("rows", [])),
            "images": []}
