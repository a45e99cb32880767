"""Throughput of `lorastudio prepare` on 12-megapixel camera JPEGs, against a simple script.

The reference is what a typical one-file prep script does, in one process: PIL open,
exif_transpose, convert("RGB"), LANCZOS resize-and-crop to the same bucket, save. The
prepare figure is the real console script in a subprocess (start-up included), so it
measures what a user waits for. Peak RSS sums the whole process tree (pool workers too).

    python benchmarks/prepare_throughput.py            # 200 images, 2 repetitions
    python benchmarks/prepare_throughput.py --n 60     # quicker
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CACHE = Path(tempfile.gettempdir()) / "lorastudio_bench_12mp"
WIDTH, HEIGHT = 4000, 3000


def _make_photo(index: int) -> str:
    """A 4000x3000 JPEG with smooth shapes plus grain, so it compresses like a photo (~2-4 MB)."""
    path = CACHE / f"photo_{index:04d}.jpg"
    if path.is_file():
        return str(path)
    rng = np.random.default_rng(index)
    low = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    mid = Image.fromarray((rng.random((150, 200, 3)) * 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    base = Image.blend(low, mid, 0.3)
    grain = rng.normal(0.0, 6.0, (HEIGHT, WIDTH, 1)).astype(np.float32)
    pixels = np.clip(np.asarray(base, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    tmp = path.with_suffix(".tmp")
    Image.fromarray(pixels).save(tmp, "JPEG", quality=92)
    os.replace(tmp, path)
    return str(path)


def ensure_photos(n: int) -> list[str]:
    """Generate (once, cached under the temp dir) and return n photo paths."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(_make_photo, range(n)))


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def reference(paths: list[str], out: Path, bucket: tuple[int, int]) -> tuple[float, float]:
    """The simple-script baseline; returns (images per second, CPU seconds per image)."""
    out.mkdir(parents=True, exist_ok=True)
    cpu0 = _cpu(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im = ImageOps.fit(im, bucket, Image.Resampling.LANCZOS)
            im.save(out / f"{i}.jpg", "JPEG", quality=95)
    elapsed = time.perf_counter() - start
    return len(paths) / elapsed, (_cpu(resource.RUSAGE_SELF) - cpu0) / len(paths)


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_prepare(src: Path, out: Path, resolution: int) -> tuple[float, int, float]:
    """Run the console script; returns (images/s, peak RSS bytes of the tree, CPU s per image)."""
    import psutil

    exe = Path(sys.executable).with_name("lorastudio")
    cmd = [str(exe), "prepare", str(src), "--out", str(out), "--resolution", str(resolution), "-q"]
    n = len(list(src.iterdir()))
    cpu0 = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = psutil.Process(popen.pid)
    peak = 0
    while popen.poll() is None:
        peak = max(peak, _tree_rss(proc))
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    stdout, stderr = popen.communicate()
    if popen.returncode != 0:
        raise SystemExit(f"prepare failed ({popen.returncode}):\n{stdout.decode()}\n{stderr.decode()}")
    # RUSAGE_CHILDREN covers the CLI and its pool workers once they have all been waited for.
    return n / elapsed, peak, (_cpu(resource.RUSAGE_CHILDREN) - cpu0) / n


def main() -> None:
    """Measure both side by side and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of 12 MP JPEGs")
    parser.add_argument("--reps", type=int, default=2, help="repetitions (medians are reported)")
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()

    from lorastudio.data.buckets import BucketSpec, place

    paths = ensure_photos(args.n)
    bucket = place(WIDTH, HEIGHT, BucketSpec(resolution=args.resolution)).bucket
    work = Path(tempfile.mkdtemp(prefix="lorastudio_bench_"))
    src = work / "src"
    src.mkdir()
    for path in paths:
        # Hard links: regular files in a folder of exactly n photos, without copying gigabytes.
        try:
            os.link(path, src / Path(path).name)
        except OSError:
            shutil.copy2(path, src / Path(path).name)
    ref_rates, prep_rates, peaks, ref_cpu, prep_cpu = [], [], [], [], []
    try:
        for rep in range(args.reps):
            rate, cpu = reference(paths, work / f"ref{rep}", bucket)
            ref_rates.append(rate)
            ref_cpu.append(cpu)
            rate, peak, cpu = run_prepare(src, work / f"ds{rep}", args.resolution)
            prep_rates.append(rate)
            peaks.append(peak)
            prep_cpu.append(cpu)
            print(f"rep {rep + 1}: reference {ref_rates[-1]:.2f} img/s, prepare {rate:.2f} img/s, peak RSS {peak / 2**20:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref, prep = statistics.median(ref_rates), statistics.median(prep_rates)
    print(f"images: {args.n} x {WIDTH}x{HEIGHT} JPEG -> bucket {bucket[0]}x{bucket[1]} (resolution {args.resolution}), cpus {os.cpu_count()}")
    print(f"reference (PIL open, exif_transpose, RGB, LANCZOS, save; 1 process): {ref:.2f} images/s")
    print(f"lorastudio prepare (console script, subprocess):                     {prep:.2f} images/s")
    print(f"ratio prepare / reference: {prep / ref:.2f}x (target >= 3x)")
    rc, pc = statistics.median(ref_cpu), statistics.median(prep_cpu)
    print(f"CPU seconds per image (less sensitive to a shared machine): reference {rc:.3f}, prepare {pc:.3f} ({rc / pc:.2f}x less)")
    print(f"peak RSS of the prepare process tree: {max(peaks) / 2**20:.0f} MiB (target < 1536 MiB)")


if __name__ == "__main__":
    main()
