"""Fixed-seed grids of prompts x LoRA scales x checkpoints for one training run.

One base pipeline is loaded once; each checkpoint's adapter is loaded, rendered at every
scale, and deleted again. Scale 0 is the base model, so it is rendered once per
(prompt, seed) and reused in every row. Outputs (paths relative to the run dir):

- `grids/cells/<checkpoint>/p<i>-seed<s>-x<scale>.png` (generation parameters in metadata),
- `grids/grid-p<i>-seed<s>.png`: rows = checkpoints, columns = scales, labelled,
- `grids/index.json`: prompts, scales, seeds, checkpoints and every file written.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lorastudio.evaluation.generation import GenerationRequest, generate, save_png

if TYPE_CHECKING:
    from PIL import Image

RESOLVED_CONFIG = "config.resolved.yaml"
INDEX = "index.json"


class RunError(ValueError):
    """A run dir (or prompts file) that cannot be sampled; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    """A saved adapter of a run: `step_N` or `final`, and the folder holding it."""

    label: str
    step: int | None
    path: Path


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's `config.resolved.yaml` as a plain dict."""
    path = Path(run_dir) / RESOLVED_CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir}: no {RESOLVED_CONFIG}; is this a `lorastudio train` output dir?")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a mapping at the top level")
    return data


def list_run_checkpoints(run_dir: Path, which: str = "all") -> list[Checkpoint]:
    """Complete checkpoints of the run, oldest first, then `final/`.

    `which`: `all`, `last` (final/ when present, else the newest checkpoint) or a
    comma-separated list of steps (`2,4`). Incomplete checkpoints are skipped with a warning.
    """
    from lorastudio.training import checkpoint as ckpt

    found = []
    for path in [*ckpt.list_checkpoints(run_dir), Path(run_dir) / "final"]:
        if not path.is_dir():
            continue
        problem = ckpt.verify(path)
        if problem:
            print(f"skipping {path}: {problem}", file=sys.stderr)
            continue
        step = ckpt.step_of(path)
        found.append(Checkpoint(path.name, step if step >= 0 else _final_step(path), path))
    if not found:
        raise RunError(f"{run_dir}: no complete checkpoint (checkpoints/step_N or final/)")
    if which == "all":
        return found
    if which == "last":
        return found[-1:]
    try:
        steps = {int(s) for s in which.split(",") if s.strip()}
    except ValueError:
        raise RunError(f"--checkpoints '{which}': use all, last or a list of steps like 2,4") from None
    chosen = [c for c in found if c.label.startswith("step_") and c.step in steps]
    missing = steps - {c.step for c in chosen}
    if missing:
        raise RunError(f"--checkpoints: no complete checkpoint for step(s) {sorted(missing)}; have {[c.label for c in found]}")
    return chosen


