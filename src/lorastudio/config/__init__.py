"""Typed configuration: closed pydantic schemas, YAML files and `key.sub=value` overrides."""

from lorastudio.config.loader import (
    ConfigError,
    Schema,
    commented_yaml,
    load_config,
    parse_overrides,
    write_resolved,
)

__all__ = ["ConfigError", "Schema", "commented_yaml", "load_config", "parse_overrides", "write_resolved"]
