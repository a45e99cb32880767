"""Is a weights file what its name claims? Checked before any loader touches it.

A `.safetensors` file is an 8-byte little-endian header length, a JSON header naming every
tensor's dtype, shape and byte range, then the raw bytes. Loaders fed something else (a
pickle renamed to `.safetensors`, an HTML error page saved by a download, a file cut short)
fail with "header too large" or an OSError deep inside a dependency. `read_header` checks the
whole layout without reading any tensor data and says in one line what the file is instead.

Pickle formats (`.ckpt`, `.pt`, `.pth`, `.bin`) can run code when loaded: `refuse_pickle`
turns them away unless the user opted in.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


class WeightsFileError(ValueError):
    """A weights file that is not what it claims; the message names the file and what it is."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    """The checked header of a safetensors file: tensor shapes and the string metadata."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def sniff(head: bytes) -> str | None:
    """What the first bytes of a file look like when they are not safetensors, or None."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it looks like a Python pickle (a .ckpt/.pt file under another name)"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive, which is how PyTorch saves .pt/.ckpt pickles"
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights (run `git lfs pull` where you cloned it)"
    if head.lstrip()[:1] == b"<":
        return "it looks like an HTML or XML page (a download that saved an error page?)"
    if head.startswith(b"GGUF"):
        return "it is a GGUF file"
    return None


def read_header(path: Path | str) -> SafetensorsHeader:
    """Check that `path` is a complete safetensors file and return its header.

    Raises WeightsFileError naming the file and what is wrong: a pickle or other format,
    a header that is not valid JSON, or data cut short (a truncated download).
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(64)
        length = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
        # A real header starts with "{" right after a length that fits; only otherwise is
        # the file sniffed (a length such as 0x0280 begins with the bytes of a pickle).
        plausible = 0 <= length <= min(MAX_HEADER_BYTES, size - 8) and head[8:9] == b"{"
        what = None if plausible else sniff(head)
        if what is not None:
            raise WeightsFileError(f"{path}: not a safetensors file: {what}")
        if len(head) < 8:
            raise WeightsFileError(f"{path}: not a safetensors file: only {size} bytes long")
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise WeightsFileError(f"{path}: not a safetensors file: its header length field ({length}) is larger "
                                   f"than the file ({size} bytes); the file is truncated or another format")
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsFileError(f"{path}: not a safetensors file: its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise WeightsFileError(f"{path}: not a safetensors file: its header is not a JSON object")
    return _checked(path, header, data_bytes=size - 8 - length)


def _checked(path: Path, header: dict, data_bytes: int) -> SafetensorsHeader:
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsFileError(f"{path}: safetensors metadata must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    needed = 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            itemsize = _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise WeightsFileError(f"{path}: not a valid safetensors file: bad header entry for '{name}'") from None
        if not 0 <= begin <= end or end - begin != math.prod(shape) * itemsize:
            raise WeightsFileError(f"{path}: not a valid safetensors file: '{name}' has inconsistent byte offsets")
        needed = max(needed, end)
        tensors[name] = TensorInfo(dtype, shape)
    if needed > data_bytes:
        raise WeightsFileError(f"{path}: truncated safetensors file: its tensors need {needed} bytes after the "
                               f"header, the file has {data_bytes} (an interrupted download or copy?)")
    return SafetensorsHeader(tensors, dict(metadata))


def is_pickle_path(path: Path | str) -> bool:
    """Whether the file name says it is a pickle-based checkpoint."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(path: Path | str, allow_pickle: bool, what: str = "file") -> None:
    """Raise unless the user opted in to loading a pickle-based `path`."""
    if is_pickle_path(path) and not allow_pickle:
        raise WeightsFileError(
            f"{path}: this {what} is a Python pickle ('{Path(path).suffix}'), which can run code when loaded; "
            "convert it to .safetensors, or pass --allow-pickle if you trust its source")