def _final_step(path: Path) -> int | None:
    try:
        return int(json.loads((path / "COMPLETE.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def config_requests(run_cfg: dict[str, Any]) -> list[GenerationRequest]:
    """The sample prompts of a resolved training config, with section defaults filled in."""
    sample = run_cfg.get("sample") or {}
    return [
        GenerationRequest(
            prompt=p["prompt"], negative_prompt=p.get("negative_prompt") or "", seed=int(p.get("seed") or 0),
            width=p.get("width") or sample.get("width", 512), height=p.get("height") or sample.get("height", 512),
            steps=p.get("steps") or sample.get("steps", 25), cfg=p["cfg"] if p.get("cfg") is not None else sample.get("cfg", 7.0),
        )
        for p in sample.get("prompts") or []
    ]


def read_prompts_file(path: Path, defaults: GenerationRequest) -> list[GenerationRequest]:
    """Prompts from a `.txt` file (one a line, `#` comments) or a YAML/JSON list of strings or
    mappings with `prompt`, `negative_prompt`, `seed`; other settings come from `defaults`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RunError(f"--prompts {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        items = yaml.safe_load(text)
        if not isinstance(items, list):
            raise RunError(f"{path}: expected a list of prompts")
    else:
        items = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    requests = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise RunError(f"{path}: entry {i} needs a 'prompt' string")
        unknown = set(item) - {"prompt", "negative_prompt", "seed"}
        if unknown:
            raise RunError(f"{path}: entry {i} has unknown key(s) {sorted(unknown)}; allowed: prompt, negative_prompt, seed")
        requests.append(replace(defaults, prompt=item["prompt"], negative_prompt=item.get("negative_prompt", ""),
                                seed=int(item.get("seed", defaults.seed))))
    if not requests:
        raise RunError(f"{path}: holds no prompts")
    return requests


def expand_seeds(requests: list[GenerationRequest], seeds: list[int] | None) -> list[GenerationRequest]:
    """Each request once per seed in `seeds` (None keeps every request's own seed)."""
    if not seeds:
        return list(requests)
    return [replace(r, seed=s) for r in requests for s in seeds]


def _scale_label(scale: float) -> str:
    return f"{scale:g}"


def compose_grid(rows: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str) -> Image.Image:
    """Paste equally sized images into a labelled grid (header row of scales, label column)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    w, h = rows[0][0].size
    label_w, head_h, title_h, pad = 64, 14, 14, 2
    grid = PILImage.new("RGB", (label_w + len(col_labels) * (w + pad), title_h + head_h + len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((2, 1), title[:120], fill="black", font=font)
    for c, label in enumerate(col_labels):
        draw.text((label_w + c * (w + pad) + 2, title_h + 1), f"x{label}", fill="black", font=font)
    for r, (images, label) in enumerate(zip(rows, row_labels, strict=True)):
        y = title_h + head_h + r * (h + pad)
        draw.text((2, y + h // 2 - 5), label[:10], fill="black", font=font)
        for c, image in enumerate(images):
            grid.paste(image.resize((w, h)) if image.size != (w, h) else image, (label_w + c * (w + pad), y))
    return grid


def render_grid(pipe: Any, checkpoints: list[Checkpoint], requests: list[GenerationRequest], scales: list[float],
                out_dir: Path, run_dir: Path, *, device: str, base_model: str, show: bool = True) -> tuple[dict, dict]:
    """Render every (checkpoint, scale, request) and write cells, grids and `index.json`.

    Returns the index and the images keyed by (checkpoint label, scale, request index).
    """
    from tqdm import tqdm

    from lorastudio.evaluation.loading import LoraSpec, load_embeddings_file, method_files, set_scales
    from lorastudio.models.embeddings import unload_embedding

    images: dict[tuple[str, float, int], Image.Image] = {}
    cells = []
    total = len(requests) * (int(0.0 in scales) + len(checkpoints) * sum(1 for s in scales if s != 0.0))
    bar = tqdm(total=total, desc="sample grid", unit="img", disable=not show)

    def cell(label: str, scale: float, i: int, req: GenerationRequest, step: int | None) -> None:
        image = generate(pipe, [req], device=device)[0]
        bar.update(1)
        path = save_png(image, out_dir / "cells" / label / f"p{i}-seed{req.seed}-x{_scale_label(scale)}.png", req,
                        extra={"checkpoint": label, "step": step, "lora_scale": scale, "base_model": base_model})
        images[(label, scale, i)] = image
        cells.append({"checkpoint": label, "step": step, "scale": scale, "request": i, "file": _rel(path, run_dir)})

    if 0.0 in scales:
        set_scales(pipe, [])
        for i, req in enumerate(requests):
            cell("base", 0.0, i, req, 0)
    for ck in checkpoints:
        # TI / pivotal checkpoints carry trigger embeddings (and a TI one no LoRA at all).
        lora, embeddings = method_files(ck.path)
        triggers = [load_embeddings_file(pipe, e) for e in embeddings]
        spec = LoraSpec(path=lora, scale=1.0, name=f"ck_{ck.label}") if lora is not None else None
        if spec is not None:
            pipe.load_lora_weights(str(spec.path), adapter_name=spec.name)
        for scale in (s for s in scales if s != 0.0):
            set_scales(pipe, [replace(spec, scale=scale)] if spec is not None else [])
            for i, req in enumerate(requests):
                cell(ck.label, scale, i, req, ck.step)
        # One adapter at a time keeps memory flat however many checkpoints a run has.
        if spec is not None:
            pipe.delete_adapters(spec.name)
        for trigger in triggers:
            unload_embedding(pipe, trigger)
    bar.close()
    grids = _write_grids(images, checkpoints, requests, scales, out_dir, run_dir)
    index = {
        "run_dir": str(run_dir), "base_model": base_model, "scales": scales,
        "checkpoints": [{"label": c.label, "step": c.step, "file": _rel(_adapter_file(c.path), run_dir)} for c in checkpoints],
        "requests": [vars(r) for r in requests], "grids": grids, "cells": cells,
    }
    from lorastudio.data.manifest import atomic_write_text

    atomic_write_text(out_dir / INDEX, json.dumps(index, indent=1) + "\n")
    return index, images


def _write_grids(images: dict, checkpoints: list[Checkpoint], requests: list[GenerationRequest], scales: list[float],
                 out_dir: Path, run_dir: Path) -> list[dict]:
    grids = []
    for i, req in enumerate(requests):
        rows = [[images[("base", 0.0, i)] if s == 0.0 else images[(c.label, s, i)] for s in scales] for c in checkpoints]
        grid = compose_grid(rows, [c.label for c in checkpoints], [_scale_label(s) for s in scales], f"{req.prompt} (seed {req.seed})")
        path = save_png(grid, out_dir / f"grid-p{i}-seed{req.seed}.png", req, extra={"grid": "rows=checkpoints, columns=scales"})
        grids.append({"request": i, "prompt": req.prompt, "seed": req.seed, "file": _rel(path, run_dir),
                      "rows": [c.label for c in checkpoints], "columns": scales})
    return grids


def _adapter_file(ckpt_dir: Path) -> Path:
    from lorastudio.evaluation.loading import method_files

    lora, embeddings = method_files(ckpt_dir)
    return lora if lora is not None else embeddings[0]


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def free_dir(path: Path) -> Path:
    """`path` if it is absent or empty, else `path-2`, `path-3`...: earlier results stay."""
    if not path.exists() or not any(path.iterdir()):
        return path
    n = 2
    while (candidate := path.with_name(f"{path.name}-{n}")).exists():
        n += 1
    return candidate


def run_requests(run_cfg: dict[str, Any], prompts: Path | None, seeds: list[int] | None, overrides: dict[str, Any]) -> list:
    """The requests to render: --prompts or the run's sample prompts, times --seeds, with overrides."""
    sample = run_cfg.get("sample") or {}
    defaults = GenerationRequest("", "", 0, sample.get("width", 512), sample.get("height", 512), sample.get("steps", 25), sample.get("cfg", 7.0))
    if prompts is not None:
        requests = read_prompts_file(prompts, defaults)
    else:
        requests = config_requests(run_cfg)
        if not requests:
            raise RunError("the run's config has no sample.prompts; pass --prompts FILE (one prompt per line)")
    given = {k: v for k, v in overrides.items() if v is not None}
    return [replace(r, **given) for r in expand_seeds(requests, seeds)]


def sample_run(run_dir: Path, *, prompts: Path | None, scales: list[float], which: str, seeds: list[int] | None,
               overrides: dict[str, Any], out_dir: Path | None, device: str, show: bool) -> tuple[dict, dict, dict]:
    """Load the run's base model once and render the grid; returns (index, images, run config)."""
    from lorastudio.evaluation.loading import load_pipeline, resolve_device

    run_cfg = read_run_config(run_dir)
    requests = run_requests(run_cfg, prompts, seeds, overrides)
    checkpoints = list_run_checkpoints(run_dir, which)
    model = run_cfg.get("model") or {}
    device = resolve_device(device)
    pipe = load_pipeline(str(model.get("path")), family=model.get("family", "auto"), device=device, dtype=model.get("dtype", "float32"))
    out = out_dir if out_dir is not None else free_dir(run_dir / "grids")
    index, images = render_grid(pipe, checkpoints, requests, scales, out, run_dir, device=device, base_model=str(model.get("path")), show=show)
    return index, images, run_cfg
