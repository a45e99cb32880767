"""Fixtures for the toy-world tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run far faster that way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
