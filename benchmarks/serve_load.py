"""Load test of `lorastudio serve` on loopback, with fake workers that keep realistic timing.

    python benchmarks/serve_load.py [--step-s 0.01] [--steps 20] [--seconds 8]

A `--fake-workers` server (one worker; each job sleeps `steps x step-s`, a LoRA miss costs
five steps) is started as a real process on 127.0.0.1. Phases, each bounded in time:
1. capacity ramp: closed-loop clients at concurrency 1, 2, 4;
2. 2x overload: open-loop arrivals at twice the measured capacity against a small queue:
   429s with Retry-After (their own latency), zero 5xx, admitted latency, queue drained;
3. LoRA churn: 10 registered adapters picked by Zipf (s = 1.1), a 4-adapter cache;
4. cancel storm: 40 async jobs canceled at once;
5. 500 idle SSE clients on a long job while /healthz is probed;
6. kill -9 of the worker under load: every admitted job must still succeed.
Prints one table: load held, p50/p95/p99 queue wait and latency, 429 rate, jobs lost.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BODY = {"prompt": "ohwx_kfood_style, a photo of yangnyeom chicken", "size": "64x64", "seed": 1}


PROBE = """
import sys, time, http.client
from urllib.parse import urlparse
url = urlparse(sys.argv[1])
conn = http.client.HTTPConnection(url.hostname, url.port)
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    print(time.perf_counter() - start)
    time.sleep(0.005)
