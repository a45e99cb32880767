"""Fixtures for the Flux tests: tiny dev and schnell pipelines, a 16-px-aligned dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))


@pytest.fixture(scope="session")
def flux_dev_dir(tmp_path_factory):
    """A tiny seeded FLUX.1-dev pipeline folder (guidance embedding, dynamic shift)."""
    from lorastudio.models.tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("flux_dev") / "model", variant="dev", seed=0)


@pytest.fixture(scope="session")
def flux_schnell_dir(tmp_path_factory):
    """A tiny seeded FLUX.1-schnell pipeline folder (no guidance embedding, shift 1)."""
    from lorastudio.models.tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("flux_schnell") / "model", variant="schnell", seed=0)


@pytest.fixture
def flux_dataset(tmp_path: Path) -> Path:
    """Two 32x32 and two 48x32 images (sides multiples of 16: x8 VAE, then 2x2 packing)."""
    from train_helpers import make_dataset

    return make_dataset(tmp_path / "ds", [(32, 32)] * 2 + [(48, 32)] * 2)
