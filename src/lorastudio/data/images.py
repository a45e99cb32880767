"""Safe image decoding: limits checked from the header, then normalised to 8-bit sRGB RGB.

Raw photo folders hold everything: truncated uploads, PNG "bombs" whose header promises
gigapixels, CMYK print files, 16-bit scans, palette GIFs with transparency, phone photos
whose pixels are stored sideways with an EXIF rotate tag. `decode_image` turns each of them
into either a clean RGB image or a `DecodeError` whose `reason` is a short stable code that
ends up in `rejected.jsonl`.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageCms, UnidentifiedImageError

# Formats we accept. Anything else Pillow can identify (EPS, PSD, ICO, ...) is rejected
# rather than half-supported.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF"})

# EXIF Orientation value -> the transposition that makes the pixels upright.
_ORIENTATION_FIX = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_EXIF_ORIENTATION = 0x0112

_SRGB_PROFILE = None


class DecodeError(Exception):
    """An input that cannot become a training image; `reason` is a stable short code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeLimits:
    """Hard limits checked before any pixel is decoded."""

    max_pixels: int = 64_000_000
    max_bytes: int = 200 * 1024 * 1024


@dataclass
class DecodedImage:
    """An upright 8-bit RGB image plus what we learned while decoding it.

    `width`/`height` are the full-resolution upright size from the header; `image` may be
    smaller when JPEG draft decoding was used (then `scale` < 1).
    """

    image: Image.Image
    width: int
    height: int
    format: str
    flags: list[str] = field(default_factory=list)
    scale: float = 1.0  # decoded pixels per original pixel, on both axes (1/2, 1/4, 1/8 after a draft)


def check_bytes(data: bytes, limits: DecodeLimits) -> None:
    """Reject empty or oversized files before parsing them."""
    if not data:
        raise DecodeError("empty_file", "the file has zero bytes")
    if len(data) > limits.max_bytes:
        raise DecodeError("file_too_large", f"{len(data)} bytes > limit {limits.max_bytes}")


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """The displayed size of a stored image with EXIF `orientation` (5-8 swap the axes)."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def open_header(data: bytes, limits: DecodeLimits) -> tuple[Image.Image, int]:
    """Parse only the header; return the lazy image and its EXIF orientation.

    The pixel-count limit is enforced here, before any decoding happens.
    """
    check_bytes(data, limits)
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's global bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_many_pixels", str(exc)) from None
    except UnidentifiedImageError:
        raise DecodeError("not_an_image", "no known image format recognised in the bytes") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError("corrupt", f"header unreadable ({exc})") from None
    if im.format not in SUPPORTED_FORMATS:
        raise DecodeError("unsupported_format", f"{im.format} is not one of {', '.join(sorted(SUPPORTED_FORMATS))}")
    width, height = im.size
    if width < 1 or height < 1:
        raise DecodeError("corrupt", f"header says {width}x{height}")
    if width * height > limits.max_pixels:
        raise DecodeError("too_many_pixels", f"{width}x{height} = {width * height} pixels > limit {limits.max_pixels}")
    return im, _orientation(im)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8 read from the header only (1 when absent or unreadable)."""
    try:
        if im.format in ("PNG", "GIF"):
            # Pillow's getexif() on PNG decodes the whole image to look for a late eXIf
            # chunk, which would hide a decode error from load(); only a header eXIf counts.
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        value = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block should not cost the image; treat it as upright
        return 1
    return value if value in range(1, 9) else 1


