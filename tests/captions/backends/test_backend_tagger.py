"""tagger: tiny WD-style ONNX models whose scores are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

import tiny_caption_models as tiny
from lorastudio.captions.backends import BackendError, get_backend
from lorastudio.captions.backends.tagger import display_tag, wd_preprocess
from lorastudio.captions.vocab import Attribute, Vocabulary

# (tag, category, constant score): categories 9 rating, 0 general, 4 character.
TAGS = [
    ("general", 9, 0.9), ("explicit", 9, 0.1),
    ("black_background", 0, 0.8), ("white_background", 0, 0.6), ("from_above", 0, 0.7),
    ("glossy_food", 0, 0.65), ("^_^", 0, 0.7), ("chopsticks_rest", 0, 0.5), ("food", 0, 0.36),
    ("no_humans", 0, 0.2), ("hatsune_miku", 4, 0.9), ("other_girl", 4, 0.8),
]


def _vocab() -> Vocabulary:
    def attr(id_, group, exclusive, slot, phrase, aliases):
        return Attribute(id=id_, group=group, exclusive=exclusive, slot=slot, kind="objective",
                         phrase=phrase, tagger_aliases=tuple(aliases))
    return Vocabulary([
        attr("bg.black", "background.color", True, 4, "black background", ["black_background"]),
        attr("bg.white", "background.color", True, 4, "white background", ["white_background"]),
        attr("angle.overhead", "angle", True, 3, "overhead flat lay", ["from_above"]),
        attr("look.glossy", "look", False, 5, "glossy", ["glossy_food"]),
    ])


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture
def constant_tagger_dir(tmp_path):
    """Scores independent of the image: weights 0, bias = logit(score)."""
    return tiny.build_tagger(tmp_path / "wd", [(n, c) for n, c, _ in TAGS], np.zeros((3, len(TAGS))),
                             np.array([_logit(p) for _, _, p in TAGS]))


def _tagger(model_dir, **options):
    return get_backend("tagger", model=str(model_dir), vocab=_vocab(), options=options)


def test_thresholds_mapping_and_text(constant_tagger_dir, images):
    outputs = _tagger(constant_tagger_dir).caption_batch(images)
    assert len(outputs) == len(images)
    out = outputs[0]
    assert all(o == out for o in outputs)  # constant model: same answer for every image
    # white_background loses the exclusive background.color group to the higher-scoring black one.
    assert out.slots == {"objective": ["black background"], "shot": ["overhead flat lay"], "style": ["glossy"],
                         "unplaced": ["hatsune miku", "^_^", "chopsticks rest", "food"]}
    # Unmapped general + character tags, best first; emoticon kept; rating never in the text.
    assert out.text == "hatsune miku, ^_^, chopsticks rest, food"
    names = [t for t, _ in out.tags]
    assert names == ["general", "hatsune_miku", "black_background", "from_above", "^_^", "glossy_food",
                     "white_background", "chopsticks_rest", "food"]
    scores = dict(out.tags)
    assert scores["black_background"] == pytest.approx(0.8, abs=1e-4)
    assert "other_girl" not in scores and "no_humans" not in scores and "explicit" not in scores


def test_category_thresholds_and_exclusions_are_options(constant_tagger_dir, images):
    out = _tagger(constant_tagger_dir, general_threshold=0.66, character_threshold=0.75,
                  rating_threshold=0.95, exclude_tags=["^_^"]).caption_batch(images[:1])[0]
    names = {t for t, _ in out.tags}
    assert names == {"black_background", "from_above", "hatsune_miku", "other_girl"}
    assert out.slots == {"objective": ["black background"], "shot": ["overhead flat lay"],
                         "unplaced": ["hatsune miku", "other girl"]}
    assert out.text == "hatsune miku, other girl"


def test_rating_only_image_gives_no_output(constant_tagger_dir, images):
    out = _tagger(constant_tagger_dir, general_threshold=0.95, character_threshold=0.95).caption_batch(images[:1])[0]
    assert out.is_empty()


def _blue_tagger(tmp_path, size=32, batch="N"):
    """One tag whose logit is 4 * (mean of channel 0 / 255) - 2; channel 0 is blue in BGR."""
    weights = np.zeros((3, 1))
    weights[0, 0] = 4 / 255
    return tiny.build_tagger(tmp_path / f"blue{size}{batch}", [("blue_theme", 0)], weights, np.array([-2.0]),
                             size=size, batch=batch)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_preprocessing_is_bgr_white_padded(tmp_path):
    tagger = _tagger(_blue_tagger(tmp_path), general_threshold=0.0)
    blue = Image.new("RGB", (32, 32), (0, 0, 255))
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    tall_black = Image.new("RGB", (16, 32), (0, 0, 0))       # padded to 32x32: half white
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))         # transparent -> white
    scores = tagger.predict([blue, red, tall_black, clear])[:, 0]
    expected = [_sigmoid(2.0), _sigmoid(-2.0), _sigmoid(0.0), _sigmoid(2.0)]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_wd_preprocess_layout():
    arr = wd_preprocess(Image.new("RGB", (10, 20), (10, 20, 30)), 24)
    assert arr.shape == (24, 24, 3) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[12, 12], [30, 20, 10], atol=1)   # BGR, 0-255
    np.testing.assert_allclose(arr[12, 0], [255, 255, 255])          # white side padding


def test_input_size_and_fixed_batch_are_read_from_the_model(tmp_path):
    tagger = _tagger(_blue_tagger(tmp_path, size=24, batch=1), general_threshold=0.0)
    assert tagger.size == 24 and tagger.max_batch == 1
    images = [Image.new("RGB", (40, 30), (0, 0, 255)), Image.new("RGB", (50, 50), (0, 0, 0))]
    outputs = tagger.caption_batch(images)
    assert [o.tags[0][0] for o in outputs] == ["blue_theme", "blue_theme"]
    assert outputs[0].tags[0][1] > 0.8 > 0.2 > outputs[1].tags[0][1]
    assert outputs[0].text == "blue theme"
    assert tagger.provenance()["params"]["input_size"] == 24


def test_tag_list_must_match_the_model(tmp_path):
    folder = _blue_tagger(tmp_path)
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,5\n2,b,0,5\n", encoding="utf-8")
    with pytest.raises(BackendError, match="outputs 1 scores but selected_tags.csv lists 2"):
        _tagger(folder)
    (folder / "selected_tags.csv").write_text("tag_id,label\n1,a\n", encoding="utf-8")
    with pytest.raises(BackendError, match="missing column"):
        _tagger(folder)
    (folder / "selected_tags.csv").unlink()
    with pytest.raises(BackendError, match="lacks selected_tags.csv"):
        _tagger(folder)


def test_corrupt_model_and_unknown_device_are_clear_errors(constant_tagger_dir):
    with pytest.raises(BackendError, match="cpu, cuda or cuda:N, not 'mps'"):
        get_backend("tagger", model=str(constant_tagger_dir), vocab=_vocab(), device="mps")
    (constant_tagger_dir / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(BackendError, match="onnxruntime cannot load .*model.onnx"):
        _tagger(constant_tagger_dir)


def test_float16_and_bad_options_are_refused(constant_tagger_dir):
    with pytest.raises(BackendError, match="float32"):
        get_backend("tagger", model=str(constant_tagger_dir), vocab=_vocab(), dtype="float16")
    with pytest.raises(BackendError, match="general_threshold"):
        _tagger(constant_tagger_dir, general_threshold=1.5)


def test_display_tag():
    assert display_tag("black_background") == "black background"
    assert display_tag("^_^") == "^_^"
    assert display_tag("black_background", keep_underscores=True) == "black_background"


def test_unreachable_hub_repo_is_a_clear_error():
    with pytest.raises(BackendError, match="cannot fetch model.onnx/selected_tags.csv of 'lorastudio-tests/no-tagger'"):
        _tagger("lorastudio-tests/no-tagger")
