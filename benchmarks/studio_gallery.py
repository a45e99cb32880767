"""Studio gallery on a 2,000-image dataset in headless Chromium (Playwright over Debian's chromium):
time to the first 24 thumbnails visible, DOM <img> count at load, JS heap; against a naive gallery
(every thumbnail an eager <img>, what the anchors' galleries do) served by the same server,
side by side, medians.

    HF_HUB_OFFLINE=1 flock /tmp/heavy.lock .venv/bin/python benchmarks/studio_gallery.py [--images 2000] [--runs 3]

Target (studio.md §5.4): first 24 thumbnails visible in <= 2 s on the 2-core machine, <= 200
images in the DOM, JS heap <= 50 MB. Images are 512 px JPEGs, the size `prepare` writes at its
default resolution. Every load uses a fresh browser context (empty browser cache). Printed:
the time prepare spends making the thumbnails, the first visit of a freshly prepared dataset
(server just started), the same with no thumbnails made beforehand (the on-demand path), and
warm medians against the naive gallery.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "studio"))

FIRST_24 = """new Promise((resolve, reject) => {
  const check = () => {
    const imgs = Array.from(document.images).slice(0, 24);
    if (imgs.length === 24 && imgs.every(i => i.complete && i.naturalWidth > 0)) resolve(performance.now());
    else if (performance.now() > 120000) reject(new Error("the first 24 thumbnails never all loaded"));
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


def measure(browser, base: str, path: str) -> dict:  # noqa: ANN001
    """One load in a fresh context (empty browser cache): ms to the first 24 thumbnails, DOM images, heap MB."""
    from browser_checks import cdp_metrics

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        # The session cookie first (as a logged-in user has it), through the context's own HTTP
        # client so the browser cache stays empty: thumbnails and scripts all load cold.
        context.request.get(base + "/studio/login", max_redirects=0)
        page = context.new_page()
        page.goto(base + path)
        dom_images = page.evaluate("document.images.length")
        first = page.evaluate(FIRST_24)  # performance.now(): ms since the navigation started
        heap = cdp_metrics(page)["JSHeapUsedSize"] / 2**20
        return {"first24_ms": first, "dom_images": dom_images, "heap_mb": heap}
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=512, help="pixel size of the dataset's images")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from browser_checks import CHROMIUM, LiveServer, launch
    from playwright.sync_api import sync_playwright
    from studio_data import synthetic_dataset

    from lorastudio.serving.app import create_app
    from lorastudio.serving.http import Settings
    from lorastudio.serving.store import JobStore, default_url
    from lorastudio.studio import datasets as ds

    if CHROMIUM is None:
        raise SystemExit("chromium is not installed (`make setup-browser`)")
    work = Path(tempfile.mkdtemp(prefix="studio-bench-"))
    data = work / "data"
    data.mkdir()
    start = time.perf_counter()
    home = synthetic_dataset(data, "bench", args.images, side=args.side)
    print(f"dataset: {args.images} images of {args.side} px written in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    made = ds.make_thumbnails(data, home)  # what the studio's prepare does after importing the photos
    spent = time.perf_counter() - start
    print(f"thumbnails made at prepare: {made} in {spent:.1f} s ({1000 * spent / made:.1f} ms per image)")
    settings = Settings(data_dir=data, db_url=default_url(data), workers=0)
    store = JobStore(settings.db_url)
    app = create_app(settings, store=store, supervise=False)
    naive_route(app, "bench")
    server = LiveServer(app)
    base, studio_url, naive_url = server.url, "/studio/datasets/bench", "/bench/naive"
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright)
            print(f"browser: chromium {browser.version}")
            fresh = measure(browser, base, studio_url)
            print(f"first visit of the freshly prepared dataset (server just started): first 24 visible "
                  f"{fresh['first24_ms']:.0f} ms, DOM images {fresh['dom_images']}, JS heap {fresh['heap_mb']:.1f} MB")
            shutil.rmtree(data / "studio" / "thumbs")
            app.state.studio_views.clear()
            cold = measure(browser, base, studio_url)
            print(f"same with no thumbnails made beforehand (made on request): first 24 visible {cold['first24_ms']:.0f} ms")
            measure(browser, base, naive_url)  # makes every remaining thumbnail
            studio, naive = [], []
            for _ in range(args.runs):  # interleaved, so both see the same machine load
                studio.append(measure(browser, base, studio_url))
                naive.append(measure(browser, base, naive_url))
            browser.close()
    finally:
        server.close()
        store.close()

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    s_ms, n_ms = med(studio, "first24_ms"), med(naive, "first24_ms")
    print(f"studio gallery, warm: first 24 thumbnails visible {s_ms:.0f} ms (median of {args.runs}), "
          f"DOM images at load {med(studio, 'dom_images'):.0f}, JS heap {med(studio, 'heap_mb'):.1f} MB")
    print(f"naive gallery, warm:  first 24 thumbnails visible {n_ms:.0f} ms, DOM images at load {med(naive, 'dom_images'):.0f}, "
          f"JS heap {med(naive, 'heap_mb'):.1f} MB")
    worst = max(s_ms, fresh["first24_ms"])
    print(f"ratio studio/naive (first 24 visible, warm): {s_ms / n_ms:.2f}; target <= 2000 ms (first visit and warm): "
          f"{'met' if worst <= 2000 else 'NOT met'}; DOM <= 200: {'met' if med(studio, 'dom_images') <= 200 else 'NOT met'}; "
          f"heap <= 50 MB: {'met' if med(studio, 'heap_mb') <= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
