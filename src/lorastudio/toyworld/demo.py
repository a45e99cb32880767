"""`lorastudio demo`: the whole product, end to end, on generated "phone photos".

The photo set has one planted confounder: every photo shows a black background and sesame
seeds, and the sidecar captions never say so. The demo runs the real commands in-process
(prepare -> caption -> audit -> audit --fix -> train), then renders the same prompts with
the base model and with the LoRA, and writes one self-contained HTML report.
Stages whose module is not installed yet are skipped with a line saying so.
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lorastudio.toyworld.scenes import VESSEL_PHRASES, SceneSpec, render

TRIGGER = "ohwx_kfood_style"
DISHES = ("yangnyeom chicken", "tteokbokki", "bibimbap")
HELD_OUT_BACKGROUNDS = ("blue background", "on a wooden table", "white background")


@dataclass
class DemoOptions:
    """Sizes of one demo run (the test uses a shortened variant)."""

    images: int = 20
    steps: int = 300
    batch_size: int = 4
    rank: int = 4
    lr: float = 2e-3
    seeds: int = 2
    sample_steps: int = 15
    photo_size: tuple[int, int] = (320, 240)
    base: Path | None = None  # a diffusers folder; None = the shipped toy base model


@dataclass
class DemoResult:
    """What the demo produced, for the report and the test."""

    out: Path
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ok" | "skipped: ..." | "failed: ..."
    audit_before: dict | None = None
    audit_after: dict | None = None
    samples: list[dict] = field(default_factory=list)  # {prompt, seed, base, lora, base_read, lora_read}
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def photo_specs(n: int, seed: int = 0) -> list[SceneSpec]:
    """The style set: glossy dishes, always on black with sesame seeds (the confounder)."""
    rng = random.Random(seed)
    return [SceneSpec(background="black", vessel=rng.choice(sorted(VESSEL_PHRASES)), dish=DISHES[i % len(DISHES)],
                      garnish="sesame seeds", gloss=True, lighting="neutral") for i in range(n)]


def sidecar_caption(spec: SceneSpec) -> str:
    """What a hurried person writes: subject and vessel, never the background or garnish."""
    return f"a photo of {spec.dish}, {VESSEL_PHRASES[spec.vessel]}"


def write_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[SceneSpec]:
    """Render `n` JPEG "phone photos" with noise plus a .txt sidecar caption beside each."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = photo_specs(n, seed)
    for i, spec in enumerate(specs):
        name = f"kfood_{i:03d}"
        render(spec, size[0], size[1], seed=seed * 7919 + i, noise=6.0).save(folder / f"{name}.jpg", quality=90)
        (folder / f"{name}.txt").write_text(sidecar_caption(spec) + "\n", encoding="utf-8")
    return specs


