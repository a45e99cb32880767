"""What a worker does with each job kind: the real pipelines, or a timing stand-in.

`PipelineRunner` holds a text-to-image pipeline and an image-to-image one built from the
same components (`from_pipe`, weights shared), the LoRA LRU, and runs training jobs as a
`lorastudio train` child process (so cancel is the trainer's own Ctrl-C checkpoint and a
job that comes back after a lost worker resumes with `--resume auto`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from lorastudio.serving.files import content_path, read_content, store_bytes
from lorastudio.serving.served import served_model
from lorastudio.serving.trace import SAMPLE_ASKED, SAVE_ASKED, JobCanceled, JobFailed, Trace
from lorastudio.studio import trainform
from lorastudio.training.signals import SAMPLE_SIGNAL, SAVE_SIGNAL


def store_png(data_dir: Path, image: Any, info: dict) -> str:
    """Save an output PNG content-addressed; only generation facts go in its text chunk."""
    import io

    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("lorastudio", json.dumps(info, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    return store_bytes(data_dir, "outputs", buffer.getvalue(), "png")


def load_input(data_dir: Path, sha: str) -> Any:
    """A stored (already cleaned) input photo."""
    import io

    from PIL import Image

    data = read_content(data_dir, "inputs", sha, "png")
    if data is None:
        raise JobFailed("bad_input", "the job's input image is gone")
    return Image.open(io.BytesIO(data)).convert("RGB")


def lora_file(data_dir: Path, row: dict) -> Path:
    """The registered adapter's file, checked against its recorded SHA-256."""
    return checked_file(data_dir, "loras", row["sha256"], f"LoRA '{row['id']}'")


def checked_file(data_dir: Path, kind: str, sha: str, what: str) -> Path:
    """A content-addressed registered file, checked against its SHA-256 (`what` names it in errors)."""
    path = content_path(data_dir, kind, sha, "safetensors")
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        raise JobFailed("lora_unusable", f"{what} is registered but its file is missing") from None
    if digest != sha:
        raise JobFailed("lora_unusable", f"{what} changed on disk since it was registered")
    return path



class _Steps:
    """The step callback: an event and a trace entry per denoising step, and the cancel check."""

    def __init__(self, store: Any, job: Any, trace: Trace, total: int, image: int) -> None:
        self.store, self.job, self.trace, self.total, self.image = store, job, trace, total, image
        self.last = time.perf_counter()

    def __call__(self, pipe: Any, index: int, timestep: Any, kwargs: dict) -> dict:
        now = time.perf_counter()
        ms = round((now - self.last) * 1000, 2)
        self.last = now
        entry = {"i": index + 1, "n": self.total, "image": self.image, "ms": ms, "timestep": float(timestep)}
        latents = kwargs.get("latents")
        if latents is not None:
            entry.update(latent_mean=round(float(latents.mean()), 5), latent_std=round(float(latents.std()), 5),
                         finite=bool(latents.isfinite().all()))
        self.trace.add("denoise_step", **entry)
        self.store.add_event(self.job.id, "step", {"i": index + 1, "n": self.total, "image": self.image, "ms": ms})
        if self.store.cancel_requested(self.job.id):
            raise JobCanceled()
        return {}


