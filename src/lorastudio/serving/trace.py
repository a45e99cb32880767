"""The per-job debug log and the two ways a job stops early (canceled, failed with a code).

A trace is a list of entries `{"stage", "t_ms", ...}`: queue wait, LoRA load (hit or miss),
text encode, every denoising step (time, timestep, latent mean/std, finite check), decode,
store, peak memory. Each entry is also logged as one JSON line carrying the job id, and the
whole list is stored with the job (`GET /v1/jobs/{id}/trace`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


SAMPLE_ASKED = "sample_asked"  # the event a "Sample now" request leaves for the worker running the job
SAVE_ASKED = "save_asked"  # and "Save now"


class JobCanceled(Exception):
    """Raised from the step callback when the job's owner canceled it; `result` is what the job
    kept (a stopped training run names the checkpoint it saved)."""

    def __init__(self, result: dict | None = None) -> None:
        super().__init__("canceled")
        self.result = result


class JobFailed(Exception):
    """A job that cannot run, with the error code the client sees."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Trace:
    """The job's debug log: named stages with timings plus free-form facts."""

    def __init__(self, job_id: str, log_to: logging.Logger) -> None:
        self.job_id, self.entries, self.log = job_id, [], log_to
        self.t0 = time.perf_counter()

    def add(self, stage: str, **data: Any) -> None:
        """Record an entry (and log it as one JSON line with the job id)."""
        entry = {"stage": stage, "t_ms": round((time.perf_counter() - self.t0) * 1000, 2), **data}
        self.entries.append(entry)
        self.log.info(json.dumps({"job_id": self.job_id, **entry}, default=str))

    def span(self, stage: str, **data: Any) -> "_Span":
        """A context manager that records the stage's duration."""
        return _Span(self, stage, data)


class _Span:
    def __init__(self, trace: Trace, stage: str, data: dict) -> None:
        self.trace, self.stage, self.data = trace, stage, data

    def __enter__(self) -> dict:
        self.start = time.perf_counter()
        return self.data

    def __exit__(self, *exc: Any) -> None:
        self.trace.add(self.stage, ms=round((time.perf_counter() - self.start) * 1000, 2), **self.data)


