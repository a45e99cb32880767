"""Find the input images of `prepare`: walk folders, read kohya folder names and sidecars.

Walking never leaves the folder the user named: a symlink whose target resolves outside
that root is recorded as rejected, not followed. Anything that is not a regular file
(FIFOs, sockets, devices) is rejected without being opened, so a named pipe called
`photo.jpg` cannot hang the run.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"})
SIDECAR_EXTENSIONS = (".txt", ".caption")  # kohya's two caption conventions, in lookup order
# Photo formats people do have in their folders that we do not decode; named so the hint is useful.
KNOWN_UNSUPPORTED = {
    ".heic": "HEIC/HEIF needs a converter (e.g. pillow-heif); convert to JPEG first",
    ".heif": "HEIC/HEIF needs a converter (e.g. pillow-heif); convert to JPEG first",
    ".dng": "camera RAW files must be developed to JPEG/PNG/TIFF first",
    ".cr2": "camera RAW files must be developed to JPEG/PNG/TIFF first",
    ".nef": "camera RAW files must be developed to JPEG/PNG/TIFF first",
    ".arw": "camera RAW files must be developed to JPEG/PNG/TIFF first",
    ".psd": "export layered files to PNG first",
    ".svg": "vector images must be rasterised first",
}
MAX_SIDECAR_BYTES = 64 * 1024
_KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass
class Candidate:
    """One input file that looks like an image."""

    path: Path  # where to read it (inside the root, symlinks already checked)
    source: str  # the path as the user would write it: the given root joined with the relative path
    repeats: int = 1
    role: str = "train"


@dataclass
class Discovery:
    """What the walk found: candidates to decode and inputs rejected on sight."""

    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)


def kohya_repeats(parts: list[str]) -> int:
    """Repeats from the nearest enclosing `N_name` folder (innermost wins), else 1."""
    for name in reversed(parts):
        match = _KOHYA_FOLDER.match(name)
        if match and int(match.group(1)) > 0:
            return int(match.group(1))
    return 1


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def discover(inputs: list[str], role: str, exclude: list[Path], found: Discovery | None = None) -> Discovery:
    """Walk `inputs` (folders recursively, or single files) and classify every entry."""
    found = found if found is not None else Discovery()
    excluded = {os.path.realpath(p) for p in exclude}
    for given in inputs:
        real_root = os.path.realpath(given)
        if os.path.isfile(real_root):
            _classify_file(Path(given), given, [Path(real_root).parent.name], role, found, os.lstat(real_root))
            continue
        parts = [Path(real_root).name]
        _walk(Path(given), given, real_root, parts, role, excluded, set(), found)
    return found


def _walk(
    directory: Path,
    shown: str,
    real_root: str,
    parts: list[str],
    role: str,
    excluded: set[str],
    visited: set[str],
    found: Discovery,
) -> None:
    real_dir = os.path.realpath(directory)
    if real_dir in visited or real_dir in excluded:
        return
    visited.add(real_dir)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        found.rejected.append({"source": shown, "reason": "unreadable", "detail": exc.strerror or str(exc)})
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue  # hidden files and folders (.git, .DS_Store, our own temp files)
        entry_shown = os.path.join(shown, entry.name)
        path = Path(entry.path)
        if entry.is_symlink():
            target = os.path.realpath(path)
            if not _inside(target, real_root):
                found.rejected.append(
                    {"source": entry_shown, "reason": "symlink_outside_root", "detail": "link target is outside the input folder; not followed"}
                )
                continue
        try:
            info = os.stat(path)
        except OSError as exc:
            found.rejected.append({"source": entry_shown, "reason": "unreadable", "detail": exc.strerror or str(exc)})
            continue
        if stat.S_ISDIR(info.st_mode):
            _walk(path, entry_shown, real_root, parts + [entry.name], role, excluded, visited, found)
        else:
            _classify_file(path, entry_shown, parts, role, found, info)


def _classify_file(path: Path, shown: str, parts: list[str], role: str, found: Discovery, info: os.stat_result) -> None:
    ext = path.suffix.lower()
    if ext in SIDECAR_EXTENSIONS:
        return  # captions are read beside their image, not ingested on their own
    if not stat.S_ISREG(info.st_mode):
        found.rejected.append({"source": shown, "reason": "not_a_regular_file", "detail": "FIFO, socket or device; not opened"})
    elif ext in KNOWN_UNSUPPORTED:
        found.rejected.append({"source": shown, "reason": "unsupported_format", "detail": KNOWN_UNSUPPORTED[ext]})
    elif ext not in IMAGE_EXTENSIONS:
        found.rejected.append({"source": shown, "reason": "unsupported_extension", "detail": f"'{ext or '(none)'}' is not an image extension"})
    else:
        found.candidates.append(Candidate(path=path, source=shown, repeats=kohya_repeats(parts), role=role))


def read_sidecar_caption(image_path: Path) -> tuple[str | None, list[str]]:
    """The caption in `photo.txt` / `photo.caption` beside an image, and any flags.

    Returns (None, ["caption_not_utf8"]) for a sidecar in another encoding: guessing the
    codec could turn Korean text into mojibake that then trains into the LoRA.
    """
    for ext in SIDECAR_EXTENSIONS:
        side = image_path.with_suffix(ext)
        try:
            if not side.is_file():
                continue
            if os.path.dirname(os.path.realpath(side)) != os.path.realpath(image_path.parent):
                continue
            with open(side, "rb") as fh:
                raw = fh.read(MAX_SIDECAR_BYTES + 1)
        except OSError:
            return None, ["caption_unreadable"]
        if len(raw) > MAX_SIDECAR_BYTES:
            return None, ["caption_too_large"]
        try:
            text = raw.decode("utf-8-sig").strip()
        except UnicodeDecodeError:
            return None, ["caption_not_utf8"]
        return (" ".join(text.split()) or None), []
    return None, []
