"""Generated photos and a bad-input corpus for the prepare tests (all seeded, all tiny)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFilter


def run_cli(args: list[str]):
    """Invoke the real click entry point in-process (click's CliRunner)."""
    from click.testing import CliRunner

    from lorastudio.cli.main import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def photo(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A textured RGB 'photo': smooth colour blobs plus fine detail, unique per seed."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    detail = rng.normal(0, 18, (height, width, 1))
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = 25 * np.sin(xx / (3 + seed % 5))[..., None] * np.cos(yy / 7)[..., None]
    pixels = np.asarray(low, dtype=np.float64) + detail + stripes
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    """Encode as JPEG in memory."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", **{"quality": 90, **kwargs})
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header promises `width` x `height` pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_rgb16(width: int = 320, height: int = 300, seed: int = 3) -> bytes:
    """A real 16-bit-per-channel RGB PNG (Pillow cannot write these, so it is built by hand)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(photo(width, height, seed), dtype=np.uint16) * 257 + rng.integers(0, 256, (height, width, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + base[y].astype(">u2").tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")


def bmp_huge_header(width: int = 30_000, height: int = 30_000) -> bytes:
    """A BMP header claiming 900 megapixels, with no pixel data behind it."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    size = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, 14 + 40) + info


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """A 'phone photo': pixels stored landscape 400x300 with a red top-left corner, EXIF says rotate."""
    im = photo(400, 300, seed=11)
    im.paste((255, 0, 0), (0, 0, 60, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(im, exif=exif.tobytes())


def animated_gif() -> bytes:
    """Two frames: the first green, the second blue."""
    frames = [Image.new("RGB", (300, 300), (0, 200, 0)), Image.new("RGB", (300, 300), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def palette_png_transparent() -> bytes:
    """A palette PNG whose index 0 is fully transparent (left half)."""
    im = Image.new("P", (320, 320), 1)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    im.paste(0, (0, 0, 160, 320))
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def save(image: Image.Image, path: Path, fmt: str, **kwargs) -> None:
    """Save a PIL image, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kwargs)


def write(path: Path, data: bytes) -> None:
    """Write bytes, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_corpus(root: Path, outside: Path) -> dict[str, tuple[str, str | None]]:
    """Write the bad-input corpus under `root`; return source-relative-path -> (outcome, detail).

    outcome is "accepted" (detail = a flag that must be present, or None) or "rejected"
    (detail = the reason code).
    """
    expect: dict[str, tuple[str, str | None]] = {}
    good = photo(640, 480, seed=1)
    write(root / "good.jpg", jpeg_bytes(good))
    expect["good.jpg"] = ("accepted", None)
    write(root / "good_copy.jpg", jpeg_bytes(good))
    expect["good_copy.jpg"] = ("rejected", "duplicate")
    write(root / "near_good.jpg", jpeg_bytes(good.resize((576, 432), Image.Resampling.LANCZOS), quality=75))
    expect["near_good.jpg"] = ("rejected", "near_duplicate")
    full = jpeg_bytes(photo(640, 480, seed=2))
    write(root / "truncated.jpg", full[: len(full) // 2])
    expect["truncated.jpg"] = ("rejected", "truncated")
    write(root / "zero.jpg", b"")
    expect["zero.jpg"] = ("rejected", "empty_file")
    write(root / "notes.jpg", "this is a text file, not a photo\n".encode())
    expect["notes.jpg"] = ("rejected", "not_an_image")
    write(root / "bomb.png", png_bomb())
    expect["bomb.png"] = ("rejected", "too_many_pixels")
    write(root / "huge.bmp", bmp_huge_header())
    expect["huge.bmp"] = ("rejected", "too_many_pixels")
    save(photo(400, 300, seed=4).convert("CMYK"), root / "cmyk.jpg", "JPEG", quality=90)
    expect["cmyk.jpg"] = ("accepted", None)
    grey16 = (np.asarray(photo(300, 300, seed=5).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save(Image.fromarray(grey16), root / "grey16.png", "PNG")
    expect["grey16.png"] = ("accepted", "high_bit_depth")
    write(root / "rgb16.png", png_rgb16())
    expect["rgb16.png"] = ("accepted", "high_bit_depth")
    write(root / "palette_alpha.png", palette_png_transparent())
    expect["palette_alpha.png"] = ("accepted", "alpha_composited")
    write(root / "phone.jpg", exif_rotated_jpeg(6))
    expect["phone.jpg"] = ("accepted", "exif_rotated")
    write(root / "animated.gif", animated_gif())
    expect["animated.gif"] = ("accepted", "animated")
    gif = animated_gif()
    write(root / "cut_anim.gif", gif[: len(gif) // 2])
    expect["cut_anim.gif"] = ("rejected", "truncated")
    save(Image.new("RGB", (1, 1), (9, 9, 9)), root / "one_pixel.png", "PNG")
    expect["one_pixel.png"] = ("rejected", "too_small")
    save(photo(300, 300, seed=6).convert("L"), root / "grey.jpg", "JPEG")
    expect["grey.jpg"] = ("accepted", "upscaled")
    la = photo(320, 320, seed=7).convert("L")
    la.putalpha(Image.linear_gradient("L").resize((320, 320)))
    save(la, root / "grey_alpha.png", "PNG")
    expect["grey_alpha.png"] = ("accepted", "alpha_composited")
    save(photo(320, 320, seed=8).convert("RGBA"), root / "opaque_rgba.png", "PNG")
    expect["opaque_rgba.png"] = ("accepted", None)
    save(photo(320, 320, seed=9), root / "photo.webp", "WEBP", quality=90)
    expect["photo.webp"] = ("accepted", None)
    save(photo(320, 300, seed=10), root / "photo.bmp", "BMP")
    expect["photo.bmp"] = ("accepted", None)
    save(photo(300, 320, seed=12), root / "photo.tiff", "TIFF")
    expect["photo.tiff"] = ("accepted", None)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    save(photo(320, 320, seed=13), root / "icc_srgb.jpg", "JPEG", icc_profile=srgb)
    expect["icc_srgb.jpg"] = ("accepted", "icc_converted")
    save(photo(320, 320, seed=14), root / "icc_broken.png", "PNG", icc_profile=b"not an icc profile at all")
    expect["icc_broken.png"] = ("accepted", "icc_unreadable")
    save(photo(320, 320, seed=15), root / "kor.jpg", "JPEG")
    write(root / "kor.txt", "양념치킨 사진".encode("cp949"))
    expect["kor.jpg"] = ("accepted", "caption_not_utf8")
    save(photo(320, 320, seed=16), root / "10_food" / "top.jpg", "JPEG")
    expect["10_food/top.jpg"] = ("accepted", None)
    save(photo(320, 320, seed=17), root / "10_food" / "3_side" / "deep.png", "PNG")
    expect["10_food/3_side/deep.png"] = ("accepted", None)
    write(root / "10_food" / "top.caption", "a photo of bibimbap\n".encode())
    save(photo(320, 320, seed=18).filter(ImageFilter.GaussianBlur(6)), root / "blurry.jpg", "JPEG")
    expect["blurry.jpg"] = ("accepted", "blurry")
    dark = Image.fromarray((np.asarray(photo(320, 320, seed=19), dtype=np.float64) * 0.1).astype(np.uint8))
    save(dark, root / "dark.jpg", "JPEG")
    expect["dark.jpg"] = ("accepted", "underexposed")
    bright = Image.fromarray((255 - np.asarray(photo(320, 320, seed=20), dtype=np.float64) * 0.08).astype(np.uint8))
    save(bright, root / "bright.jpg", "JPEG")
    expect["bright.jpg"] = ("accepted", "overexposed")
    write(root / "corrupt.png", png_bomb(320, 320)[:33] + png_chunk(b"IDAT", b"\x78\x9c garbage garbage") + png_chunk(b"IEND", b""))
    expect["corrupt.png"] = ("rejected", "corrupt")
    write(root / "phone.heic", b"\x00\x00\x00\x18ftypheic")
    expect["phone.heic"] = ("rejected", "unsupported_format")
    write(root / "readme.md", b"# my photos\n")
    expect["readme.md"] = ("rejected", "unsupported_extension")
    icon = io.BytesIO()
    photo(64, 64, seed=21).save(icon, "ICO")
    write(root / "icon.png", icon.getvalue())
    expect["icon.png"] = ("rejected", "unsupported_format")
    save(photo(320, 320, seed=22), outside / "secret.jpg", "JPEG")
    os.symlink(outside / "secret.jpg", root / "escape.jpg")
    expect["escape.jpg"] = ("rejected", "symlink_outside_root")
    os.symlink(root / "photo.webp", root / "zz_link.webp")
    expect["zz_link.webp"] = ("rejected", "duplicate")
    expect.update(make_unreadable(root))
    return expect


def make_unreadable(root: Path) -> dict[str, tuple[str, str | None]]:
    """An input prepare cannot read.

    As a normal user a chmod-000 file does it. Tests here often run as root, and root reads
    a chmod-000 file anyway, so there the stand-in is a FIFO named like a photo: opening it
    for reading would block forever, so prepare must refuse it without opening it.
    """
    if os.geteuid() != 0:
        path = root / "locked.jpg"
        save(photo(320, 320, seed=23), path, "JPEG")
        path.chmod(0)
        return {"locked.jpg": ("rejected", "unreadable")}
    os.mkfifo(root / "pipe.jpg")
    return {"pipe.jpg": ("rejected", "not_a_regular_file")}


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> content hash for every entry under root (links by target, FIFOs by type)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                out[rel] = "link:" + os.readlink(path)
            elif stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f":{stat.S_IMODE(info.st_mode):o}:{info.st_mtime_ns}"
            else:
                out[rel] = f"type:{stat.S_IFMT(info.st_mode)}"
    return out
