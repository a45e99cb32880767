"""Write and check `requirements.lock`, the exact versions the test suite passed with.

    python tools/lock.py freeze requirements.lock   # from the running venv (`make lock`)
    python tools/lock.py check requirements.lock    # does this venv hold exactly that set?

The lock is a pip constraints file: `make setup` installs through it with `-c`, so a fresh
clone gets the tested set whatever has been released since. torch is written without its
local tag (2.13.0, not 2.13.0+cpu) so the same line admits the CPU and the CUDA build.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as metadata
import platform
import re
import sys
from pathlib import Path

SELF = "lorastudio"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """{canonical name: version} of every distribution in this environment but lorastudio."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and _canonical(name) != SELF:
            found[_canonical(name)] = dist.version.split("+", 1)[0]
    return found


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: version} from a lock file's `name==version` lines."""
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}:{number}: expected name==version, got '{line}'")
        pins[_canonical(name)] = version.strip()
    return pins


def freeze(path: Path) -> None:
    pins = installed()
    header = [
        "# The exact set `make test` passed with: every dependency, transitive ones included.",
        "# A pip constraints file; `make setup` installs through it. Regenerate with `make lock`",
        "# (installs the newest versions pyproject allows, runs the suite, then writes this file).",
        f"# Written {dt.date.today().isoformat()} on Python {platform.python_version()} ({platform.machine()}).",
    ]
    body = [f"{name}=={version}" for name, version in sorted(pins.items())]
    path.write_text("\n".join(header + body) + "\n", encoding="utf-8")
    print(f"wrote {path}: {len(body)} pinned distributions")


def check(path: Path) -> int:
    pins, have = read_lock(path), installed()
    wrong = [f"{n} {have[n]} installed, lock says {v}" for n, v in sorted(pins.items()) if n in have and have[n] != v]
    missing = [f"{n}=={v} not installed" for n, v in sorted(pins.items()) if n not in have]
    extra = sorted(set(have) - set(pins))
    for line in wrong + missing:
        print(f"lock mismatch: {line}", file=sys.stderr)
    if extra:
        print(f"note: installed but not in {path} (left alone): {', '.join(extra)}", file=sys.stderr)
    if wrong or missing:
        print(f"this venv differs from {path}; `make clean setup` rebuilds it from the lock", file=sys.stderr)
        return 1
    print(f"venv matches {path} ({len(pins)} distributions)")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("freeze", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "freeze":
        freeze(Path(argv[1]))
        return 0
    return check(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
