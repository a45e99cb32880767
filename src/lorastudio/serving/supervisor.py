"""Starts the worker processes, restarts the ones that die, and hands back their jobs.

Runs as a thread inside the API process (which never imports torch itself): a worker found
dead has its running job re-queued once or failed with `worker_lost` at once, rather than
after its lease runs out, and a new worker takes its place. Leases of workers on other
hosts are reaped here too, and queued jobs past their deadline expire.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

log = logging.getLogger("lorastudio.serve")


class Supervisor:
    """One child process per device (`--devices cuda:0,cuda:1`) or `--workers N` on one device."""

    def __init__(self, settings: Any, store: Any) -> None:
        self.settings, self.store = settings, store
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def slots(self) -> list[tuple[str, str, dict]]:
        """(worker id, device, extra environment) for each worker to run."""
        if self.settings.devices:
            out = []
            for i, device in enumerate(self.settings.devices):
                index = device.split(":", 1)[1] if ":" in device else "0"
                out.append((f"w{i}-{device.replace(':', '')}", "cuda:0" if device.startswith("cuda") else device,
                            {"CUDA_VISIBLE_DEVICES": index} if device.startswith("cuda") else {}))
            return out
        return [(f"w{i}", "cpu", {}) for i in range(self.settings.workers)]

    def _spawn(self, worker_id: str, device: str, env: dict) -> subprocess.Popen:
        s = self.settings
        argv = [sys.executable, "-m", "lorastudio.serving.worker", "--db", s.db_url, "--data", str(s.data_dir),
                "--worker-id", worker_id, "--model", s.model, "--family", s.family, "--device", device,
                "--lease", str(s.lease_s), "--lora-cache", str(s.lora_cache)]
        if s.fake_workers:
            argv += ["--fake", "--fake-step-s", str(s.fake_step_s)]
        if s.controlnet:
            argv += ["--controlnet", s.controlnet]
        log_file = open(s.data_dir / f"worker-{worker_id}.log", "ab")
        return subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def start(self) -> None:
        """Spawn every worker and begin watching them."""
        for worker_id, device, env in self.slots():
            self.store.reap(worker_id=worker_id)  # a job left running by a previous server's worker
            self.procs[worker_id] = self._spawn(worker_id, device, env)
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        slots = {worker_id: (device, env) for worker_id, device, env in self.slots()}
        while not self._stop.wait(0.25):
            for worker_id, proc in list(self.procs.items()):
                if proc.poll() is None or self._stop.is_set():
                    continue
                handled = self.store.reap(worker_id=worker_id)
                self.store.forget_worker(worker_id)
                self.store.bump("worker_restarts")
                self.restarts += 1
                log.warning("worker %s exited with %s; restarting (jobs handed back: %s)", worker_id,
                            proc.returncode, handled)
                self.procs[worker_id] = self._spawn(worker_id, *slots[worker_id])
            try:
                self.store.reap()
                self.store.expire_overdue()
            except Exception:  # a transient database error must not end supervision
                log.exception("reaping failed; retrying")

    def pids(self) -> dict[str, int]:
        """Current worker pids (tests kill them)."""
        return {worker_id: proc.pid for worker_id, proc in self.procs.items()}

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (each finishes its job first), wait, then kill what is left."""
        self._stop.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.time() + timeout
        for worker_id, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.store.reap(worker_id=worker_id)  # its job goes back to the queue
