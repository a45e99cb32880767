"""Fixtures for the training tests (helpers live in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_helpers import make_dataset


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """Four 32x32 images and two 32x24 images: two buckets (tiny sizes keep steps fast)."""
    return make_dataset(tmp_path / "ds", [(32, 32)] * 4 + [(32, 24)] * 2)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads per
    process make tiny models ~50x slower, and one thread keeps CPU results reproducible."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
