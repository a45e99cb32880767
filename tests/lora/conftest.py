"""Fixtures for the LoRA format tests (helpers live in lora_helpers.py)."""

from __future__ import annotations

import pytest
from lora_helpers import attach_random, generate, load_pipe, text_encoders

from lorastudio.models import lora


@pytest.fixture(scope="session")
def sd15_export(tiny_sd15_dir, tmp_path_factory):
    """An SD1.5 adapter (rank 4, alpha 8; TE rank 2, alpha 1) exported in both formats,
    with the image the in-memory adapter produced and the base image."""
    pipe = load_pipe("sd15", tiny_sd15_dir)
    base = generate(pipe)
    attach_random(pipe)
    image = generate(pipe)
    out = tmp_path_factory.mktemp("sd15_export")
    paths = lora.export_adapter(out, family="sd15", unet=pipe.unet, text_encoders=text_encoders(pipe),
                                rank=4, alpha=8.0, metadata={"lorastudio.config_hash": "cafe", "ss_steps": "10"})
    return {"paths": paths, "image": image, "base": base, "pipe": pipe, "dir": out}
