"""The training form (P5) and the config a studio run trains with, in one place.

The form has the request's base fields (steps, rank, learning rate, ...) and, per served
family, the typed training config keys a user of that family tunes. Those fields are
generated from `TrainConfig`'s schema: their input kind, bounds, choices and the same
descriptions `lorastudio init-config` prints; their defaults are what the worker would use.
"""

from __future__ import annotations

import types
import typing
from typing import Any

# Each base field is the typed training config key it becomes on the worker.
CONFIG_KEYS = {"steps": ("train", "max_steps"), "rank": ("network", "rank"), "learning_rate": ("train", "lr"),
               "checkpoint_every": ("save", "every_n_steps")}

# Config keys the form offers beyond the base fields, per served family. SD models take the
# DDPM loss knobs (Min-SNR, noise offset); Flux trains flow matching and has its own sigma
# sampling, dev guidance and T5 length (reference/flux.md §5.1); SDXL and Flux are large enough
# that gradient checkpointing decides whether a run fits.
FAMILY_OPTIONS: dict[str, tuple[str, ...]] = {
    "sd15": ("train.min_snr_gamma", "train.noise_offset", "network.targets", "data.flip"),
    "sd2": ("train.min_snr_gamma", "train.noise_offset", "network.targets", "data.flip"),
    "sdxl": ("train.min_snr_gamma", "train.noise_offset", "network.targets", "train.gradient_checkpointing",
             "data.flip"),
    "flux": ("flux.sigma_sampling", "flux.guidance", "flux.t5_max_length", "network.targets",
             "train.gradient_checkpointing", "data.flip"),
}

PRESETS = {
    "toy": {"label": "Toy model, quick check (CPU)", "steps": 20, "rank": 4, "learning_rate": 0.001, "resolution": 64,
            "checkpoint_every": 10},
    "sd15_style": {"label": "SD 1.5 style LoRA, 512 px", "steps": 1500, "rank": 16, "learning_rate": 0.0001,
                   "resolution": 512, "checkpoint_every": 250},
    "food_style": {"label": "Food-style recipe (SD 1.5, rank 32)", "steps": 2000, "rank": 32, "learning_rate": 0.0001,
                   "resolution": 512, "checkpoint_every": 250},
    "sdxl_style": {"label": "SDXL style LoRA, 1024 px", "steps": 1500, "rank": 16, "learning_rate": 0.0001,
                   "resolution": 1024, "checkpoint_every": 250},
    "flux_style": {"label": "FLUX.1 style LoRA, 1024 px (rank 16)", "steps": 1500, "rank": 16, "learning_rate": 0.0001,
                   "resolution": 1024, "checkpoint_every": 250},
}
# Which presets fit which served family (the server trains only the family it serves).
PRESET_FAMILIES = {"toy": ("sd15",), "sd15_style": ("sd15", "sd2"), "food_style": ("sd15", "sd2"),
                   "sdxl_style": ("sdxl",), "flux_style": ("flux",)}


class OptionError(ValueError):
    """A family option the form sent that the server does not take; the message names the key."""


