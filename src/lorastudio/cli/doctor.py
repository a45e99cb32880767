"""`lorastudio doctor`: what is installed, what this machine can do, and what to fix."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path

import click

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _torch_facts() -> dict:
    from lorastudio.environment import cpu_bf16_flags

    try:
        import torch
    except Exception as exc:  # a broken torch install is exactly what doctor must report
        return {"error": f"torch does not import: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    facts = {"version": torch.__version__, "cuda_build": torch.version.cuda, "cuda": torch.cuda.is_available(),
             "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
             "devices": [], "cpu_bf16": cpu_bf16_flags()}
    if facts["cuda"]:
        for index in range(torch.cuda.device_count()):
            facts["devices"].append({"name": torch.cuda.get_device_name(index),
                                     "bf16": bool(torch.cuda.is_bf16_supported())})
    return facts


def _cache_facts() -> dict:
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    existing = next((p for p in (cache, *cache.parents) if p.exists()), Path("/"))
    return {"hub_cache": str(cache), "free_gb": round(shutil.disk_usage(existing).free / 1e9, 1),
            "offline": bool(constants.HF_HUB_OFFLINE)}


def gather() -> dict:
    """Everything doctor reports, as one JSON-ready dict."""
    from lorastudio import __version__
    from lorastudio.environment import CORE, EXTRAS, incompatibilities, version_of

    return {
        "lorastudio": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": _torch_facts(),
        "packages": {name: version_of(name) for name in CORE},
        "extras": {name: version_of(name) for name in EXTRAS},
        "cache": _cache_facts(),
        "chromium": next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None),
        "problems": [p.message for p in incompatibilities()],
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(as_json: bool) -> None:
    """Print Python, torch (CPU / CUDA / MPS, devices, bf16), library and extra versions, the
    model cache and its free disk, and whether Chromium is there; then check the combinations
    known to fail at run time and say exactly what to run. Exits 1 when one is found.

    \b
    Every other command runs the same check at start and stops with the same one line,
    so a bad install never surfaces as a traceback from inside a dependency.
    """
    from lorastudio.environment import EXTRAS

    facts = gather()
    if as_json:
        click.echo(json.dumps(facts, indent=2, sort_keys=True))
    else:
        torch = facts["torch"]
        click.echo(f"lorastudio {facts['lorastudio']}")
        click.echo(f"python     {facts['python']}")
        click.echo(f"platform   {facts['platform']}")
        if "error" in torch:
            click.echo(f"torch      {torch['error']}")
        else:
            cuda = (f"CUDA {torch['cuda_build']}, {len(torch['devices'])} device(s)" if torch["cuda"]
                    else f"no CUDA device (build: {torch['cuda_build'] or 'CPU only'})")
            click.echo(f"torch      {torch['version']}: {cuda}; MPS {'yes' if torch['mps'] else 'no'}; "
                       f"CPU bf16 instructions: {', '.join(torch['cpu_bf16']) or 'none'}")
            for device in torch["devices"]:
                click.echo(f"  device   {device['name']} (bf16 {'yes' if device['bf16'] else 'no'})")
        for name, version in facts["packages"].items():
            if name != "torch":
                click.echo(f"{name:<16} {version or 'NOT INSTALLED'}")
        for name, version in facts["extras"].items():
            click.echo(f"extra {name:<13} {version or 'not installed: ' + EXTRAS[name]}")
        cache = facts["cache"]
        click.echo(f"model cache {cache['hub_cache']} ({cache['free_gb']} GB free"
                   f"{', HF_HUB_OFFLINE=1' if cache['offline'] else ''})")
        click.echo(f"chromium   {facts['chromium'] or 'not found (web studio browser checks and report screenshots skip)'}")
        if facts["problems"]:
            for problem in facts["problems"]:
                click.echo(f"PROBLEM: {problem}")
        else:
            click.echo("checks     no known-incompatible combination")
    if facts["problems"]:
        sys.exit(1)
