"""Shared test setup: everything offline, everything seeded, nothing from a hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# Tiny models run fastest on one intra-op thread; on a 2-core machine two spinning OpenMP
# threads per process (and per subprocess, which inherits this) slow them down many times.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- tiny real pipelines (owner: tiny-models). Built once per test session; treat as read-only.
import pytest  # noqa: E402


def _build_tiny(tmp_path_factory, family: str):
    from lorastudio.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(family, tmp_path_factory.mktemp(f"tiny_{family}") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    """A tiny seeded SD1.5-architecture pipeline folder (diffusers layout)."""
    return _build_tiny(tmp_path_factory, "sd15")


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory):
    """A tiny seeded SD2-architecture pipeline folder (v-prediction, linear projection)."""
    return _build_tiny(tmp_path_factory, "sd2")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny seeded SDXL-architecture pipeline folder (two text encoders)."""
    return _build_tiny(tmp_path_factory, "sdxl")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: tiny models on a shared 2-core machine run far faster,
    and CPU results stay reproducible. Restored afterwards for tests that change it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_report_header(config):  # noqa: ARG001 - pytest hook signature
    """The browser the browser tests drive (Debian's chromium through Playwright), in the session header."""
    import shutil
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    try:
        playwright = f"playwright {version('playwright')}"
    except PackageNotFoundError:
        playwright = "playwright not installed"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return f"browser: chromium not found (browser tests skip; fail under CI=true); {playwright}"
    try:
        found = subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        found = f"version unknown ({exc})"
    return f"browser: {found} ({chromium}); {playwright}"
