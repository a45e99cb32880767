"""Studio gallery on a 2,000-image dataset in headless Chromium: time to the first 24 thumbnails
visible, DOM <img> count at load, JS heap; against a naive gallery (every thumbnail an eager
<img>, what the anchors' galleries do) served by the same server, side by side, medians.

    HF_HUB_OFFLINE=1 flock /tmp/heavy.lock .venv/bin/python benchmarks/studio_gallery.py [--images 2000] [--runs 3]

Target (studio.md §5.4): first 24 thumbnails visible in <= 2 s on the 2-core machine, <= 200
images in the DOM, JS heap <= 50 MB. Each run clears the browser cache; the server's
thumbnail cache is warmed once first (the cold figure is printed too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "studio"))

FIRST_24 = """new Promise(resolve => {
  const check = () => {
    const imgs = Array.from(document.images).slice(0, 24);
    if (imgs.length === 24 && imgs.every(i => i.complete && i.naturalWidth > 0)) resolve(performance.now());
    else requestAnimationFrame(check);
  };
  check();
})"""


def naive_route(app, dataset: str) -> None:  # noqa: ANN001
    """/bench/naive: all thumbnails as eager <img> tags on one page (the reference)."""
    from fastapi.responses import HTMLResponse

    from lorastudio.studio import datasets as ds

    def page():  # noqa: ANN202
        home = ds.dataset_home(app.state.settings.data_dir, dataset)
        imgs = "".join(f'<img src="/v1/datasets/{dataset}/images/{r["id"]}/thumbnail" width="160" height="160">'
                       for r in ds.records(home))
        return HTMLResponse(f"<!doctype html><html><body>{imgs}</body></html>")

    app.add_api_route("/bench/naive", page, include_in_schema=False)


def measure(browser, url: str) -> dict:  # noqa: ANN001
    """One cold-browser-cache load: ms to the first 24 thumbnails, DOM images, heap MB."""
    tab = browser.tab()
    try:
        tab.viewport(1280, 900)
        tab.call("Network.clearBrowserCache")
        tab.call("Performance.enable")
        tab.goto(url)
        dom_images = tab.eval("document.images.length")
        first = tab.eval(FIRST_24)
        metrics = {m["name"]: m["value"] for m in tab.call("Performance.getMetrics")["metrics"]}
        return {"first24_ms": first, "dom_images": dom_images, "heap_mb": metrics["JSHeapUsedSize"] / 2**20}
    finally:
        tab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from browser import Browser, LiveServer
    from studio_data import synthetic_dataset

    from lorastudio.serving.app import create_app
    from lorastudio.serving.http import Settings
    from lorastudio.serving.store import JobStore, default_url

    work = Path(tempfile.mkdtemp(prefix="studio-bench-"))
    data = work / "data"
    data.mkdir()
    start = time.perf_counter()
    synthetic_dataset(data, "bench", args.images)
    print(f"dataset: {args.images} images written in {time.perf_counter() - start:.1f} s")
    settings = Settings(data_dir=data, db_url=default_url(data), workers=0)
    store = JobStore(settings.db_url)
    app = create_app(settings, store=store, supervise=False)
    naive_route(app, "bench")
    server = LiveServer(app)
    browser = Browser(work / "profile")
    print(f"browser: {browser.version}")
    try:
        warm = browser.tab()
        warm.goto(server.url + "/studio")  # local session cookie
        warm.close()
        studio_url, naive_url = server.url + "/studio/datasets/bench", server.url + "/bench/naive"
        cold = measure(browser, studio_url)
        print(f"studio, server thumbnail cache cold: first 24 visible {cold['first24_ms']:.0f} ms")
        measure(browser, naive_url)  # warms the server cache for every thumbnail
        studio, naive = [], []
        for _ in range(args.runs):  # interleaved, so both see the same machine load
            studio.append(measure(browser, studio_url))
            naive.append(measure(browser, naive_url))
    finally:
        browser.close()
        server.close()
        store.close()

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    s_ms, n_ms = med(studio, "first24_ms"), med(naive, "first24_ms")
    print(f"studio gallery: first 24 thumbnails visible {s_ms:.0f} ms (median of {args.runs}), "
          f"DOM images at load {med(studio, 'dom_images'):.0f}, JS heap {med(studio, 'heap_mb'):.1f} MB")
    print(f"naive gallery:  first 24 thumbnails visible {n_ms:.0f} ms, DOM images at load {med(naive, 'dom_images'):.0f}, "
          f"JS heap {med(naive, 'heap_mb'):.1f} MB")
    print(f"ratio studio/naive (first 24 visible): {s_ms / n_ms:.2f}; target <= 2000 ms: "
          f"{'met' if s_ms <= 2000 else 'NOT met'}; DOM <= 200: {'met' if med(studio, 'dom_images') <= 200 else 'NOT met'}")


if __name__ == "__main__":
    main()