"""


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def start_server(data: Path, port: int, step_s: float, max_queue: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "lorastudio", "serve", "--port", str(port), "--data", str(data), "--fake-workers",
            "--max-queue", str(max_queue), "--max-inflight", "1000", "--wait-cap", "60", "--fake-step-s", str(step_s)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Harness:
    def __init__(self, url: str, token: str, steps: int, step_s: float) -> None:
        self.url, self.steps, self.step_s = url, steps, step_s
        self.auth = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        self.client = httpx.AsyncClient(base_url=url, headers=self.auth, timeout=120, limits=limits)

    async def sync_job(self, extra: dict | None = None) -> tuple[int, float, dict]:
        start = time.perf_counter()
        response = await self.client.post("/v1/images/generations", json={**BODY, "steps": self.steps, **(extra or {})})
        return response.status_code, time.perf_counter() - start, dict(response.headers)

    async def job_view(self, job_id: str) -> dict:
        return (await self.client.get(f"/v1/jobs/{job_id}")).json()

    async def queue_wait(self, job_id: str) -> float | None:
        return (await self.job_view(job_id))["timings"].get("queue_wait_s")


async def closed_loop(h: Harness, concurrency: int, seconds: float) -> dict:
    latencies, codes, ids = [], [], []
    end = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < end:
            code, took, headers = await h.sync_job()
            codes.append(code)
            if code == 200:
                latencies.append(took)
                ids.append(headers.get("x-job-id"))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    waits = [w for w in await asyncio.gather(*(h.queue_wait(i) for i in ids[:200])) if w is not None]
    return {"load": f"{concurrency} clients", "rps": len(latencies) / seconds, "lat": latencies, "wait": waits,
            "codes": codes}


async def open_loop(h: Harness, rate: float, seconds: float) -> dict:
    latencies, rejected, codes, ids = [], [], [], []

    async def one() -> None:
        code, took, headers = await h.sync_job()
        codes.append(code)
        if code == 200:
            latencies.append(took)
            ids.append(headers.get("x-job-id"))
        elif code == 429:
            rejected.append(took)
            assert headers.get("retry-after"), "429 without Retry-After"

    tasks, start = [], time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        tasks.append(asyncio.create_task(one()))
        k += 1
        await asyncio.sleep(max(0.0, start + k / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    waits = [w for w in await asyncio.gather(*(h.queue_wait(i) for i in ids[:200])) if w is not None]
    return {"load": f"2x overload ({rate:.1f}/s)", "rps": len(latencies) / seconds, "lat": latencies, "wait": waits,
            "codes": codes, "rejected": rejected}


async def lora_churn(h: Harness, seconds: float) -> dict:
    import torch
    from safetensors.torch import save

    for i in range(10):
        tensors = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.full((2, 8), float(i)),
                   "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(8, 2)}
        await h.client.post("/v1/loras", files={"file": ("l.safetensors", io.BytesIO(save(tensors)).getvalue())},
                            data={"id": f"style-{i}"})
    before = (await h.client.get("/metrics")).text
    weights = [1 / (r + 1) ** 1.1 for r in range(10)]
    rng = random.Random(0)
    latencies, codes, end = [], [], time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < end:
            lora = rng.choices(range(10), weights)[0]
            code, took, _ = await h.sync_job({"loras": [{"id": f"style-{lora}", "scale": 1.0}]})
            codes.append(code)
            latencies.append(took)

    await asyncio.gather(*(client() for _ in range(2)))
    after = (await h.client.get("/metrics")).text
    hits = _metric(after, "lorastudio_lora_cache_hits_total") - _metric(before, "lorastudio_lora_cache_hits_total")
    misses = _metric(after, "lorastudio_lora_cache_misses_total") - _metric(before, "lorastudio_lora_cache_misses_total")
    return {"load": "LoRA churn (10, Zipf)", "rps": len(latencies) / seconds, "lat": latencies, "wait": [],
            "codes": codes, "note": f"hit ratio {hits / max(1, hits + misses):.2f}, {misses / seconds * 60:.0f} swaps/min"}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def cancel_storm(h: Harness) -> dict:
    ids = []
    for _ in range(40):  # as many as the bounded queue admits
        r = await h.client.post("/v1/images/generations", json={**BODY, "steps": h.steps},
                                headers={"Prefer": "respond-async"})
        if r.status_code == 202:
            ids.append(r.json()["id"])
    start = time.perf_counter()
    await asyncio.gather(*(h.client.delete(f"/v1/jobs/{i}") for i in ids))
    took = time.perf_counter() - start
    end = time.time() + 30
    while time.time() < end:
        states = [v["status"] for v in await asyncio.gather(*(h.job_view(i) for i in ids))]
        if all(s in ("canceled", "succeeded") for s in states):
            break
        await asyncio.sleep(0.1)
    stuck = sum(s not in ("canceled", "succeeded") for s in states)
    return {"load": f"cancel storm ({len(ids)} at once)", "rps": float("nan"), "lat": [took], "wait": [],
            "codes": [200] * len(ids), "lost": stuck,
            "note": f"{states.count('canceled')} canceled, {states.count('succeeded')} finished first, {stuck} stuck"}


async def idle_sse(h: Harness, clients: int) -> dict:
    # The streams watch a job queued behind a long one: connected, waiting, nothing to send.
    blocker = (await h.client.post("/v1/images/generations", json={**BODY, "steps": 150},
                                   headers={"Prefer": "respond-async"})).json()["id"]
    long_job = (await h.client.post("/v1/images/generations", json={**BODY, "steps": 150},
                                    headers={"Prefer": "respond-async"})).json()["id"]
    opened = asyncio.Event()
    count = 0

    async def listen() -> None:
        nonlocal count
        async with h.client.stream("GET", f"/v1/jobs/{long_job}/events") as stream:
            first = True
            async for _ in stream.aiter_bytes():
                if first:  # the replayed `queued` event: this stream is set up and now idle
                    first, count = False, count + 1
                    if count == clients:
                        opened.set()

    listeners = [asyncio.create_task(listen()) for _ in range(clients)]
    await asyncio.wait_for(opened.wait(), timeout=60)
    # Probed from a separate process, so the 500 streams' client side does not time itself.
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", PROBE, h.url, "300"], capture_output=True,
                                   text=True, timeout=120)
    probes = [float(v) for v in done.stdout.split()]
    await h.client.delete(f"/v1/jobs/{long_job}")
    await h.client.delete(f"/v1/jobs/{blocker}")
    await asyncio.wait_for(asyncio.gather(*listeners, return_exceptions=True), timeout=60)
    return {"load": f"{clients} idle SSE + /healthz", "rps": float("nan"), "lat": probes, "wait": [], "codes": [200],
            "note": f"/healthz p99 {pct(probes, 99) * 1000:.1f} ms"}


async def kill_under_load(h: Harness, seconds: float) -> dict:
    ids, end = [], time.perf_counter() + seconds
    killed = False

    async def submitter() -> None:
        while time.perf_counter() < end:
            r = await h.client.post("/v1/images/generations", json={**BODY, "steps": h.steps},
                                    headers={"Prefer": "respond-async"})
            if r.status_code == 202:
                ids.append(r.json()["id"])
            await asyncio.sleep(1.2 * h.steps * h.step_s)  # a little under capacity

    async def killer() -> None:
        nonlocal killed
        await asyncio.sleep(seconds / 2)
        workers = (await h.client.get("/readyz")).json()["workers"]
        os.kill(workers[0]["pid"], signal.SIGKILL)
        killed = True

    await asyncio.gather(submitter(), killer())
    deadline = time.time() + 120
    while time.time() < deadline:
        views = await asyncio.gather(*(h.job_view(i) for i in ids))
        if all(v["status"] in ("succeeded", "failed", "canceled", "expired") for v in views):
            break
        await asyncio.sleep(0.2)
    lost = sum(v["status"] != "succeeded" for v in views)
    waits = [v["timings"].get("queue_wait_s") for v in views if v["timings"].get("queue_wait_s") is not None]
    requeued = sum(v["attempts"] > 1 for v in views)
    return {"load": "kill -9 under load", "rps": len(ids) / seconds, "lat": [], "wait": waits, "codes": [],
            "lost": lost, "note": f"{len(ids)} admitted, {requeued} re-queued, worker killed: {killed}"}


def row(result: dict) -> str:
    lat, wait, codes = result["lat"], result["wait"], result["codes"]
    rate_429 = codes.count(429) / len(codes) if codes else 0.0
    five = sum(c >= 500 for c in codes)
    ms = lambda v: f"{v * 1000:.0f}" if not math.isnan(v) else "-"  # noqa: E731
    cells = [result["load"], f"{result['rps']:.1f}" if not math.isnan(result["rps"]) else "-",
             f"{ms(pct(wait, 50))}/{ms(pct(wait, 95))}/{ms(pct(wait, 99))}",
             f"{ms(pct(lat, 50))}/{ms(pct(lat, 95))}/{ms(pct(lat, 99))}", f"{rate_429:.0%}", str(five),
             str(result.get("lost", 0)), result.get("note", "")]
    return "| " + " | ".join(cells) + " |"


async def run(args: argparse.Namespace) -> None:
    from lorastudio.serving.store import JobStore, default_url

    data = Path(tempfile.mkdtemp(prefix="serve-load-"))
    store = JobStore(default_url(data))
    _, token = store.create_key(["generate", "train", "admin"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(data, port, args.step_s, max_queue=8)
    url = f"http://127.0.0.1:{port}"
    h = Harness(url, token, args.steps, args.step_s)
    try:
        for _ in range(300):
            try:
                if (await h.client.get("/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
        results = [await closed_loop(h, c, args.seconds) for c in (1, 2, 4)]
        capacity = max(r["rps"] for r in results)
        overload = await open_loop(h, 2 * capacity, args.seconds)
        drain_start = time.time()
        while store.counts().get("queued", 0) or store.counts().get("running", 0):
            await asyncio.sleep(0.05)
        overload["note"] = (f"429 p99 {pct(overload['rejected'], 99) * 1000:.1f} ms; queue drained "
                            f"{time.time() - drain_start:.1f} s after")
        results.append(overload)
        results.append(await lora_churn(h, args.seconds))
        results.append(await cancel_storm(h))
        results.append(await idle_sse(h, args.sse))
        results.append(await kill_under_load(h, args.seconds))
    finally:
        await h.client.aclose()
        proc.terminate()
        proc.wait(timeout=60)
    print(f"serve_load: fake worker, {args.steps} steps x {args.step_s * 1000:.0f} ms per job "
          f"(service {args.steps * args.step_s * 1000:.0f} ms), 1 worker, loopback, {os.cpu_count()} CPUs")
    print("| load | admitted/s | queue wait p50/p95/p99 ms | latency p50/p95/p99 ms | 429 | 5xx | jobs lost | note |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(row(result))
    print(f"capacity {capacity:.1f} jobs/s (ideal {1 / (args.steps * args.step_s):.1f}); "
          f"overload admitted median latency {statistics.median(overload['lat']) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-s", type=float, default=0.01, help="fake seconds per denoising step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each timed phase")
    parser.add_argument("--sse", type=int, default=500, help="idle SSE clients")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
