"""Fixtures for the training tests (helpers live in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_helpers import make_dataset


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """Four 32x32 images and two 32x24 images: two buckets (tiny sizes keep steps fast)."""
    return make_dataset(tmp_path / "ds", [(32, 32)] * 4 + [(32, 24)] * 2)
