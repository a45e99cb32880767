"""Fixtures for the method tests (TI, pivotal, DreamBooth); helpers live in method_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from method_helpers import make_dataset


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """Four 32x32 golden-captioned images (one bucket keeps the steps fast)."""
    return make_dataset(tmp_path / "ds", [(32, 32)] * 4)