def decode_image(
    data: bytes,
    limits: DecodeLimits,
    *,
    need: Callable[[int, int], tuple[int, int]] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> DecodedImage:
    """Decode `data` into an upright 8-bit sRGB RGB image.

    `need(width, height)` returns the smallest upright size the caller will resample from,
    given the full upright size (it may raise DecodeError to stop early); for JPEG the DCT then decodes at 1/2, 1/4 or 1/8 scale when
    that still covers it, which is most of the speed of `prepare` on big camera files.
    """
    im, orientation = open_header(data, limits)
    width, height = upright_size(*im.size, orientation)
    flags: list[str] = []
    try:
        frames = getattr(im, "n_frames", 1)
    except (OSError, EOFError, ValueError, SyntaxError) as exc:  # counting frames walks the file
        raise DecodeError("corrupt", f"frame table unreadable ({exc})") from None
    if frames > 1 and im.format != "MPO":
        # Pillow starts on frame 0, which is the frame we keep. (MPO extra frames are a
        # phone's preview/depth images, not animation.)
        flags.append("multi_page" if im.format == "TIFF" else "animated")
    if _sixteen_bit_rgb(im):
        flags.append("high_bit_depth")  # Pillow keeps the high byte of each 16-bit sample
    want = need(width, height) if need is not None else None
    scale = 1.0
    if want is not None and im.format in ("JPEG", "MPO"):
        stored_need = want if orientation < 5 else (want[1], want[0])
        stored_width = im.size[0]
        if im.draft(im.mode, (max(1, stored_need[0]), max(1, stored_need[1]))) is not None:
            # The DCT scales by exactly 1/n; the last block row/column may be partial, so
            # the factor comes from n, not from the rounded-up decoded size.
            scale = 1.0 / max(1, round(stored_width / im.size[0]))
    try:
        im.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise DecodeError(reason, str(exc)) from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise DecodeError("corrupt", f"{type(exc).__name__}: {exc}") from None
    rgb = to_srgb_rgb(im, background, flags)
    if orientation != 1:
        for step in _ORIENTATION_FIX[orientation]:
            rgb = rgb.transpose(step)
        flags.append("exif_rotated")
    return DecodedImage(image=rgb, width=width, height=height, format=str(im.format), flags=flags, scale=scale)


def _sixteen_bit_rgb(im: Image.Image) -> bool:
    """True for 16-bit-per-channel RGB(A) files, which Pillow opens as 8-bit RGB(A)."""
    tile = getattr(im, "tile", None) or []
    args = tile[0].args if tile else None
    rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else "")
    return im.mode in ("RGB", "RGBA") and rawmode.endswith(";16B")


def parse_color(text: str) -> tuple[int, int, int]:
    """`#rrggbb` (or `rrggbb`) to an RGB tuple; raises ValueError with the offending text."""
    value = text.strip().lstrip("#")
    if len(value) != 6 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"'{text}' is not a #rrggbb colour")
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


def to_srgb_rgb(im: Image.Image, background: tuple[int, int, int], flags: list[str]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB in sRGB, compositing alpha on `background`."""
    icc = im.info.get("icc_profile")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = _high_depth_to_l(im)
        flags.append("high_bit_depth")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    if icc and im.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        im = _apply_icc(im, icc, flags)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = _composite(im, background, flags)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit greyscale to 8-bit by scaling the full range, not by clipping at 255."""
    import numpy as np

    arr = np.asarray(im)
    if im.mode == "F":
        peak = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 65535.0
        arr = np.nan_to_num(arr) / peak * 255.0
    else:
        arr = arr.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _srgb_profile() -> ImageCms.ImageCmsProfile:
    global _SRGB_PROFILE
    if _SRGB_PROFILE is None:
        _SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB_PROFILE


def _apply_icc(im: Image.Image, icc: bytes, flags: list[str]) -> Image.Image:
    """Convert pixels from their embedded profile to sRGB (alpha is carried through)."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        flags.append("icc_unreadable")
        return im
    alpha = None
    if im.mode in ("RGBA", "LA"):
        alpha = im.getchannel("A")
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    try:
        converted = ImageCms.profileToProfile(im, src, _srgb_profile(), outputMode="RGB")
    except ImageCms.PyCMSError:
        # A profile whose colour space does not match the pixels (e.g. an RGB profile on a
        # greyscale file): the pixels are used as they are and the image is flagged.
        flags.append("icc_mismatch")
        converted = im.convert("RGB")
    else:
        flags.append("icc_converted")
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _composite(im: Image.Image, background: tuple[int, int, int], flags: list[str]) -> Image.Image:
    """Put an image with alpha on a solid background; flag it only if it had transparency."""
    rgba = im.convert("RGBA")
    lo, _hi = rgba.getchannel("A").getextrema()
    if lo == 255:
        return rgba.convert("RGB")
    base = Image.new("RGB", rgba.size, background)
    base.paste(rgba, mask=rgba.getchannel("A"))
    flags.append("alpha_composited")
    return base


def draft_need(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """The upright size an image must be decoded at to cover `bucket` without upscaling."""
    scale = max(bucket[0] / width, bucket[1] / height)
    if scale >= 1.0:
        return (width, height)
    return (min(width, math.ceil(width * scale)), min(height, math.ceil(height * scale)))
