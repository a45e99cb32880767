"""Run an unmodified diffusers example script and time its optimizer steps.

Usage (inside the example's own venv, see benchmarks/example_setup.sh):
    .venv-example/bin/python benchmarks/example_timer.py EXAMPLE.py [example args ...]
    .venv/bin/python benchmarks/example_timer.py --lorastudio train CONFIG [...]

The script is run as `__main__` with `runpy`, byte for byte as fetched. Two things happen
around it, neither inside it:
- a clock on the "Steps" progress bar: the example calls `progress_bar.update(1)` once per
  optimizer step, so the gaps between updates are its step times (data loading, VAE and text
  encoding, UNet forward/backward, optimizer step: everything the example does per step);
- PyPI's Linux torchvision wheels are CUDA builds whose `_C` extension cannot load beside a
  CPU torch, and torchvision then fails at import registering fakes for two ops it never
  defined (`operator torchvision::nms does not exist`). Where `_C` does not load, the two op
  schemas are declared first so the import succeeds; the example only uses torchvision's
  PIL/tensor transforms, which do not touch `_C`.

`--lorastudio` runs `python -m lorastudio ...` the same way, clocking each call of
`lorastudio.training.recipe.train_step` (one optimizer step, data loading included).

At exit one JSON line goes to stdout: {"step_s": [...], "step_cpu_s": [...], "peak_rss_gb": ...}:
wall seconds per step, and the process's CPU seconds (all threads) per step, which other work on
a shared machine inflates far less than wall time.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import resource
import runpy
import sys
import time
from pathlib import Path

STEP_TIMES: list[float] = []
STEP_CPU: list[float] = []


def declare_torchvision_ops() -> str:
    """Declare torchvision::nms / qnms when its compiled extension cannot load; say what was done."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return "torchvision not installed"
    ext = Path(next(iter(spec.submodule_search_locations))) / "_C.so"
    try:
        torch.ops.load_library(str(ext))
        return "torchvision _C loaded"
    except (OSError, RuntimeError) as exc:
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        declare_torchvision_ops.lib = lib  # keep the registration alive
        return f"torchvision _C not loadable ({str(exc)[:80]}); nms/qnms schemas declared"


def clock_progress_bar() -> None:
    """Record the time of every update of the progress bar named "Steps"."""
    from tqdm import std

    update = std.tqdm.update
    last: dict[int, tuple[float, float]] = {}

    def timed_update(self, n=1):
        if getattr(self, "desc", "").startswith("Steps"):
            now = time.perf_counter(), time.process_time()
            key = id(self)
            if key in last:
                STEP_TIMES.append(now[0] - last[key][0])
                STEP_CPU.append(now[1] - last[key][1])
            last[key] = now
        return update(self, n)

    def timed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if getattr(self, "desc", "").startswith("Steps"):
            last[id(self)] = time.perf_counter(), time.process_time()

    init = std.tqdm.__init__
    std.tqdm.update = timed_update
    std.tqdm.__init__ = timed_init


def clock_lorastudio_steps() -> None:
    """Record wall and CPU time of every `train_step` call of lorastudio's training loop."""
    from lorastudio.training import recipe

    step = recipe.train_step

    def timed_step(session):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return step(session)
        finally:
            STEP_TIMES.append(time.perf_counter() - wall)
            STEP_CPU.append(time.process_time() - cpu)

    recipe.train_step = timed_step


def report() -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"step_s": STEP_TIMES, "step_cpu_s": STEP_CPU, "peak_rss_gb": peak}), flush=True)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: example_timer.py EXAMPLE.py [example args ...] | --lorastudio ARGS ...")
    if sys.argv[1] == "--lorastudio":
        clock_lorastudio_steps()
        atexit.register(report)
        sys.argv = ["lorastudio", *sys.argv[2:]]
        runpy.run_module("lorastudio", run_name="__main__", alter_sys=True)
        return
    script = Path(sys.argv[1]).resolve()
    if not script.is_file():
        raise SystemExit(f"{script}: no such example script")
    print(declare_torchvision_ops(), file=sys.stderr, flush=True)
    clock_progress_bar()
    atexit.register(report)
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