class FakeRunner:
    """No model: sleeps `--fake-step-s` per step and writes a small deterministic PNG."""

    def __init__(self, args: Any, store: Any, data: Path) -> None:
        self.args, self.store, self.data = args, store, data
        self.cache: OrderedDict[str, str] = OrderedDict()  # the same LRU bookkeeping as the real runner

    def release_memory(self) -> None:
        """Nothing to release."""

    def _touch(self, lora_id: str, sha: str, trace: Trace) -> None:
        hit = self.cache.get(lora_id) == sha
        if hit:
            self.cache.move_to_end(lora_id)
        else:
            time.sleep(self.args.fake_step_s * 5)  # a load costs about five steps
            self.cache[lora_id] = sha
            while len(self.cache) > self.args.lora_cache:
                self.cache.popitem(last=False)
        self.store.bump("lora_cache_hits" if hit else "lora_cache_misses")
        trace.add("lora_load", id=lora_id, hit=hit)

    def run(self, job: Any, trace: Trace) -> dict:
        from PIL import Image

        if job.kind == "caption":  # captioning runs for real here too: it needs no served model
            from lorastudio.studio.captioning import run_captioning

            return run_captioning(self, job, trace)
        if job.kind == "audit":  # and so does the audit: pixel detectors and text rules
            from lorastudio.studio.datasets import run_audit_job

            return run_audit_job(self.data, self.args.model, job, trace)
        if job.kind == "evaluate":  # so does evaluate: the run's own config names the base model
            from lorastudio.studio.evaluating import run_evaluation

            return run_evaluation(self, job, trace)
        params = job.params
        for ref in params.get("loras", []):  # the same registry checks as the real runner
            row = self.store.get_lora(ref["id"])
            if row is None or row["sha256"] != ref["sha256"]:
                raise JobFailed("lora_unusable", f"LoRA '{ref['id']}' was deleted or replaced after the request")
            lora_file(self.data, row)
            self._touch(ref["id"], row["sha256"], trace)
        steps = int(params.get("steps", 20))
        images = []
        for k in range(int(params.get("n", 1))):
            for i in range(steps):
                time.sleep(self.args.fake_step_s)
                self.store.add_event(job.id, "step", {"i": i + 1, "n": steps, "image": k})
                if self.store.cancel_requested(job.id):
                    raise JobCanceled()
            seed = int(params.get("seed", 0)) + k
            shade = hashlib.sha256(f"{params.get('prompt')}|{seed}".encode()).digest()[:3]
            images.append(store_png(self.data, Image.new("RGB", (16, 16), tuple(shade)), {"seed": seed, "fake": True}))
        trace.add("fake_run", prompt=params.get("prompt"), steps=steps, images=len(images),
                  loras=[r["id"] for r in params.get("loras", [])])
        return {"images": images}


