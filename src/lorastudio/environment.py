"""What is installed, and the combinations known to fail at run time.

Versions are read from package metadata (`importlib.metadata`), so `incompatibilities()` costs
milliseconds and imports nothing heavy: every command runs it before it starts, and a bad
combination fails with one line saying what to run instead of a traceback from deep inside
a dependency. `lorastudio doctor` prints the full picture.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

CORE = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "huggingface_hub")
# Optional extras: distribution name -> how to get it.
EXTRAS = {
    "onnxruntime": "pip install 'lorastudio[tagger]'  (WD14 tagger backend)",
    "bitsandbytes": "pip install bitsandbytes  (8-bit optimizers, CUDA only)",
    "tensorboard": "pip install 'lorastudio[tensorboard]'  (training curves)",
    "prodigyopt": "pip install prodigyopt  (Prodigy optimizer)",
}


@dataclass(frozen=True)
class Problem:
    """A known-incompatible combination and the command that fixes it."""

    message: str


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16 instruction sets (Linux), which make bf16 autocast fast on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")})


def version_of(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def parse_version(text: str) -> tuple[int, ...]:
    """(major, minor, patch) from a version string; local and pre-release tails are ignored."""
    numbers = re.match(r"(\d+(?:\.\d+)*)", text)
    return tuple(int(n) for n in numbers.group(1).split(".")) if numbers else ()


def _transformers_min_peft() -> str | None:
    """The peft version the installed transformers refuses to work below, read from its source.

    transformers keeps it as `MIN_PEFT_VERSION` in integrations/peft.py and checks it only
    when an adapter is added, deep inside a run; reading the file imports nothing.
    """
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "integrations" / "peft.py"
    try:
        found = re.search(r'^MIN_PEFT_VERSION\s*=\s*"([\d.]+)"', source.read_text(encoding="utf-8"), re.M)
    except OSError:
        return None
    return found.group(1) if found else None


def _peft_problem(transformers: str | None, peft: str | None) -> Problem | None:
    needed = _transformers_min_peft() if transformers else None
    if not (needed and peft) or parse_version(peft) >= parse_version(needed):
        return None
    return Problem(f"transformers {transformers} needs peft >= {needed}, but peft {peft} is installed (adding a "
                   f"LoRA would fail mid-run): run `pip install \"peft>={needed}\"`, or where no such peft is "
                   f"released yet, `pip install \"transformers<{transformers}\"` (`make setup` installs the tested set)")


def _torchvision_problem(torch: str | None, torchvision: str | None) -> Problem | None:
    # torchvision 0.(15 + m) pairs with torch 2.m; any other pairing fails at import
    # ("operator torchvision::nms does not exist") and takes transformers' image processors down.
    if not (torch and torchvision):
        return None
    t, v = parse_version(torch), parse_version(torchvision)
    if len(t) >= 2 and len(v) >= 2 and t[0] == 2 and (v[0], v[1]) != (0, t[1] + 15):
        return Problem(f"torchvision {torchvision} does not match torch {torch} (it pairs with torchvision "
                       f"0.{t[1] + 15}) and breaks transformers' image processors; lorastudio does not need it: "
                       "run `pip uninstall -y torchvision`")
    return None


def _requirement_problems() -> list[Problem]:
    """Installed versions outside the ranges lorastudio itself declares."""
    try:
        requires = metadata.requires("lorastudio") or []
    except metadata.PackageNotFoundError:
        return []
    problems = []
    for line in requires:
        if ";" in line:  # extras and markers: optional
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line)
        name, spec = match.group(1), match.group(2).strip()
        installed = version_of(name)
        if installed is None:
            problems.append(Problem(f"{name} is not installed: run `pip install \"{name}{spec}\"`"))
        elif spec and not _satisfies(installed, spec):
            problems.append(Problem(f"{name} {installed} is outside the tested range {spec}: "
                                    f"run `pip install \"{name}{spec}\"`"))
    return problems


def _satisfies(version: str, spec: str) -> bool:
    have = parse_version(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        op, wanted = re.match(r"(>=|<=|==|!=|<|>|~=)?\s*(.+)", clause).groups()
        want = parse_version(wanted)
        checks = {">=": have >= want, "<=": have <= want, "<": have < want, ">": have > want,
                  "==": have[:len(want)] == want, "!=": have[:len(want)] != want,
                  "~=": have >= want and have[:len(want) - 1] == want[:-1], None: have == want}
        if not checks[op]:
            return False
    return True


def incompatibilities() -> list[Problem]:
    """Every known-bad combination in this environment (empty when all is well)."""
    versions = {name: version_of(name) for name in ("torch", "torchvision", "transformers", "peft")}
    problems = [p for p in (_peft_problem(versions["transformers"], versions["peft"]),
                            _torchvision_problem(versions["torch"], versions["torchvision"])) if p]
    return problems + _requirement_problems()
