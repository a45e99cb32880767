"""Load a closed, typed config from YAML plus command-line overrides.

Every stage uses the same path: `load_config(Schema, path, ["a.b=1"])`. Unknown keys and
wrong types raise `ConfigError` naming the dotted key and, for typos, the nearest valid key.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config problem the user can fix; the message names the key and what to do."""


class Schema(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn `["train.lr=1e-4", "data.flip=true"]` into a nested dict.

    Values are parsed as YAML scalars/lists (`1e-4` -> float, `[a,b]` -> list, `null` -> None).
    """
    result: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' has an empty key part")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str) and raw.strip() and _looks_numeric(raw.strip()):
            value = float(raw.strip())
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a sub-key of a value that is not a section")
        node[parts[-1]] = value
    return result


def _looks_numeric(text: str) -> bool:
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    try:
        float(text)
    except ValueError:
        return False
    return True


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `extra` merged in; nested dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with `yaml.safe_load`; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not a {type(data).__name__}")
    return data


def load_config(
    schema: type[T],
    path: Path | str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> T:
    """Validate `base` <- YAML file <- overrides against `schema` and return the model."""
    data: dict[str, Any] = dict(base or {})
    source = "command line"
    if path is not None:
        data = deep_merge(data, read_yaml(Path(path)))
        source = str(path)
    data = deep_merge(data, parse_overrides(list(overrides)))
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(schema, exc, source)) from None


def format_validation_error(schema: type[BaseModel], exc: ValidationError, source: str) -> str:
    """One line per problem: the dotted key, what is wrong, and a suggestion for typos."""
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _fields_at(schema, err["loc"][:-1])
            hint = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            msg = f"  {key}: unknown key"
            if hint:
                parent = ".".join(loc[:-1])
                msg += f"; did you mean '{parent + '.' if parent else ''}{hint[0]}'?"
            elif valid:
                msg += f"; valid keys here: {', '.join(sorted(valid))}"
            lines.append(msg)
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {json.dumps(got, default=str)[:60]})"
            lines.append(f"  {key}: {err['msg']}{shown}")
    return "\n".join(lines)


def _fields_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the sub-model reached by following `loc` from `schema`."""
    current: Any = schema
    for part in loc:
        model = _as_model(current)
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
    model = _as_model(current)
    return list(model.model_fields) if model is not None else []


def _as_model(annotation: Any) -> type[BaseModel] | None:
    """Find a BaseModel class inside an annotation such as `list[Model] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _as_model(arg)
        if found is not None:
            return found
    return None


def write_resolved(cfg: BaseModel, out_dir: Path | str, name: str = "config.resolved.yaml") -> Path:
    """Write the fully resolved config beside an output, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    target = out / name
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, target)
    return target


def commented_yaml(cfg: BaseModel, indent: int = 0) -> str:
    """Render a config as YAML with each field's description as a comment above it."""
    pad = "  " * indent
    out: list[str] = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if field.description:
            for line in field.description.splitlines():
                out.append(f"{pad}# {line}")
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:")
            out.append(commented_yaml(value, indent + 1))
            out.append("")
            continue
        dumped = _jsonable(value)
        if isinstance(dumped, list) and all(not isinstance(v, (dict, list)) for v in dumped):
            # JSON is valid YAML and keeps short lists on one line.
            out.append(f"{pad}{name}: {json.dumps(dumped, ensure_ascii=False)}")
            continue
        rendered = yaml.safe_dump({name: dumped}, sort_keys=False, default_flow_style=False, allow_unicode=True)
        out.extend(pad + line for line in rendered.rstrip("\n").splitlines())
    return "\n".join(out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value
    return value
