"""The run report opens in headless Chromium (Playwright over Debian's chromium): every image loads,
no console error, no CSP violation, no request off the machine, a screenshot saved."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from eval_helpers import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studio"))  # the shared Playwright checks
from browser_checks import Checked, launch, require_chromium  # noqa: E402

require_chromium()


@pytest.fixture
def checked(tmp_path):
    """A watched page context in headless system Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        print(f"\nbrowser: chromium {browser.version}")
        watched = Checked(browser, tmp_path / "shots")
        yield watched
        watched.close()
        browser.close()


def test_report_opens_offline_with_every_image_loaded(run_dir, checked, tmp_path):
    result = run_cli(["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    report = Path(result.output.strip().splitlines()[-1])
    assert report == run_dir / "report.html"
    page = checked.page()
    page.goto(report.as_uri())
    images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    sample_pngs = list((run_dir / "samples").rglob("*.png"))
    assert len(images) >= len(sample_pngs) > 0
    assert all(complete and width > 0 for _, complete, width in images), [i for i in images if not i[2]]
    assert page.evaluate("document.querySelectorAll('svg polyline').length") >= 2  # loss and lr curves
    shot = checked.shot(page, "report")
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 5000
    checked.assert_clean()
