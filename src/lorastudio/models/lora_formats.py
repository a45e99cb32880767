"""Which trainer wrote a LoRA file, the older diffusers layout, and whether a LoRA fits a model.

People bring LoRAs from kohya sd-scripts, LyCORIS, the diffusers training examples (old and
new key styles), ai-toolkit and others. `detect_format` names the style from the key names
alone, so every command can say what a file is before anything is loaded; `check_fit`
compares a parsed LoRA's shapes with the modules of the model it is about to be applied to,
so a LoRA made for another base fails with one sentence instead of a page of "size
mismatch" lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

COMPONENT_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")


@dataclass(frozen=True)
class LoraFormat:
    """A LoRA key style: its name, a description, and who can use it."""

    name: str
    label: str
    readable: bool  # lorastudio parses it (inspect details, export, fit check)
    diffusers_loads: bool  # pipe.load_lora_weights applies it to an SD / SDXL UNet


FORMATS = {f.name: f for f in (
    LoraFormat("kohya", "kohya LoRA (lora_unet_ / lora_te_ keys)", True, True),
    LoraFormat("kohya-locon", "LyCORIS LoCon (kohya keys, convolutions included)", True, True),
    LoraFormat("kohya-dora", "DoRA in kohya keys (dora_scale)", False, True),
    LoraFormat("diffusers", "diffusers / PEFT LoRA (lora_A / lora_B keys)", True, True),
    LoraFormat("diffusers-old", "older diffusers LoRA (.lora.down / .lora.up keys, the old training examples)",
               True, True),
    LoraFormat("lycoris-loha", "LyCORIS LoHa (hada_w1 / hada_w2 keys)", False, False),
    LoraFormat("lycoris-lokr", "LyCORIS LoKr (lokr_w1 / lokr_w2 keys)", False, False),
    LoraFormat("lycoris-tucker", "LyCORIS LoCon with Tucker decomposition (lora_mid keys)", False, False),
    LoraFormat("lycoris-full", "LyCORIS full weight difference (diff keys)", False, False),
    LoraFormat("lycoris-ia3", "LyCORIS (IA)^3 (on_input keys)", False, False),
    LoraFormat("lycoris-glora", "LyCORIS GLoRA (a1 / b1 keys)", False, False),
    LoraFormat("oft", "OFT / BOFT (oft_blocks keys)", False, False),
    LoraFormat("flux", "FLUX.1 LoRA (diffusers/PEFT, kohya/BFL fused, BFL-named PEFT, OneTrainer or XLabs keys)", True, True),
    LoraFormat("transformer", "a LoRA for a transformer model such as Flux or SD3 (transformer / double_blocks keys)",
               False, False),
    LoraFormat("unknown", "not a LoRA key style lorastudio knows", False, False),
)}

_LYCORIS_MARKERS = (
    ("lycoris-loha", (".hada_w1_a", ".hada_w2_a")),
    ("lycoris-lokr", (".lokr_w1", ".lokr_w1_a", ".lokr_w2", ".lokr_w2_a")),
    ("lycoris-tucker", (".lora_mid.weight",)),
    ("oft", (".oft_blocks", ".oft_diag", ".oft_R")),
    ("lycoris-full", (".diff", ".diff_b")),
    ("lycoris-ia3", (".on_input",)),
    ("lycoris-glora", (".a1.weight", ".b1.weight")),
    ("kohya-dora", (".dora_scale",)),
)
_OLD_DIFFUSERS = re.compile(r"\.(lora|lora_linear_layer)\.(down|up)\.weight$|_lora\.(down|up)\.weight$")
_TRANSFORMER_PREFIXES = ("transformer.", "lora_transformer_", "diffusion_model.", "lora_unet_double_blocks_",
                         "lora_unet_single_blocks_")


class UnsupportedLoraError(ValueError):
    """A LoRA style lorastudio cannot parse; `format` says which and whether diffusers can apply it."""

    def __init__(self, message: str, fmt: LoraFormat) -> None:
        super().__init__(message)
        self.format = fmt


def detect_format(keys: Iterable[str], shapes: Mapping[str, tuple[int, ...]] | None = None,
                  metadata: Mapping[str, str] | None = None) -> LoraFormat:
    """Name the key style of a LoRA state dict from its key names (and down-weight shapes)."""
    keys = list(keys)
    if any(k.startswith(_TRANSFORMER_PREFIXES) for k in keys):
        return FORMATS["transformer"]
    for name, markers in _LYCORIS_MARKERS:
        if any(k.endswith(markers) for k in keys):
            return FORMATS[name]
    if keys and all(k.startswith(_KOHYA_PREFIXES) for k in keys):
        if _is_locon(keys, shapes or {}, metadata or {}):
            return FORMATS["kohya-locon"]
        return FORMATS["kohya"]
    if any(".lora_A." in k for k in keys):
        return FORMATS["diffusers"] if all(k.startswith(COMPONENT_PREFIXES) for k in keys) else FORMATS["unknown"]
    if any(_OLD_DIFFUSERS.search(k) for k in keys):
        return FORMATS["diffusers-old"]
    return FORMATS["unknown"]


def _is_locon(keys: list[str], shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> bool:
    if "lycoris" in metadata.get("ss_network_module", ""):
        return True
    downs = (shapes.get(k, ()) for k in keys if k.endswith(".lora_down.weight"))
    return any(len(s) == 4 and s[2:] != (1, 1) for s in downs)


def unsupported_message(path: Any, fmt: LoraFormat, modules: int, example_key: str = "") -> str:
    """One line saying what an unreadable LoRA file is and what can use it."""
    if fmt.name == "unknown":
        return (f"{path}: not a LoRA file lorastudio knows: keys such as '{example_key}' are neither kohya "
                "(lora_unet_ / lora_te_), diffusers / PEFT (lora_A / lora_B) nor LyCORIS")
    where = ("diffusers can apply it, so `lorastudio generate` and `enhance` load it as it is"
             if fmt.diffusers_loads else "diffusers cannot apply it either; ComfyUI or A1111 with LyCORIS support can")
    return (f"{path}: a {fmt.label}, {modules} modules; lorastudio converts plain LoRA, LoCon and the diffusers "
            f"formats only ({where})")


# ---------------------------------------------------------------------------- older diffusers keys

_PROC_NAMES = {"unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
               "text": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}}
_OLD_KEY = re.compile(r"^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")
_OLD_PROC_KEY = re.compile(r"^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.(?:processor\.)?"
                           r"(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def parse_old_diffusers(tensors: Mapping[str, Any]) -> list[tuple[str, str, Any, Any, float]]:
    """`(component, path, down, up, alpha)` for the older diffusers key styles.

    Covers `<component>.<module>.lora.down.weight` (LoRACompatibleLinear / Conv),
    `.lora_linear_layer.down.weight` (text encoders) and the attention-processor style
    `<block>.attn1.processor.to_q_lora.down.weight`; keys without a component prefix
    (the first UNet-only files) are UNet keys. An `<name>.alpha` key sets alpha, else alpha = rank.
    """
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    used: set[str] = set()
    for key, value in tensors.items():
        proc = _OLD_PROC_KEY.match(key)
        plain = None if proc else _OLD_KEY.match(key)
        if proc:
            component, block, proj, side = proc[1] or "unet", proc[2], proc[3], proc[4]
            names = _PROC_NAMES["unet" if component == "unet" else "text"]
            path, stem = f"{block}.{names[proj]}", key[: key.index(f"{proj}_lora.")] + f"{proj}_lora"
        elif plain:
            component, path, side = plain[1] or "unet", plain[2], plain[3]
            stem = key[: -len(f".{side}.weight")]
        else:
            continue
        if component != "unet" and not path.startswith("text_model."):
            path = "text_model." + path
        entry = pairs.setdefault((component, path), {})
        entry[side] = value
        entry["stems"] = entry.get("stems", set()) | {stem}
        used.add(key)
    modules = []
    for (component, path), entry in sorted(pairs.items()):
        if "down" not in entry or "up" not in entry:
            raise ValueError(f"{component}.{path}: needs both a down and an up weight")
        alpha = float(entry["down"].shape[0])
        for stem in entry["stems"]:
            for alpha_key in (f"{stem}.alpha", stem.rsplit(".", 1)[0] + ".alpha"):
                if alpha_key in tensors:
                    alpha = float(tensors[alpha_key].item())
                    used.add(alpha_key)
        modules.append((component, path, entry["down"], entry["up"], alpha))
    leftover = sorted(set(tensors) - used)
    if leftover:
        raise ValueError(f"unsupported keys in an older diffusers LoRA: {', '.join(leftover[:5])}")
    return modules


# ---------------------------------------------------------------------------- fit

_FAMILY_NAMES = {"sd15": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


def _find_module(model: Any, path: str) -> Any:
    for candidate in (path, path.removeprefix("text_model.")):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def _mismatch(module: Any, down: Any, up: Any) -> str | None:
    """Why a LoRA pair does not fit `module` (an nn.Linear or nn.Conv2d), or None when it does."""
    if module is None:
        return "the model has no such module"
    if hasattr(module, "in_features"):
        want_in, want_out = module.in_features, module.out_features
    elif hasattr(module, "in_channels"):
        want_in, want_out = module.in_channels, module.out_channels
    else:
        return f"the model's module is a {type(module).__name__}, not a Linear or Conv2d"
    got_in, got_out = int(down.shape[1]), int(up.shape[0])
    if (got_in, got_out) != (want_in, want_out):
        return f"LoRA {got_in}->{got_out}, model {want_in}->{want_out}"
    return None


def check_fit(lora: Any, components: Mapping[str, Any], model_name: str, model_family: str) -> None:
    """Raise ValueError in one line when `lora` (a LoraFile) does not fit the model's components.

    `components` maps "unet" / "text_encoder" / "text_encoder_2" to the loaded modules;
    `model_family` is a short description such as "SDXL" or "SD1.x/2.x".
    """
    bad: list[tuple[str, str]] = []
    for m in lora.modules:
        model = components.get(m.component)
        reason = f"the model has no {m.component}" if model is None else _mismatch(_find_module(model, m.path),
                                                                                   m.down, m.up)
        if reason:
            bad.append((f"{m.component}.{m.path}", reason))
    if not bad:
        return
    family = _FAMILY_NAMES.get(lora.family, lora.family)
    article = "an" if family[:1] in "AEFHILMNORSX" else "a"
    first, why = bad[0]
    raise ValueError(f"{lora.path}: this LoRA does not fit {model_name}: it looks like {article} {family} LoRA "
                     f"({lora.format}, {len(lora.modules)} modules) and the model is {model_family}; "
                     f"{len(bad)} of {len(lora.modules)} modules do not match (first: {first}: {why})")
