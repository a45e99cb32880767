"""What a client uploads, checked before anything trusts it: photos, dataset zips, LoRA files.

- Photos: JPEG, PNG or WebP by their magic bytes (not the name or the MIME type the client
  claims), the pixel count checked from the header before any decode, the first frame
  only, EXIF orientation applied, then re-encoded as PNG without EXIF or GPS.
- Zips: member names with `..`, absolute paths or drive letters, symlink members, more
  members, bytes or compression ratio than the caps allow are refused before extraction.
- LoRAs: the safetensors header is parsed (a pickle is refused whatever its extension),
  the key style must be one the workers apply, and the family must match the base model.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_ZIP_BYTES = 200 * 1024 * 1024  # uncompressed total
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_RATIO = 100
IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


class UploadError(ValueError):
    """A refused upload: `status` is the HTTP status, `code` the problem code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def sniff_image(data: bytes) -> str | None:
    """JPEG / PNG / WEBP from the magic bytes, else None."""
    for magic, name in IMAGE_MAGIC.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


@dataclass(frozen=True)
class CleanImage:
    """A photo re-encoded as PNG without metadata."""

    png: bytes
    width: int
    height: int


def clean_photo(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> CleanImage:
    """Validate and re-encode an uploaded photo (see the module docstring)."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise UploadError(422, "empty_image", "the image is empty")
    kind = sniff_image(data)
    if kind is None:
        raise UploadError(415, "unsupported_image", "images must be JPEG, PNG or WebP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(413, "too_many_pixels", f"{width}x{height} is over the {max_pixels} pixel limit")
            if image.format != kind:
                raise UploadError(415, "unsupported_image", "the image's bytes do not match a supported format")
            image.seek(0)  # animated WebP / APNG: the first frame only
            image.load()
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(413, "too_many_pixels", "the image has too many pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise UploadError(422, "corrupt_image", "the image is truncated or corrupt") from None
    out = io.BytesIO()
    upright.save(out, format="PNG")  # a fresh file: no EXIF, GPS, ICC or text chunks
    return CleanImage(out.getvalue(), upright.width, upright.height)


def _safe_member(name: str) -> PurePosixPath | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]) or "\x00" in name:
        return None
    return path


def extract_zip(data: bytes, dest: Path, *, max_bytes: int = MAX_ZIP_BYTES, max_members: int = MAX_ZIP_MEMBERS,
                max_ratio: int = MAX_ZIP_RATIO) -> list[Path]:
    """Extract a dataset zip into `dest` after checking every member; returns the files written."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UploadError(422, "bad_zip", "the dataset is not a zip file") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > max_members:
        raise UploadError(413, "zip_too_many_files", f"the zip has more than {max_members} files")
    total = 0
    for member in members:
        if _safe_member(member.filename) is None:
            raise UploadError(422, "zip_unsafe_path", f"zip member '{member.filename[:80]}' leaves the dataset folder")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UploadError(422, "zip_symlink", f"zip member '{member.filename[:80]}' is a symlink")
        total += member.file_size
        if member.compress_size and member.file_size / member.compress_size > max_ratio:
            raise UploadError(413, "zip_bomb", f"zip member '{member.filename[:80]}' expands more than {max_ratio}x")
    if total > max_bytes:
        raise UploadError(413, "zip_too_large", f"the zip expands to more than {max_bytes} bytes")
    written, budget = [], max_bytes
    dest.mkdir(parents=True, exist_ok=True)
    for member in members:
        target = dest / _safe_member(member.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as src, open(target, "wb") as out:
            while chunk := src.read(1 << 16):  # the sizes in the directory can lie: count real bytes
                budget -= len(chunk)
                if budget < 0:
                    raise UploadError(413, "zip_too_large", f"the zip expands to more than {max_bytes} bytes")
                out.write(chunk)
        written.append(target)
    return written


@dataclass(frozen=True)
class LoraInfo:
    """What registration learned from an adapter's header."""

    family: str
    format: str
    modules: int
    coverage: str = ""  # the importer's one-line report (Flux)


def base_cross_attention(model: str) -> int | None:
    """The served UNet's cross-attention width, read from its config (None for a hub id)."""
    import json

    config = Path(model) / "unet" / "config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("cross_attention_dim")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


def base_width(model: str) -> int | None:
    """The width a served model's LoRAs must match: the UNet's cross-attention width, or a Flux
    transformer's hidden width (heads x head dim); None when there is no local config."""
    import json

    config = Path(model) / "transformer" / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return base_cross_attention(model)
    width = data.get("num_attention_heads", 0) * data.get("attention_head_dim", 0)
    return width if isinstance(width, int) and width > 0 else None


def _inspect_flux(header, base_family: str, base_width: int | None) -> LoraInfo:  # noqa: ANN001
    """A FLUX.1 LoRA: every key must map to a module (the importer's rules), the width must fit."""
    from lorastudio.models.flux_formats import FluxLoraError, header_report

    if base_family != "flux":
        raise UploadError(422, "lora_family_mismatch", f"this LoRA is for flux and the served base model is {base_family}")
    try:
        report = header_report({k: v.shape for k, v in header.tensors.items()}, header.metadata)
    except FluxLoraError as exc:
        raise UploadError(422, "unsupported_lora", f"not a LoRA this FLUX.1 server can apply: {exc}") from None
    if base_width is not None and report.width is not None and report.width != base_width:
        raise UploadError(422, "lora_model_mismatch", f"this LoRA expects a FLUX transformer of width {report.width}; "
                          f"the served base model has {base_width} (it was made for another base model)")
    return LoraInfo("flux", report.layout, report.modules, report.line())


def _unet_family(keys: list[str], metadata: dict[str, str]) -> str | None:
    """sd15 / sd2 / sdxl for a LoRA with UNet keys (kohya or diffusers), None when it has none."""
    from lorastudio.models.kohya_keys import guess_family

    if any(k.startswith("lora_unet_") for k in keys):
        return guess_family([k.split(".", 1)[0] for k in keys], metadata)
    if any(k.startswith("unet.") for k in keys):
        return "sdxl" if any(k.startswith("text_encoder_2.") for k in keys) else "sd15"
    return None


def _lora_cross_attention(shapes: dict[str, tuple[int, ...]]) -> int | None:
    for key, shape in shapes.items():
        down = key.endswith((".lora_down.weight", ".lora_A.weight", ".lora.down.weight", "_lora.down.weight"))
        if down and "attn2" in key and ("to_k" in key or "to_v" in key) and len(shape) >= 2:
            return int(shape[1])
    return None


def inspect_lora(path: Path, base_family: str, base_width: int | None = None) -> LoraInfo:
    """Check an uploaded adapter file without loading a tensor (no torch in the API process).

    `base_width` is the served UNet's cross-attention width (Flux: the transformer's hidden
    width, see `base_width`): a LoRA whose projections expect another width was made for
    another base model. A Flux LoRA goes through the Flux importer's key mapping (every
    layout it reads; unmapped keys refused) and reports its coverage.
    """
    from lorastudio.models.flux_formats import looks_like_flux
    from lorastudio.models.kohya_keys import guess_family
    from lorastudio.models.lora_formats import COMPONENT_PREFIXES, detect_format
    from lorastudio.models.weights_file import WeightsFileError, read_header

    try:
        header = read_header(path)
    except WeightsFileError as exc:
        raise UploadError(422, "not_safetensors", str(exc).split(": ", 1)[-1]) from None
    if looks_like_flux(list(header.tensors)):
        return _inspect_flux(header, base_family, base_width)
    if base_family == "flux":
        unet_family = _unet_family(list(header.tensors), header.metadata)
        if unet_family is not None:
            raise UploadError(422, "lora_family_mismatch", f"this LoRA is for {unet_family} and the served base model is flux")
        return _inspect_flux(header, base_family, base_width)  # CLIP-only or unknown keys: the importer decides
    shapes = {k: v.shape for k, v in header.tensors.items()}
    fmt = detect_format(header.tensors, shapes, header.metadata)
    if not (fmt.readable or fmt.diffusers_loads) or fmt.name == "unknown":
        raise UploadError(422, "unsupported_lora", f"a {fmt.label}; the workers cannot apply it")
    keys = list(header.tensors)
    if fmt.name.startswith("kohya"):
        family = guess_family([k.split(".", 1)[0] for k in keys], header.metadata)
    else:
        family = "sdxl" if any(k.startswith("text_encoder_2.") for k in keys) else base_family
        if not all(k.startswith(COMPONENT_PREFIXES) for k in keys) and fmt.name == "diffusers":
            raise UploadError(422, "unsupported_lora", "diffusers LoRA keys must start with unet. / text_encoder.")
    if (family == "sdxl") != (base_family == "sdxl"):
        raise UploadError(422, "lora_family_mismatch",
                          f"this LoRA is for {family} and the served base model is {base_family}")
    width = _lora_cross_attention(shapes)
    if base_width is not None and width is not None and width != base_width:
        raise UploadError(422, "lora_model_mismatch", f"this LoRA's cross-attention expects width {width}; the served "
                          f"base model has {base_width} (it was made for another base model)")
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    return LoraInfo(family, fmt.name, len(stems))
