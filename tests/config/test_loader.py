"""The config system: closed schemas, YAML, overrides, errors that name the key."""

from __future__ import annotations

from typing import Literal

import pytest
import yaml
from pydantic import Field

from lorastudio.config import ConfigError, Schema, commented_yaml, load_config, parse_overrides, write_resolved


class Optim(Schema):
    lr: float = Field(1e-4, description="learning rate")
    scheduler: Literal["constant", "cosine"] = Field("constant", description="lr schedule")


class Network(Schema):
    rank: int = Field(4, ge=1, description="LoRA rank")
    targets: list[str] = Field(default_factory=lambda: ["to_q"], description="modules")


class Root(Schema):
    name: str = Field("run", description="run name\nshown in logs")
    optim: Optim = Field(default_factory=Optim, description="optimizer section")
    network: Network = Field(default_factory=Network)


def test_overrides_are_nested_and_typed():
    got = parse_overrides(["optim.lr=1e-3", "network.targets=[a, b]", "name=x", "network.rank=8"])
    assert got == {"optim": {"lr": 1e-3}, "network": {"targets": ["a", "b"], "rank": 8}, "name": "x"}
    assert isinstance(got["optim"]["lr"], float)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["optim.lr"])


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\nnetwork:\n  rank: 2\n")
    cfg = load_config(Root, path, ["network.rank=16"])
    assert cfg.optim.lr == 0.5 and cfg.network.rank == 16 and cfg.name == "run"


def test_unknown_key_suggests_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(Root, path)
    msg = str(info.value)
    assert "optim.lrr: unknown key" in msg and "did you mean 'optim.lr'" in msg and str(path) in msg


def test_unknown_top_level_key_from_override():
    with pytest.raises(ConfigError, match="did you mean 'network'"):
        load_config(Root, None, ["netwrk.rank=3"])


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(Root, None, ["network.rank=0", "optim.scheduler=cosin"])
    msg = str(info.value)
    assert "network.rank" in msg and "greater than or equal to 1" in msg
    assert "optim.scheduler" in msg and "cosin" in msg


def test_bad_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(Root, path)


def test_non_mapping_yaml_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Root, path)


def test_yaml_tags_that_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Root, path)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Root, None, ["optim.lr=0.25"])
    path = write_resolved(cfg, tmp_path / "out")
    again = load_config(Root, path)
    assert again == cfg
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_commented_yaml_documents_every_key_and_parses_back():
    cfg = Root()
    text = commented_yaml(cfg)
    assert "# learning rate" in text and "# run name" in text and "# shown in logs" in text
    assert yaml.safe_load(text) == cfg.model_dump(mode="json")
