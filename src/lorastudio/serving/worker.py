"""A worker process: one per device. It owns the pipelines and the LoRA cache, claims jobs
from the store one at a time, renews their lease while it works and records a trace.

    python -m lorastudio.serving.worker --db URL --data DIR --worker-id w0 --model PATH --family sd15

Adapters are job parameters: each registered LoRA is loaded once as a named adapter, kept in
an LRU of `--lora-cache` adapters, and selected per job (a job without LoRAs runs every
loaded adapter at scale 0, which leaves the base weights' output bit for bit). `--fake`
replaces the model with a timing stand-in (no torch) for load tests of the service itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from lorastudio.serving.files import StorageFull
from lorastudio.serving.store import JobStore
from lorastudio.serving.trace import JobCanceled, JobFailed, Trace

log = logging.getLogger("lorastudio.worker")


def _peak_memory(device: str) -> dict:
    import resource

    peak = {"rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda"):
        import torch

        peak["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    return peak


class Worker:
    """Claims and runs jobs until told to stop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store = JobStore(args.db)
        self.data = Path(args.data)
        self.id, self.device = args.worker_id, args.device
        self.stop = threading.Event()
        self.runner = None

    def beat(self, state: str) -> None:
        """The worker's own heartbeat row (readiness)."""
        self.store.worker_seen(self.id, pid=os.getpid(), host=socket.gethostname(), device=self.device, state=state)

    def run(self) -> None:
        """Load the model, then claim and run jobs until SIGTERM."""
        self.beat("loading")
        from lorastudio.serving.runners import FakeRunner, PipelineRunner

        cls = FakeRunner if self.args.fake else PipelineRunner
        self.runner = cls(self.args, self.store, self.data)
        self.beat("ready")
        last_beat = 0.0
        while not self.stop.is_set():
            if time.time() - last_beat > 1.0:
                self.beat("ready")
                self.store.reap()
                last_beat = time.time()
            job = self.store.claim(self.id, self.args.lease)
            if job is None:
                self.stop.wait(self.args.poll)
                continue
            self.execute(job)
        self.beat("stopping")
        self.store.forget_worker(self.id)

    def _keep_lease(self, job_id: str, done: threading.Event) -> None:
        while not done.wait(self.args.lease / 3):
            if not self.store.heartbeat(job_id, self.id, self.args.lease):
                return
            self.beat("busy")

    def execute(self, job: Any) -> None:
        """Run one claimed job and record how it ended."""
        trace = Trace(job.id, log)
        trace.add("queue_wait", ms=round((job.started_at - job.created_at) * 1000, 2), worker=self.id,
                  attempt=job.attempts)
        done = threading.Event()
        keeper = threading.Thread(target=self._keep_lease, args=(job.id, done), daemon=True)
        keeper.start()
        self.beat("busy")
        try:
            result = self.runner.run(job, trace)
            trace.add("memory", **_peak_memory(self.device))
            self.store.finish(job.id, self.id, "succeeded", result=result, trace=trace.entries)
        except JobCanceled as exc:
            trace.add("canceled", **(exc.result or {}))
            self.store.finish(job.id, self.id, "canceled", result=exc.result, trace=trace.entries)
        except StorageFull:
            trace.add("failed", code="storage_full")
            self.store.finish(job.id, self.id, "failed", error=("storage_full", "the data volume is full"),
                              trace=trace.entries)
        except JobFailed as exc:
            trace.add("failed", code=exc.code, message=str(exc))
            self.store.finish(job.id, self.id, "failed", error=(exc.code, str(exc)), trace=trace.entries)
        except Exception as exc:  # any other failure fails the job, never the worker
            code = "oom" if _is_oom(exc) else "internal"
            log.error(json.dumps({"job_id": job.id, "error": code, "traceback": traceback.format_exc()}))
            if code == "oom":
                self.runner.release_memory()
            message = "out of memory for this request" if code == "oom" else "the worker failed on this job"
            trace.add("failed", code=code)
            self.store.finish(job.id, self.id, "failed", error=(code, message), trace=trace.entries)
        finally:
            done.set()
            keeper.join(timeout=5)
            self.beat("ready")


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lorastudio.serving.worker")
    parser.add_argument("--db", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--model", default="")
    parser.add_argument("--family", default="sd15")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--lora-cache", type=int, default=4)
    parser.add_argument("--controlnet", default="", help="canny ControlNet folder or hub id for enhance")
    parser.add_argument("--fake", action="store_true", help="timing stand-in: no model, no torch")
    parser.add_argument("--fake-step-s", type=float, default=0.01)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: JSON-line logs on stderr, SIGTERM finishes the current job, then exits."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    worker = Worker(args)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    worker.run()


if __name__ == "__main__":
    main()
