"""hf-caption on tiny random BLIP and GIT models saved to folders and loaded back."""

from __future__ import annotations

import pytest

from lorastudio.captions.backends import BackendError, BackendOutput, CaptionBackend, get_backend
from lorastudio.captions.vocab import Vocabulary

EMPTY_VOCAB = Vocabulary([])


def _backend(model_dir, **options):
    return get_backend("hf-caption", model=str(model_dir), vocab=EMPTY_VOCAB,
                       options={"max_new_tokens": 8, **options})


@pytest.mark.parametrize("fixture", ["blip_dir", "blip2_dir", "git_dir"])
def test_batch_equals_one_at_a_time(fixture, request, images):
    backend = _backend(request.getfixturevalue(fixture))
    assert isinstance(backend, CaptionBackend)
    batched = backend.caption_batch(images)
    assert len(batched) == len(images)
    assert all(isinstance(o, BackendOutput) and isinstance(o.text, str) and o.text for o in batched)
    assert all(o.slots is None and o.tags == [] for o in batched)
    single = [backend.caption_batch([im])[0].text for im in images]
    assert [o.text for o in batched] == single
    # The tiny model reacts to pixels, so the equality above compares different captions.
    assert len(set(single)) > 1


@pytest.mark.parametrize("fixture", ["blip_dir", "blip2_dir", "git_dir"])
def test_prompt_conditions_batches_and_is_stripped(fixture, request, images):
    model_dir = request.getfixturevalue(fixture)
    plain = _backend(model_dir).caption_batch(images)
    prompted = _backend(model_dir, prompt="w5 w6")
    batched = prompted.caption_batch(images)
    assert [o.text for o in batched] == [prompted.caption_batch([im])[0].text for im in images]
    assert [o.text for o in batched] != [o.text for o in plain]  # the prompt conditions generation
    assert not any(o.text.startswith("w5 w6") for o in batched)


def test_florence2_task_prompt_and_batching(florence2_dir, images):
    backend = _backend(florence2_dir, max_new_tokens=5)
    assert backend.prompt == "<DETAILED_CAPTION>"  # the architecture's default task
    batched = backend.caption_batch(images)
    assert all(isinstance(o.text, str) and o.text for o in batched)
    assert [o.text for o in batched] == [backend.caption_batch([im])[0].text for im in images]
    other_task = _backend(florence2_dir, max_new_tokens=5, prompt="<CAPTION>")
    assert other_task.provenance()["params"]["prompt"] == "<CAPTION>"
    assert len(other_task.caption_batch(images[:2])) == 2


def test_provenance_names_model_and_generation_params(blip_dir):
    backend = _backend(blip_dir, num_beams=2)
    prov = backend.provenance()
    assert set(prov) == {"backend", "model", "revision", "params"}
    assert prov["backend"] == "hf-caption"
    assert prov["model"] == str(blip_dir.resolve())
    assert prov["params"]["model_type"] == "blip"
    assert prov["params"]["num_beams"] == 2 and prov["params"]["max_new_tokens"] == 8
    assert prov["params"]["dtype"] == "float32" and prov["params"]["device"] == "cpu"


def test_empty_batch_returns_empty_list(blip_dir):
    assert _backend(blip_dir).caption_batch([]) == []


def test_vlm_folder_is_refused_with_pointer_to_hf_vlm(llava_dir):
    with pytest.raises(BackendError, match="model_type 'llava'.*hf-vlm"):
        _backend(llava_dir)


def test_unknown_option_suggests_the_nearest_key(blip_dir):
    with pytest.raises(BackendError, match="max_new_token.*did you mean 'max_new_tokens'"):
        get_backend("hf-caption", model=str(blip_dir), vocab=EMPTY_VOCAB, options={"max_new_token": 4})


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(BackendError, match="not a folder"):
        _backend(tmp_path / "nope")
    with pytest.raises(BackendError, match="no config.json"):
        _backend(tmp_path)


def test_half_precision_on_cpu_is_an_error(blip_dir):
    with pytest.raises(BackendError, match="float16 needs a GPU"):
        get_backend("hf-caption", model=str(blip_dir), vocab=EMPTY_VOCAB, dtype="float16")


def test_missing_gpu_is_an_error_not_a_fallback(blip_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="no CUDA GPU"):
        get_backend("hf-caption", model=str(blip_dir), vocab=EMPTY_VOCAB, device="cuda")


def test_unreachable_hub_id_is_a_clear_error():
    # tests/conftest.py sets HF_HUB_OFFLINE=1, so an id that is not in the local cache cannot load.
    with pytest.raises(BackendError, match="cannot fetch config.json of 'lorastudio-tests/no-such-model'"):
        _backend("lorastudio-tests/no-such-model")
