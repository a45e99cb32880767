"""`evaluate` reads attributes in generated images at the scales `lorastudio audit` measures at:
a generated image is usually larger than the training thumbnails, and the pixel detectors'
thresholds hold only at THUMB px (and DETAIL px for the depth-of-field witness)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lorastudio.audit import photolike
from lorastudio.audit.detectors import ABSENT, CONFIDENT, pixel
from lorastudio.audit.detectors.measures import load_pair, measure
from lorastudio.evaluation.metrics import detect_attributes

SCENES = [("linen", None), ("dark_wood", "shallow_dof"), ("marble", "warm"), ("black", None), ("slate", "vignette"),
          ("concrete", "high_key"), ("white", "cool"), ("light_wood", "low_key")]


def _call(p: float) -> int:
    return 1 if p >= CONFIDENT else (-1 if p <= ABSENT else 0)


def _scenes(tmp_path):
    """(background, look, the audit's reading of the scene's file, the scene enlarged 2x)."""
    path = tmp_path / "scene.jpg"
    for i, (background, look) in enumerate(SCENES * 2):
        path.write_bytes(photolike.render_photo(photolike.PhotoSpec(background, look, 8100 + i)))
        audit = pixel.classify(measure(*load_pair(path)))
        with Image.open(path) as im:
            yield background, look, audit, im.convert("RGB").resize((im.width * 2, im.height * 2), Image.BICUBIC)


def test_a_larger_generated_image_gets_the_audit_reading_of_the_same_scene(tmp_path):
    differ = []
    for background, look, audit, generated in _scenes(tmp_path):
        evaluated = {label: float(p[0]) for label, p in detect_attributes([generated]).items()}
        differ += [(background, look, label) for label in audit if _call(audit[label]) != _call(evaluated[label])]
    assert differ == []


def test_measuring_at_native_size_is_what_went_wrong(tmp_path):
    """The old reading (the whole 2x image measured as is) disagrees with the audit somewhere on
    this sample, so the test above can fail."""
    disagreements = 0
    for _background, _look, audit, generated in _scenes(tmp_path):
        native = pixel.classify(measure(np.asarray(generated, dtype=np.float32) / 255.0))
        disagreements += sum(_call(audit[label]) != _call(native[label]) for label in audit)
    assert disagreements > 0