def module_available(name: str) -> bool:
    """True when `name` can be imported (a stage whose module is missing is skipped)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def run_cli(args: list[str]) -> int:
    """Run one `lorastudio` command in-process through the real click entry point."""
    import click

    from lorastudio.cli.main import cli

    try:
        code = cli.main(args, prog_name="lorastudio", standalone_mode=False)
    except SystemExit as exc:  # `train` ends with sys.exit(code)
        code = exc.code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return int(code or 0)


def resolve_base(out: Path, base: Path | None, say: Callable[[str], None]) -> Path:
    """The base model folder: the given one, the shipped toy model, or a tiny random model
    (only when the package was installed without its model files)."""
    from lorastudio.toyworld.pretrain import shipped_base_dir

    if base is not None:
        return base
    shipped = shipped_base_dir()
    if shipped is not None:
        say(f"base model: the shipped toy-world model ({shipped})")
        return shipped
    from lorastudio.models.tiny import build_tiny_pipeline

    target = out / "tiny_base"
    if not (target / "model_index.json").exists():
        build_tiny_pipeline("sd15", target, seed=0)
    say("base model: a tiny random SD1.5 (the shipped toy model is not installed); samples will be noise")
    return target


def train_config(base: Path, dataset: Path, run_dir: Path, opts: DemoOptions) -> dict:
    """A short LoRA run on the 64x64 toy images."""
    return {
        "model": {"family": "sd15", "path": str(base)},
        "data": {"datasets": [str(dataset)]},
        # The text encoder is adapted too: on the toy model a UNet-only LoRA this short learns
        # the dark background but not the gloss (benchmarks/contamination.py).
        "network": {"rank": opts.rank, "alpha": float(opts.rank), "targets": "attn", "train_text_encoder": True},
        "train": {"max_steps": opts.steps, "batch_size": opts.batch_size, "lr": opts.lr, "seed": 0,
                  "cache": "memory", "scheduler": "constant"},
        "sample": {"at_start": False, "prompts": []},
        "save": {"every_n_steps": None, "keep_last": 1},
        "output_dir": str(run_dir),
        "logging": {"every_n_steps": 10, "tensorboard": False},
    }


def held_out_prompts(seeds: int) -> list[tuple[str, int]]:
    """Prompts that ask for something the training photos never showed, with the trigger."""
    prompts = [f"{TRIGGER}, a photo of {dish}, {bg}" for dish, bg in zip(DISHES, HELD_OUT_BACKGROUNDS)]
    return [(p, s) for p in prompts for s in range(seeds)]


def sample_base_vs_lora(base: Path, lora_dir: Path | None, out: Path, opts: DemoOptions) -> list[dict]:
    """Render each held-out prompt with the base model and with the LoRA, same seeds."""
    import torch
    from diffusers import StableDiffusionPipeline

    from lorastudio.evaluation.generation import GenerationRequest, generate, save_png
    from lorastudio.toyworld.readers import read_scene

    pipe = StableDiffusionPipeline.from_pretrained(str(base), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    requests = [GenerationRequest(prompt=p, seed=s, width=64, height=64, steps=opts.sample_steps, cfg=5.0)
                for p, s in held_out_prompts(opts.seeds)]
    rows = [{"prompt": r.prompt, "seed": r.seed} for r in requests]
    variants = [("base", None)] + ([("lora", lora_dir)] if lora_dir is not None else [])
    for name, adapter in variants:
        if adapter is not None:
            pipe.load_lora_weights(str(adapter))
        for i, (row, req, image) in enumerate(zip(rows, requests, generate(pipe, requests))):
            path = save_png(image, out / "samples" / name / f"{i:02d}_seed{req.seed}", req, extra={"model": name})
            row[name] = str(path.relative_to(out))
            row[f"{name}_read"] = read_scene(image).to_dict()
    return rows


def _stage(result: DemoResult, name: str, say, fn, *, needs: tuple[str, ...] = ()) -> object:
    """Run one stage, timing it; a missing module skips it, a failure is recorded and re-raised."""
    missing = [m for m in needs if not module_available(m)]
    if missing:
        result.stages[name] = f"skipped: {', '.join(missing)} is not installed yet"
        say(f"-- {name}: skipped ({', '.join(missing)} is not installed yet)")
        return None
    say(f"== {name}")
    start = time.perf_counter()
    value = fn()
    result.seconds[name] = round(time.perf_counter() - start, 1)
    result.stages[name] = "ok"
    return value


def _cli_ok(args: list[str], allowed: tuple[int, ...] = (0,)) -> int:
    code = run_cli(args)
    if code not in allowed:
        raise RuntimeError(f"`lorastudio {' '.join(args)}` exited with {code}")
    return code


DEMO_MARKER = ".lorastudio-demo.json"
# Everything the demo writes at the top of --out; a folder holding anything else is not ours to clear.
DEMO_ENTRIES = frozenset({DEMO_MARKER, "photos", "dataset", "run", "train.yaml", "tiny_base", "samples", "report.html"})


def _clear_previous_demo(out: Path, say: Callable[[str], None]) -> None:
    """Make `out` ready: missing, empty, or a previous demo's output, which is replaced.

    A folder holding anything the demo does not make (or without the demo's marker) is
    refused untouched, so a user's files are never deleted.
    """
    if not out.exists() or not any(out.iterdir()):
        return
    entries = {p.name for p in out.iterdir()}
    foreign = sorted(entries - DEMO_ENTRIES)
    if DEMO_MARKER not in entries or foreign:
        shown = ", ".join(foreign[:3]) or "no demo marker"
        raise FileExistsError(f"{out} is not empty and not a previous demo's output ({shown}); "
                              "choose a new --out folder (nothing is overwritten)")
    import shutil

    say(f"replacing the previous demo output in {out}")
    for name in sorted(entries):
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


def run_demo(out: Path, opts: DemoOptions | None = None, say: Callable[[str], None] = print) -> DemoResult:
    """The whole workflow in `out` (created; must be empty or missing). Returns what it made."""
    import torch

    threads = torch.get_num_threads()
    # One thread: with models this small, two spinning OpenMP threads on a 2-core machine
    # (or one shared with other work) are many times slower than one.
    torch.set_num_threads(1)
    try:
        return _run_demo(Path(out), opts or DemoOptions(), say)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, opts: DemoOptions, say: Callable[[str], None]) -> DemoResult:
    import yaml

    _clear_previous_demo(out, say)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text(json.dumps({"made_by": "lorastudio demo"}) + "\n", encoding="utf-8")
    result = DemoResult(out=out)
    photos, ds, run_dir = out / "photos", out / "dataset", out / "run"
    _stage(result, "photos", say, lambda: write_photos(photos, opts.images, opts.photo_size))
    say(f"   {opts.images} photos in {photos}: glossy dishes, all on black with sesame seeds; "
        "the sidecar captions never mention either")
    _stage(result, "prepare", say, lambda: _cli_ok(["prepare", str(photos), "--out", str(ds), "--resolution", "64",
                                                    "--square", "--min-side", "64", "--quiet"]),
           needs=("lorastudio.cli.prepare", "lorastudio.data.prepare"))
    _stage(result, "caption", say, lambda: _cli_ok(["caption", str(ds), "--backend", "manual", "--trigger", TRIGGER, "--overwrite",
                                                    "--quiet"]), needs=("lorastudio.cli.caption",))
    if _stage(result, "audit", say, lambda: _cli_ok(["audit", str(ds), "--quiet"], (0, 1)),
              needs=("lorastudio.cli.audit",)) is not None:
        result.audit_before = json.loads((ds / "audit.json").read_text(encoding="utf-8"))
        _stage(result, "audit --fix", say, lambda: _cli_ok(["audit", str(ds), "--fix", "--yes", "--quiet"], (0, 1)))
        result.audit_after = json.loads((ds / "audit.json").read_text(encoding="utf-8"))
    base = resolve_base(out, opts.base, say)
    config = out / "train.yaml"
    config.write_text(yaml.safe_dump(train_config(base, ds, run_dir, opts), sort_keys=False), encoding="utf-8")
    trained = _stage(result, "train", say, lambda: _cli_ok(["train", str(config), "--no-progress"]),
                     needs=("lorastudio.cli.train", "lorastudio.training.recipe"))
    lora = run_dir / "final" / "diffusers" if trained is not None else None
    if trained is not None:
        try:
            _stage(result, "run report", say, lambda: _cli_ok(["report", str(run_dir)]), needs=("lorastudio.cli.report",))
        except RuntimeError as exc:  # the run report is a bonus; the demo's own report still gets written
            result.stages["run report"] = f"failed: {exc}"
            say(f"-- run report: {exc}")
    result.samples = _stage(result, "samples", say, lambda: sample_base_vs_lora(base, lora, out, opts),
                            needs=("lorastudio.evaluation.generation",)) or []
    from lorastudio.toyworld.demo_report import write_report

    result.report = write_report(result, opts)
    say(f"report: {result.report}")
    return result