class PipelineRunner:
    """The real thing: diffusers pipelines on the worker's device."""

    def __init__(self, args: Any, store: Any, data: Path) -> None:
        import diffusers

        from lorastudio.evaluation.loading import PIPELINE_CLASSES, load_pipeline

        self.args, self.store, self.data = args, store, data
        self.device = args.device
        self.served = served_model(args.model, args.family)
        self.text2img = load_pipeline(args.model, family=args.family, device=self.device, progress=False)
        self.img2img = getattr(diffusers, PIPELINE_CLASSES["img2img"][self.served.pipeline_kind]).from_pipe(self.text2img)
        self.img2img.set_progress_bar_config(disable=True)
        self.control_img2img = self._controlnet_pipeline(getattr(args, "controlnet", ""))
        self.adapters: OrderedDict[str, str] = OrderedDict()  # lora id -> sha256 (+ embedding's), most recent last
        self.triggers: dict[str, str] = {}  # lora id -> the trigger word its loaded embedding answers to
        self.fingerprint = _fingerprint(args.model)

    def _controlnet_pipeline(self, source: str) -> Any:
        """img2img held to the photo's edges by a canny ControlNet, sharing the base pipeline's weights
        (so the request's LoRAs apply to it too); None when the server was started without one."""
        if not source:
            return None
        import diffusers

        from lorastudio.evaluation.loading import PIPELINE_CLASSES, load_controlnet

        kind = self.served.pipeline_kind
        if kind not in PIPELINE_CLASSES["controlnet_img2img"] or kind == "flux":
            raise RuntimeError(f"--controlnet: a ControlNet cannot be served with a {self.args.family} model")
        controlnet = load_controlnet(source).to(self.device)
        pipe = getattr(diffusers, PIPELINE_CLASSES["controlnet_img2img"][kind]).from_pipe(self.text2img,
                                                                                           controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def release_memory(self) -> None:
        """Give back cached GPU memory after an out-of-memory job."""
        import gc

        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def run(self, job: Any, trace: Trace) -> dict:
        if job.kind == "train":
            return run_training(self, job, trace)
        if job.kind == "caption":  # a CPU child process; needs nothing this runner loaded
            from lorastudio.studio.captioning import run_captioning

            return run_captioning(self, job, trace)
        if job.kind == "audit":  # in this process: it needs no model either
            from lorastudio.studio.datasets import run_audit_job

            return run_audit_job(self.data, self.args.model, job, trace)
        if job.kind == "evaluate":  # a child process too: `lorastudio evaluate` on the run folder
            from lorastudio.studio.evaluating import run_evaluation

            return run_evaluation(self, job, trace)
        specs = self._select_adapters(job.params.get("loras", []), trace,
                                      [job.params["prompt"], job.params.get("negative_prompt") or ""])
        trace.add("request", prompt=job.params["prompt"], seed=job.params["seed"], base_model=self.fingerprint,
                  loras=[{"id": r["id"], "sha256": r["sha256"], "scale": r["scale"]} for r in job.params.get("loras", [])])
        images = []
        for k in range(int(job.params.get("n", 1))):
            image = self._render(job, trace, k)
            with trace.span("store", image=k):
                info = {"prompt": job.params["prompt"], "seed": job.params["seed"] + k, "steps": job.params["steps"],
                        "guidance": job.params["guidance"], "loras": [[s.name, s.scale] for s in specs],
                        "base_model": self.fingerprint}
                if job.kind == "enhance":  # what made the after image, next to the before image's hash
                    info.update(strength=job.params["strength"], control=job.params.get("control", "none"),
                                control_scale=job.params.get("control_scale", 1.0),
                                input=job.params["image"], resolution=job.params.get("resolution"))
                images.append(store_png(self.data, image, info))
        return {"images": images}

    def _render(self, job: Any, trace: Trace, k: int) -> Any:
        import torch

        params = job.params
        generator = torch.Generator(device=self.device).manual_seed(int(params["seed"]) + k)
        steps = _Steps(self.store, job, trace, int(params["steps"]), k)
        encode = _EncodeTimer(self.text2img, trace)
        common = dict(prompt=params["prompt"], negative_prompt=params.get("negative_prompt") or None,
                      num_inference_steps=int(params["steps"]), guidance_scale=float(params["guidance"]),
                      generator=generator, output_type="pil", callback_on_step_end=steps, **self.served.call_kwargs)
        start = time.perf_counter()
        with encode, torch.no_grad():
            if job.kind == "enhance":
                out = self._enhance(params, common, trace)
            else:
                out = self.text2img(width=int(params["width"]), height=int(params["height"]), **common).images[0]
        trace.add("decode", ms=round((time.perf_counter() - steps.last) * 1000, 2), image=k)
        trace.add("generate", ms=round((time.perf_counter() - start) * 1000, 2), image=k)
        return out

    def _enhance(self, params: dict, common: dict, trace: Trace) -> Any:
        from PIL import Image

        from lorastudio.evaluation.enhance import working_size

        photo = load_input(self.data, params["image"])
        control = params.get("control", "none")
        if control != "none" and self.control_img2img is None:
            raise JobFailed("bad_input", "control=canny needs a ControlNet, which this server was not started with")
        w, h = working_size(photo.width, photo.height, int(params["resolution"]))
        multiple = self.served.size_multiple  # Flux: x8 VAE, then 2x2 packing
        w, h = max(multiple, w // multiple * multiple), max(multiple, h // multiple * multiple)
        trace.add("input", width=photo.width, height=photo.height, working=[w, h])
        init = photo.resize((w, h), Image.LANCZOS)
        if control == "canny":  # the same edge map `lorastudio enhance --control canny` conditions on
            from lorastudio.evaluation.enhance import canny_edges

            edges = Image.fromarray(canny_edges(init)).convert("RGB")
            scale = float(params.get("control_scale", 1.0))
            trace.add("control", kind="canny", scale=scale)
            out = self.control_img2img(image=init, control_image=edges, controlnet_conditioning_scale=scale,
                                       strength=float(params["strength"]), **common).images[0]
        else:
            out = self.img2img(image=init, strength=float(params["strength"]), **common).images[0]
        return out.resize(photo.size, Image.LANCZOS)

    def _select_adapters(self, refs: list[dict], trace: Trace, prompts: list[str] = ()) -> list:
        """Load (or reuse) every referenced LoRA / embedding / pivotal pair and set the scales."""
        from lorastudio.evaluation.loading import LoadError, LoraSpec, set_scales
        from lorastudio.serving.trigger_embeddings import embedding_spec, request_rows

        rows = request_rows(self.store, refs)
        for lora_id in [i for i, word in self.triggers.items() if i not in rows and _mentions(prompts, word)]:
            self._evict(lora_id)  # a loaded trigger the request does not reference must read as plain text
        specs = []
        for ref in refs:
            name, row = "ls_" + ref["id"].replace("-", "_"), rows[ref["id"]]
            version = row["sha256"] + (":" + row["embedding"]["sha256"] if row["embedding"] else "")
            start = time.perf_counter()
            hit = self.adapters.get(ref["id"]) == version
            if hit:
                self.adapters.move_to_end(ref["id"])
            else:
                spec = (embedding_spec(self.data, row, name, ref["scale"]) if row["embedding"] else
                        LoraSpec(path=lora_file(self.data, row), scale=ref["scale"], name=name))
                try:
                    self._load_adapter(spec, ref["id"], version)
                except LoadError as exc:
                    raise JobFailed("lora_unusable", str(exc).split(": ", 1)[-1]) from None
            self.store.bump("lora_cache_hits" if hit else "lora_cache_misses")
            trace.add("lora_load", id=ref["id"], hit=hit, ms=round((time.perf_counter() - start) * 1000, 2))
            specs.append(LoraSpec(path=Path(), scale=ref["scale"], name=name, has_lora=row["format"] != "embedding"))
        set_scales(self.text2img, [s for s in specs if s.has_lora])
        return specs

    def _load_adapter(self, spec: Any, lora_id: str, version: str) -> None:
        from lorastudio.evaluation.loading import apply_loras
        from lorastudio.models.embeddings import unload_embedding

        if lora_id in self.adapters:  # same id, new file: drop the old weights first
            self._evict(lora_id)
        for other in [i for i, word in self.triggers.items() if word in spec.triggers]:
            self._evict(other)  # one trigger word, one loaded embedding
        while len(self.adapters) >= self.args.lora_cache:
            self._evict(next(iter(self.adapters)))
        try:
            apply_loras(self.text2img, [spec])
        except Exception:
            # Never leave a half-applied adapter or embedding behind: the next job must see the base model.
            if spec.name in {n for names in self.text2img.get_list_adapters().values() for n in names}:
                self.text2img.delete_adapters(spec.name)
            for word in spec.triggers:
                unload_embedding(self.text2img, word)
            raise
        self.adapters[lora_id] = version
        if spec.triggers:
            self.triggers[lora_id] = spec.triggers[0]

    def _evict(self, lora_id: str) -> None:
        from lorastudio.models.embeddings import unload_embedding

        name = "ls_" + lora_id.replace("-", "_")
        if name in {n for names in self.text2img.get_list_adapters().values() for n in names}:
            self.text2img.delete_adapters(name)
        if lora_id in self.triggers:
            unload_embedding(self.text2img, self.triggers.pop(lora_id))
        self.adapters.pop(lora_id, None)


def _mentions(prompts: Any, word: str) -> bool:
    """Whether `word` appears as a whole word in any of the prompts."""
    import re

    return any(re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", p, re.IGNORECASE) for p in prompts)


class _EncodeTimer:
    """Times the text encoders' forward passes (the prompt-encode stage) with hooks."""

    def __init__(self, pipe: Any, trace: Trace) -> None:
        self.encoders = [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if e]
        self.trace, self.handles, self.spent = trace, [], 0.0

    def __enter__(self) -> "_EncodeTimer":
        for encoder in self.encoders:
            self.handles.append(encoder.register_forward_pre_hook(lambda *_: setattr(self, "_t", time.perf_counter())))
            self.handles.append(encoder.register_forward_hook(self._after))
        return self

    def _after(self, *_: Any) -> None:
        self.spent += time.perf_counter() - self._t

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.trace.add("text_encode", ms=round(self.spent * 1000, 2))


def _fingerprint(model: str) -> str:
    """A short id of the base model: SHA-256 over its config files and weight file sizes."""
    digest = hashlib.sha256()
    root = Path(model)
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes() if path.suffix == ".json" else str(path.stat().st_size).encode())
    else:
        digest.update(model.encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------- training


def _child(argv: list[str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """A child process that dies with the worker (PR_SET_PDEATHSIG on Linux)."""
    def die_with_parent() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            pass

    handle = open(log_path, "ab")
    return subprocess.Popen(argv, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                            env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})


def _cli(runner: PipelineRunner, job: Any, args: list[str], cwd: Path, log_path: Path) -> int:
    """Run a lorastudio command as a child, forwarding cancel as Ctrl-C and progress as events."""
    metrics = cwd / "run" / "metrics.jsonl"
    done = _logged_steps(metrics)  # a resumed run: steps an earlier attempt or job already reported
    reported = {kind: _logged_steps(metrics, key, none=-1) for kind, key in CHECK_ROWS.items()}  # a check may run at step 0
    seen = max((i for i, _, _ in runner.store.events_after(job.id, 0)), default=0)  # older asks are not replayed
    started_at, asked = done, set()
    proc = _child([sys.executable, "-m", "lorastudio", *args], cwd, log_path)
    announced: set[str] = set()
    interrupted = False
    while proc.poll() is None:
        time.sleep(0.5)
        if not interrupted and runner.store.cancel_requested(job.id):
            proc.send_signal(signal.SIGINT)  # the trainer checkpoints, then exits
            interrupted = True
        fresh = runner.store.events_after(job.id, seen)
        seen = max([seen, *(i for i, _, _ in fresh)])
        asked |= {kind for _, kind, _ in fresh if kind in ASK_SIGNALS and ASK_SIGNALS[kind] is not None}
        # Only the train command takes these signals, and only once its loop runs (a logged step shows
        # its handlers are installed; before that a signal's default action would end the process).
        if asked and args[0] == "train" and done > started_at and not interrupted:
            for kind in sorted(asked):  # "Sample now" / "Save now": the trainer acts after its next step
                proc.send_signal(ASK_SIGNALS[kind])
            asked = set()
        rows = _metric_rows(metrics, key=None)  # read once per tick: the step rows, then the check rows
        for row in (r for r in rows if "loss" in r):
            if row["step"] > done:  # each step once, even when a resume re-logs the last ones
                runner.store.add_event(job.id, "step", {"step": row["step"], "loss": row["loss"],
                                                        "n": job.params["steps"], "lr": row.get("lr"),
                                                        "s_per_step": row.get("s_per_step")})
                done = row["step"]
        reported = _report_checks(runner, job, rows, reported)
        announced = _announce_samples(runner, job, cwd / "run" / "samples", announced)
    _announce_samples(runner, job, cwd / "run" / "samples", announced)  # the last ones, written just before exit
    _report_checks(runner, job, _metric_rows(metrics, key=None), reported)
    if interrupted:
        raise JobCanceled()
    return proc.returncode


# What a studio button asks of a running trainer, and the signal that asks it.
ASK_SIGNALS = {SAMPLE_ASKED: SAMPLE_SIGNAL, SAVE_ASKED: SAVE_SIGNAL}

# The trainer's check rows in metrics.jsonl (training/validation.py), by the event each becomes:
# the validation loss on fixed noise, and the confounder leak measured in the sample images.
CHECK_ROWS = {"validation": "val_loss", "leak": "leak"}


def _metric_rows(metrics: Path, key: str | None = "loss") -> list[dict]:
    """The trainer's rows that carry `key` (per-step rows carry "loss"; None: every row) from
    metrics.jsonl; a half-written last line is skipped."""
    if not metrics.is_file():
        return []
    rows = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and (key is None or key in row):
            rows.append(row)
    return rows


def _logged_steps(metrics: Path, key: str = "loss", none: int = 0) -> int:
    """The last step metrics.jsonl already holds a `key` row for (`none` for a fresh run)."""
    return max((row["step"] for row in _metric_rows(metrics, key)), default=none)


def _report_checks(runner: PipelineRunner, job: Any, rows: list[dict], reported: dict[str, int]) -> dict[str, int]:
    """A `validation` / `leak` event for each new check row of `rows` (metrics.jsonl), once (a
    resume re-logs none twice)."""
    out = dict(reported)
    for kind, key in CHECK_ROWS.items():
        for row in (r for r in rows if key in r):
            if row["step"] > out[kind]:
                runner.store.add_event(job.id, kind, {k: v for k, v in row.items() if k != "loss"})
                out[kind] = row["step"]
    return out


def _announce_samples(runner: PipelineRunner, job: Any, samples: Path, announced: set[str]) -> set[str]:
    """A `sample` event ({step, files}) for each samples/step_N/ folder once it holds every prompt's PNG."""
    if not samples.is_dir():
        return announced
    expected = max(1, len((job.params.get("config") or {}).get("sample", {}).get("prompts") or []))
    for folder in samples.glob("step_*"):
        pngs = sorted(p.name for p in folder.glob("*.png"))
        if folder.name in announced or not folder.name[5:].isdigit() or len(pngs) < expected:
            continue
        runner.store.add_event(job.id, "sample", {"step": int(folder.name[5:]), "files": pngs})
        announced = announced | {folder.name}
    return announced


def complete_steps(checkpoints: Path) -> list[int]:
    """Steps of the checkpoint folders the trainer finished writing (COMPLETE.json, written last, and
    the adapter file), oldest first; symlinked folders are not the run's own and are skipped."""
    if not checkpoints.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in checkpoints.glob("step_*") if p.name[5:].isdigit() and not p.is_symlink()
                  and (p / "COMPLETE.json").is_file() and (p / "lora.safetensors").is_file())


def run_training(runner: PipelineRunner, job: Any, trace: Trace) -> dict:
    """prepare -> caption (sidecars) -> train (resumable) -> register the final LoRA."""
    import yaml

    from lorastudio.serving.routes.loras import register_file

    params = job.params
    root = runner.data / "datasets" / params["run_id"]
    log_path = root / "train.log"
    dataset = root / "dataset"
    stages = [
        ("prepare", ["prepare", str(root / "raw"), "--out", str(dataset), "--resolution", str(params["resolution"]),
                     "--square", "--min-side", "16", "--quiet"]),
        ("caption", ["caption", str(dataset), "--backend", "manual", "--trigger", params["trigger"], "--quiet"]),
    ]
    for name, argv in stages:  # both are incremental: a resumed job redoes nothing
        with trace.span(name):
            if _cli(runner, job, argv, root, log_path) != 0:
                raise JobFailed("train_failed", f"the {name} stage failed (see the run's train.log)")
    config = trainform.run_config(runner.args.family, str(runner.args.model), str(dataset), str(root / "run"), params)
    (root / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    with trace.span("train", attempt=job.attempts):
        try:
            code = _cli(runner, job, ["train", str(root / "train.yaml"), "--resume", "auto", "--no-progress",
                                      "--skip-audit"], root, log_path)
        except JobCanceled:  # stopped: the trainer saved on Ctrl-C; say where, so Resume is one click
            saved = complete_steps(root / "run" / "checkpoints")
            raise JobCanceled({"saved_step": saved[-1] if saved else None, "images": []}) from None
    if code != 0:
        raise JobFailed("train_failed", f"training exited with code {code} (see the run's train.log)")
    final = root / "run" / "final" / "lora.safetensors"
    tmp = runner.data / "tmp" / f"{job.id}.upload"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(final.read_bytes())

    class _Settings:  # what register_file reads
        family, data_dir, model = runner.args.family, runner.data, runner.args.model

    row = register_file(_Settings, runner.store, tmp, params["lora_id"], job.key_id)
    trace.add("registered", lora_id=row["id"], sha256=row["sha256"])
    return {"lora_id": row["id"], "sha256": row["sha256"], "steps": params["steps"], "images": []}
