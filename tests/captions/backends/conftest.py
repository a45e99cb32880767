"""Fixtures for the caption backend tests: tiny models built once per session, offline."""

from __future__ import annotations

import pytest

import tiny_caption_models as tiny


@pytest.fixture(scope="session")
def blip_dir(tmp_path_factory):
    """A saved tiny BLIP captioner folder."""
    return tiny.build_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory):
    """A saved tiny BLIP-2 (OPT) captioner folder."""
    return tiny.build_blip2(tmp_path_factory.mktemp("blip2"))


@pytest.fixture(scope="session")
def git_dir(tmp_path_factory):
    """A saved tiny GIT captioner folder."""
    return tiny.build_git(tmp_path_factory.mktemp("git"))


@pytest.fixture(scope="session")
def florence2_dir(tmp_path_factory):
    """A saved tiny native Florence-2 folder."""
    return tiny.build_florence2(tmp_path_factory.mktemp("florence2"))


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
    """A saved tiny LLaVA (JoyCaption architecture) folder."""
    return tiny.build_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="session")
def idefics3_dir(tmp_path_factory):
    """A saved tiny Idefics3 (SmolVLM architecture) folder."""
    return tiny.build_idefics3(tmp_path_factory.mktemp("idefics3"))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A saved tiny CLIP folder with the shipped offline tokenizer."""
    return tiny.build_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def images():
    """Four differently sized, differently coloured RGB images."""
    return tiny.sample_images(4)