def run_config(family: str, model: str, dataset: str, run_dir: str, params: dict) -> dict:
    """The training config a studio run writes to train.yaml: the form's fields over the service's
    own keys, then the family options, then the Advanced tab's sections (both vetted by the API)."""
    config: dict[str, Any] = {
        "model": {"family": family, "path": model},
        "data": {"datasets": [dataset]},
        "network": {"rank": params["rank"], "alpha": float(params["rank"]), "targets": "attn"},
        "train": {"max_steps": params["steps"], "batch_size": 1, "lr": params["learning_rate"], "seed": 0,
                  "cache": "memory", "scheduler": "constant"},
        "sample": {"at_start": False, "prompts": []},
        "save": {"every_n_steps": params["checkpoint_every"], "keep_last": 2},
        "output_dir": run_dir,
        "logging": {"every_n_steps": 1, "tensorboard": False},
        # The Run page's validation curve: fixed noise on a few training images, at each checkpoint.
        "validation": {"every_n_steps": params["checkpoint_every"] or max(1, params["steps"] // 10)},
    }
    for layer in (params.get("options") or {}, params.get("config") or {}):
        for section, values in layer.items():
            config[section] = {**config.get(section, {}), **values}
    return config


def config_descriptions() -> dict[str, str]:
    """The base fields' descriptions, the same ones `init-config` prints."""
    from lorastudio.config.train import TrainConfig

    sections = TrainConfig.model_fields
    return {name: sections[section].annotation.model_fields[key].description or ""
            for name, (section, key) in CONFIG_KEYS.items()}


def option_fields(family: str) -> list[dict]:
    """The family's extra form fields, generated from the typed config: name (`section.key`),
    input kind (number / select / checkbox), bounds or choices, whether empty means null, the
    default a studio run uses, and the `init-config` description."""
    from lorastudio.config.train import TrainConfig

    sample = {"rank": 16, "steps": 1, "learning_rate": 1e-4, "checkpoint_every": 1}
    resolved = TrainConfig.model_validate(run_config(family, "base", "dataset", "run", sample))
    fields = []
    for path in FAMILY_OPTIONS[family]:
        section, key = path.split(".")
        info = type(getattr(resolved, section)).model_fields[key]
        default = getattr(getattr(resolved, section), key)
        fields.append({"name": path, "label": f"{section} · {key.replace('_', ' ')}",
                       "description": info.description or "", "default": default,
                       **_input_of(info, family, key)})
    return fields


def _input_of(info: Any, family: str, key: str) -> dict:
    """How a config field is edited in the form, read from its annotation and bounds."""
    from lorastudio.config.flux import FLUX_TARGET_PRESETS
    from lorastudio.config.train import TARGET_PRESET_NAMES

    kinds = [a for a in _flatten(info.annotation) if a is not type(None)]
    nullable = type(None) in _flatten(info.annotation)
    if key == "targets":  # a preset name or a module list: the form offers the presets
        return {"input": "select", "choices": list(FLUX_TARGET_PRESETS if family == "flux" else TARGET_PRESET_NAMES),
                "nullable": False}
    if typing.get_origin(kinds[0]) is typing.Literal:
        return {"input": "select", "choices": list(typing.get_args(kinds[0])), "nullable": nullable}
    if kinds == [bool]:
        return {"input": "checkbox", "nullable": False}
    bounds = {"min": None, "max": None}
    for rule in info.metadata:
        for attr, slot in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max")):
            if getattr(rule, attr, None) is not None:
                bounds[slot] = getattr(rule, attr)
    return {"input": "number", "step": 1 if kinds == [int] else "any", "nullable": nullable, **bounds}


def _flatten(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _flatten(arg)]
    return [annotation]


def option_overrides(options: dict[str, Any], family: str) -> dict[str, dict]:
    """The form's family options as config sections, checked against the typed config; an
    unknown key or a bad value raises OptionError naming the key."""
    import difflib

    from pydantic import ValidationError

    from lorastudio.config.loader import deep_merge, format_validation_error
    from lorastudio.config.train import FAMILY_DEFAULTS, TrainConfig

    allowed = FAMILY_OPTIONS[family]
    nested: dict[str, dict] = {}
    for path, value in options.items():
        if path not in allowed:
            near = difflib.get_close_matches(path, allowed, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; this server ({family}) takes {', '.join(allowed)}"
            raise OptionError(f"options: '{path}' is not a field of the training form{hint}")
        section, key = path.split(".")
        nested.setdefault(section, {})[key] = value
    try:
        TrainConfig.model_validate(deep_merge(FAMILY_DEFAULTS[family], nested))
    except ValidationError as exc:
        raise OptionError(format_validation_error(TrainConfig, exc, "training form")[:2000]) from None
    except ValueError as exc:
        raise OptionError(str(exc)[:1000]) from None
    return nested
