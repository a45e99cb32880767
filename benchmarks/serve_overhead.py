"""What the service costs on top of the pipeline: p50 end-to-end time of one generation
through `lorastudio serve` (sync and async) against the bare diffusers call, same run.

    python benchmarks/serve_overhead.py [--runs 15] [--steps 20] [--size 64]

The bare call and the server's worker use the same shipped toy model, the same request
(seed, steps, size, guidance) and one intra-op thread each. The three are interleaved run by
run (bare, sync, async) so machine noise hits them alike; medians are compared.
Async = POST with `Prefer: respond-async`, follow the SSE stream to `completed`, then GET the
image. Target: overhead <= 10% at p50.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = "1"  # the worker inherits it; the bare pipeline gets the same below

    from lorastudio.serving.store import JobStore, default_url  # first: it quiets known-harmless warnings
    from lorastudio.toyworld.pretrain import shipped_base_dir

    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    model = str(shipped_base_dir())
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    data = Path(tempfile.mkdtemp(prefix="serve-overhead-"))
    _, token = JobStore(default_url(data)).create_key(["generate"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "lorastudio", "serve", "--port", str(port), "--data", str(data),
                               "--model", model], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    body = {"prompt": "ohwx_kfood_style, a photo of bibimbap", "size": f"{args.size}x{args.size}",
            "steps": args.steps, "seed": 7, "guidance": 7.0}
    client = httpx.Client(base_url=url, headers=auth, timeout=300)
    try:
        for _ in range(600):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

        def bare() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                pipe(prompt=body["prompt"], num_inference_steps=args.steps, guidance_scale=7.0, width=args.size,
                     height=args.size, generator=torch.Generator().manual_seed(7), output_type="pil").images[0].save(
                         Path(data) / "bare.png")
            return time.perf_counter() - start

        def sync() -> float:
            start = time.perf_counter()
            response = client.post("/v1/images/generations", json=body)
            assert response.status_code == 200, response.text
            return time.perf_counter() - start

        def async_() -> float:
            start = time.perf_counter()
            job = client.post("/v1/images/generations", json=body, headers={"Prefer": "respond-async"}).json()["id"]
            with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
                for line in stream.iter_lines():
                    if line == "event: completed":
                        break
            image = client.get(f"/v1/jobs/{job}").json()["images"][0]
            assert client.get(f"/v1/images/{image}").status_code == 200
            return time.perf_counter() - start

        for fn in (bare, sync, async_):  # warm-up
            fn()
        times: dict[str, list[float]] = {"bare": [], "sync": [], "async": []}
        for _ in range(args.runs):
            times["bare"].append(bare())
            times["sync"].append(sync())
            times["async"].append(async_())
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=60)
    base = statistics.median(times["bare"])
    print(f"serve_overhead: toy model, {args.size}x{args.size}, {args.steps} steps, {args.runs} runs, 1 thread each")
    print("| path | p50 s | ratio to bare |")
    print("|---|---|---|")
    for name, values in times.items():
        p50 = statistics.median(values)
        print(f"| {name} | {p50:.3f} | {p50 / base:.3f}x ({(p50 / base - 1) * 100:+.1f}%) |")


if __name__ == "__main__":
    main()
