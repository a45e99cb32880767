"""The LoRA training loop, written out top to bottom.

`run(cfg)` reads as the recipe: preflight -> load model -> attach LoRA -> caches ->
optimizer -> resume -> loop (step, log, sample, checkpoint, stop) -> final export.
Model-family differences come from `get_family`; randomness comes from generators seeded
by (seed, step, sample), so resumed and multi-process runs reproduce a single straight run.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.config.loader import write_resolved
from lorastudio.config.train import TrainConfig
from lorastudio.data.cache import default_cache_dir
from lorastudio.data.dataset import BucketBatchSampler, EpochView, Item, dataset_fingerprint, describe
from lorastudio.models.families import Family, ModelParts, get_family, load_text_parts, load_unet_and_scheduler, load_vae
from lorastudio.training import checkpoint as ckpt
from lorastudio.training import methods, validation
from lorastudio.training.features import Features
from lorastudio.training.logging import MetricsLogger, Progress, Smoothed, peak_gpu_mb, peak_rss_mb
from lorastudio.training.loss import diffusion_loss
from lorastudio.training.optim import build_lr_scheduler, build_optimizer
from lorastudio.training.preflight import preflight, resolve_mixed_precision
from lorastudio.training.sampling import render_samples
from lorastudio.training.signals import StopRequest
from lorastudio.training.state import STATE_DIR, LoopPosition, ResumeError, check_compatible, load_trainer_state, read_meta, save_trainer_state


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite values, non-finite weights); the message says why."""


@dataclass
class Session:
    """The live objects of one run, so loop functions do not take fifteen arguments."""

    cfg: TrainConfig
    family: Family
    accelerator: Any
    parts: ModelParts
    features: Features
    unet: Any  # possibly DDP-wrapped
    text_encoders: list[Any]  # possibly DDP-wrapped, empty when frozen and cached
    params: dict[str, Any]  # trainable parameters by qualified name
    optimizer: Any
    lr_scheduler: Any
    view: EpochView
    sampler: BucketBatchSampler
    prediction_type: str
    total_steps: int
    fingerprint: str
    run_dir: Path
    pos: LoopPosition = field(default_factory=LoopPosition)
    last_saved_step: int = -1
    method_state: methods.MethodState = field(default_factory=methods.MethodState)
    val_set: validation.ValidationSet | None = None  # images of the validation loss (None = off)
    leak: validation.LeakWatch | None = None  # main process only: the sample-time leak figure

    @property
    def is_main(self) -> bool:
        """True on the process that writes files."""
        return self.accelerator.is_main_process

    def log(self, message: str) -> None:
        """A line on stderr from the main process."""
        if self.is_main:
            print(message, file=sys.stderr)


def run(cfg: TrainConfig, *, resume: str | None = None, force: bool = False, show_progress: bool = True,
        audit: bool = True) -> int:
    """Train a LoRA as `cfg` says; returns the process exit code (0, 130 or 143).

    `audit=False` skips the dataset audit gate (`--skip-audit`)."""
    items = methods.prepare_items(cfg, preflight(cfg, audit=audit), warn=lambda m: print(m, file=sys.stderr))
    items, val_set = validation.split(cfg, items)
    if resume is None and ckpt.list_checkpoints(Path(cfg.output_dir)):
        raise ResumeError(
            f"output_dir {cfg.output_dir} already holds checkpoints; continue it with --resume auto, "
            "or set output_dir to a new folder (nothing was changed)"
        )
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if cfg.train.mixed_precision == "auto":
        cfg = cfg.model_copy(deep=True)
        cfg.train.mixed_precision = resolve_mixed_precision(cfg)
        print(f"train.mixed_precision: auto -> {cfg.train.mixed_precision}"
              + (" (bf16 autocast; set train.mixed_precision: no for fp32)" if cfg.train.mixed_precision == "bf16" else ""),
              file=sys.stderr)
    accelerator = Accelerator(cpu=not _cuda(), mixed_precision=cfg.train.mixed_precision)
    try:
        session = setup(cfg, items, accelerator, show_progress=show_progress, val_set=val_set)
        restore(session, resume, force)
        if session.is_main:
            write_resolved(cfg, session.run_dir)
            session.leak = validation.LeakWatch.for_run(cfg, session.run_dir, session.pos.step, session.log)
        with StopRequest() as stop:
            train_loop(session, stop, show_progress=show_progress)
            if stop.requested:
                save_checkpoint(session)
                session.log(f"stopped at step {session.pos.step}; resume with: lorastudio train CONFIG --resume auto")
                return stop.exit_code
        save_checkpoint(session)
        write_final(session)
        return 0
    finally:
        accelerator.wait_for_everyone()
        AcceleratorState._reset_state()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def setup(cfg: TrainConfig, items: list[Item], accelerator: Any, *, show_progress: bool,
          val_set: validation.ValidationSet | None = None) -> Session:
    """Load the model, attach adapters, build caches, optimizer, schedule and sampler.

    `val_set`: the validation images; held-out ones are cached with the training images."""
    import torch

    family = get_family(cfg.model.family).configured(cfg)
    torch.manual_seed(cfg.train.seed)
    parts = load_unet_and_scheduler(family, cfg.model)
    parts.vae = load_vae(family, cfg.model)
    parts.text_encoders, parts.tokenizers = load_text_parts(family, cfg.model)
    method_state = methods.MethodState()
    params = methods.attach(cfg, parts, method_state)
    for module in [parts.unet, *parts.text_encoders]:
        module.to(accelerator.device)
    parts.vae.to(accelerator.device)
    if cfg.train.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
    features = Features(family, cfg, parts, log=lambda m: print(m, file=sys.stderr) if accelerator.is_main_process else None)
    cache_root = None if cfg.train.cache != "disk" else (cfg.train.cache_dir or default_cache_dir())
    with accelerator.main_process_first():
        cached = {i.key: i for i in [*items, *(val_set.items if val_set else [])]}
        features.build_caches(list(cached.values()), cache_root, show=show_progress and accelerator.is_main_process)
    if cfg.train.cache != "none":
        features.log(f"caches ready in {features.cache_seconds:.2f}s (VAE and frozen text encoders released)")
    view = EpochView(items, cfg.data, cfg.train.seed)
    sampler = BucketBatchSampler(
        view.buckets(), batch_size=cfg.train.batch_size, seed=cfg.train.seed, world_size=accelerator.num_processes, rank=accelerator.process_index
    )
    total = cfg.train.max_steps or math.ceil(cfg.train.epochs * len(sampler) / cfg.train.grad_accum)
    optimizer = build_optimizer(methods.param_groups(cfg, params), cfg.train)
    lr_scheduler = build_lr_scheduler(optimizer, cfg.train, total)
    wrap = methods.ddp_wraps(cfg, accelerator.num_processes)
    unet = accelerator.prepare(parts.unet) if wrap else parts.unet
    text_encoders = [accelerator.prepare(te) for te in parts.text_encoders] if cfg.network.train_text_encoder and wrap else parts.text_encoders
    prediction_type = cfg.model.prediction_type
    if prediction_type == "auto":
        prediction_type = parts.noise_scheduler.config.get("prediction_type") or family.default_prediction_type
    session = Session(
        cfg, family, accelerator, parts, features, unet, text_encoders, params, optimizer, lr_scheduler, view, sampler,
        prediction_type, total, dataset_fingerprint(items), Path(cfg.output_dir), method_state=method_state, val_set=val_set,
    )
    session.log(f"data: {describe(items)}; {len(sampler)} batches/epoch; {total} steps; predicting {prediction_type}")
    if val_set is not None:
        session.log(f"validation loss on {len(val_set.items)} {val_set.split} image(s) every {cfg.validation.every_n_steps} steps")
    return session


def attach_adapters(cfg: TrainConfig, parts: ModelParts) -> dict[str, Any]:
    """Freeze the base model, attach LoRA to the UNet (and text encoders); return trainable params."""
    from lorastudio.models.lora import attach_lora

    net, family = cfg.network, get_family(cfg.model.family).configured(cfg)
    for module in [parts.unet, parts.vae, *parts.text_encoders]:
        module.requires_grad_(False)
    attach_lora(parts.unet, rank=net.rank, alpha=net.alpha, target_modules=family.target_modules(parts.unet, net.targets), dropout=net.dropout)
    named = {f"unet.{n}": p for n, p in parts.unet.named_parameters() if p.requires_grad}
    if net.train_text_encoder:
        for i, te in enumerate(parts.text_encoders):
            targets = family.text_encoder_target_modules(i, te, net.text_encoder_targets)
            if not targets:  # e.g. Flux's T5 unless flux.train_t5
                continue
            attach_lora(te, rank=net.text_encoder_rank, alpha=net.text_encoder_alpha, target_modules=targets, dropout=net.dropout)
            named.update({f"text_encoder_{i}.{n}": p for n, p in te.named_parameters() if p.requires_grad})
    # LoRA weights train in float32 even when the frozen base is half precision.
    for p in named.values():
        p.data = p.data.float()
    return named


def param_groups(cfg: TrainConfig, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One optimizer group for the UNet adapter and one for the text encoder adapters."""
    unet = [p for n, p in params.items() if n.startswith("unet.")]
    text = [p for n, p in params.items() if not n.startswith("unet.")]
    groups = [{"params": unet, "lr": cfg.train.lr}]
    if text:
        groups.append({"params": text, "lr": cfg.network.text_encoder_lr or cfg.train.lr})
    return groups


def restore(session: Session, resume: str | None, force: bool) -> None:
    """Load the checkpoint named by `--resume` (auto = newest valid one in the run dir)."""
    if resume is None:
        return
    if resume == "auto":
        found = ckpt.latest_valid(session.run_dir, warn=session.log)
        if found is None:
            session.log(f"--resume auto: no complete checkpoint in {session.run_dir / ckpt.CHECKPOINTS}; starting from step 0")
            return
    else:
        found = Path(resume)
        if (found / ckpt.CHECKPOINTS).is_dir():
            found = ckpt.latest_valid(found, warn=session.log)
            if found is None:
                raise ResumeError(f"--resume {resume}: no complete checkpoint found there")
        problem = ckpt.verify(found) if found.is_dir() else "not a directory"
        if problem:
            raise ResumeError(f"--resume {found}: cannot use this checkpoint ({problem}); try --resume auto")
    state_dir = found / STATE_DIR
    diff = check_compatible(read_meta(state_dir), session.cfg.model_dump(mode="json"), session.fingerprint, source=found, force=force)
    if diff:
        session.log("resuming with changes (--force):\n" + "\n".join(diff))
    # The optimizer must hold the parameter groups of the phase the checkpoint was written in.
    saved_step = read_meta(state_dir)["position"]["step"]
    methods.enter_phase(session.cfg, session.method_state, session.optimizer, session.lr_scheduler, max(saved_step - 1, 0), session.total_steps, session.log)
    session.pos = load_trainer_state(state_dir, params=session.params, optimizer=session.optimizer, lr_scheduler=session.lr_scheduler)
    session.last_saved_step = session.pos.step
    session.log(f"resumed from {found} at step {session.pos.step} (epoch {session.pos.epoch}, batch {session.pos.batch})")


def next_examples(session: Session) -> tuple[list[Any], list[int]]:
    """This process's examples for the next batch and their positions in the global batch."""
    pos = session.pos
    if pos.batch >= len(session.sampler):
        pos.epoch, pos.batch = pos.epoch + 1, 0
    pairs = session.sampler.local_batches(pos.epoch)[pos.batch]
    pos.batch += 1
    return [session.view.example(pos.epoch, slot) for _, slot in pairs], [p for p, _ in pairs]


def forward_loss(session: Session, examples: list[Any], positions: list[int], micro: int) -> Any:
    """Noise the latents, predict with the UNet and return this micro-batch's loss."""
    import torch

    cfg = session.cfg
    global_batch = cfg.train.batch_size * session.accelerator.num_processes
    weights = torch.tensor([cfg.data.prior_loss_weight if ex.item.is_reg else 1.0 for ex in examples])
    return batch_loss(
        session, examples, [micro * global_batch + p for p in positions], step=session.pos.step, weights=weights,
        unet=session.unet, text_encoders=session.text_encoders,
    )


def batch_loss(session: Session, examples: list[Any], positions: list[int], *, step: int, weights: Any, unet: Any,
               text_encoders: list[Any]) -> Any:
    """The diffusion loss of one batch (one bucket) with noise and timesteps fixed by (seed, step, positions).

    Training passes its step and global-batch positions; validation passes its own fixed step
    and image indices, so both share every line from the latents to the loss."""
    cfg, sched = session.cfg, session.parts.noise_scheduler
    latents = session.features.latents(examples).to(session.accelerator.device)
    cond = session.features.conditioning(methods.captions(cfg, [ex.caption for ex in examples]), text_encoders)
    objective = session.family.objective
    noise, timesteps = objective.draw(
        latents, positions, seed=cfg.train.seed, step=step, scheduler=sched, noise_offset=cfg.train.noise_offset,
    )
    noisy, target = objective.noisy_and_target(sched, latents, noise, timesteps, session.prediction_type)
    height, width = examples[0].item.height, examples[0].item.width
    dtype = session.parts.unet.dtype  # first floating-point weight: the compute dtype, also for a quantised base
    with session.accelerator.autocast():
        pred = session.family.predict(unet, noisy.to(dtype), timesteps, {k: v.to(dtype) for k, v in cond.items()}, height, width)
    return diffusion_loss(
        pred, target, scheduler=sched, timesteps=timesteps, prediction_type=session.prediction_type,
        min_snr_gamma=cfg.train.min_snr_gamma, sample_weights=weights,
    )


def train_step(session: Session) -> dict[str, float]:
    """One optimizer step over `grad_accum` batches; skips the update if anything is non-finite."""
    import torch

    cfg, acc = session.cfg, session.accelerator
    methods.enter_phase(cfg, session.method_state, session.optimizer, session.lr_scheduler, session.pos.step, session.total_steps, session.log)
    total = torch.zeros((), device=acc.device)
    images = 0
    for micro in range(cfg.train.grad_accum):
        examples, positions = next_examples(session)
        loss = forward_loss(session, examples, positions, micro) / cfg.train.grad_accum
        if session.pos.step + 1 in cfg.train.debug_nan_at_steps:
            loss = loss * float("nan")
        acc.backward(loss)
        total += loss.detach()
        images += len(examples) * acc.num_processes
    params = list(session.params.values())
    methods.average_gradients(cfg, params, acc.num_processes)
    max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    loss_value = float(acc.reduce(total, reduction="mean"))
    finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
    if finite:
        session.optimizer.step()
        session.pos.nonfinite_streak = 0
    else:
        session.pos.nonfinite_streak += 1
        session.pos.skipped_steps += 1
    lr = session.lr_scheduler.get_last_lr()[0]
    session.lr_scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    session.pos.step += 1
    return {"loss": loss_value, "grad_norm": grad_norm, "lr": lr, "images": images, "finite": finite}


def train_loop(session: Session, stop: StopRequest, *, show_progress: bool) -> None:
    """Steps until `total_steps` or a stop request; logs, samples and checkpoints on schedule."""
    cfg = session.cfg
    logger = MetricsLogger(session.run_dir, tensorboard=cfg.logging.tensorboard, enabled=session.is_main)
    bar = Progress(session.total_steps, session.pos.step, enabled=show_progress and session.is_main)
    smooth, window = Smoothed(), _Window()
    if session.pos.step == 0 and (cfg.sample.at_start or validation.wants_base_samples(cfg)):
        maybe_sample(session, logger, force=True)  # step 0 is the base model: the leak's reference
    if session.pos.step == 0:
        validation.maybe_validate(session, logger)
    try:
        while session.pos.step < session.total_steps and not stop.requested:
            started = time.perf_counter()
            stats = train_step(session)
            window.add(stats, time.perf_counter() - started)
            bar.update(smooth.update(stats["loss"]), stats["lr"])
            if not stats["finite"]:
                bar.write(f"step {session.pos.step}: non-finite loss or gradient norm, update skipped ({session.pos.nonfinite_streak} in a row)")
                if session.pos.nonfinite_streak >= cfg.train.max_nonfinite_steps:
                    raise TrainingStopped(
                        f"stopped: {session.pos.nonfinite_streak} non-finite steps in a row at step {session.pos.step}; "
                        "lower train.lr, enable train.max_grad_norm, or use train.mixed_precision=no. "
                        "The last complete checkpoint is unchanged."
                    )
            if cfg.train.debug_stop_after_step == session.pos.step:
                stop.request()
            _sync_stop(session, stop)
            if session.pos.step % cfg.logging.every_n_steps == 0 or session.pos.step == session.total_steps or stop.requested:
                logger.log({"step": session.pos.step, "epoch": session.pos.epoch, **window.flush(), "skipped_steps": session.pos.skipped_steps})
            if not stop.requested:
                validation.maybe_validate(session, logger)
            if stop.requested or session.pos.step == session.total_steps:
                break
            maybe_sample(session, logger, force=stop.take_sample_request())
            due = bool(cfg.save.every_n_steps) and session.pos.step % cfg.save.every_n_steps == 0
            if stop.take_save_request() or due:  # on schedule, or "Save now" (SIGUSR2)
                save_checkpoint(session)
        if session.pos.step == session.total_steps:
            maybe_sample(session, logger)
    finally:
        bar.close()
        logger.close()


def _sync_stop(session: Session, stop: StopRequest) -> None:
    """With several processes, stop (or sample) all of them at the same step if any one got a signal."""
    import torch
    import torch.distributed as dist

    if session.accelerator.num_processes == 1:
        return
    flag = torch.tensor([stop.signum or 0, int(stop.sample_requested), int(stop.save_requested)],
                        device=session.accelerator.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag[0].item()) and not stop.requested:
        stop.request(int(flag[0].item()))
    stop.sample_requested = bool(flag[1].item())  # every process samples at the same step, or none
    stop.save_requested = bool(flag[2].item())  # and saves at the same step


class _Window:
    """Accumulates step statistics between two metrics rows."""

    def __init__(self) -> None:
        self.rows: list[tuple[dict[str, float], float]] = []

    def add(self, stats: dict[str, float], seconds: float) -> None:
        self.rows.append((stats, seconds))

    def flush(self) -> dict[str, float | None]:
        rows, self.rows = self.rows, []
        finite = [s for s, _ in rows if s["finite"]]
        seconds = sum(t for _, t in rows)
        images = sum(s["images"] for s, _ in rows)
        return {
            "loss": sum(s["loss"] for s in finite) / len(finite) if finite else None,
            "lr": rows[-1][0]["lr"],
            "grad_norm": sum(s["grad_norm"] for s in finite) / len(finite) if finite else None,
            "s_per_step": seconds / len(rows),
            "images_per_s": images / seconds if seconds else None,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_gpu_mb": peak_gpu_mb(),
        }


def maybe_sample(session: Session, logger: MetricsLogger, *, force: bool = False) -> None:
    """Render the sample prompts at step 0 (when forced) and every `sample.every_n_steps`;
    with `validation.leak`, log the samples' leak row."""
    cfg = session.cfg.sample
    if not cfg.prompts:
        return
    due = force or (cfg.every_n_steps is not None and session.pos.step % cfg.every_n_steps == 0)
    if due and session.is_main:
        unet = session.accelerator.unwrap_model(session.unet)
        paths = render_samples(session.family, session.features, unet, session.cfg, session.run_dir, session.pos.step, session.prediction_type)
        row = session.leak.observe(session.pos.step, paths) if session.leak is not None else None
        if row is not None:
            logger.log(row)
    session.accelerator.wait_for_everyone()


def _check_finite_weights(session: Session) -> None:
    import torch

    bad = [n for n, p in session.params.items() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingStopped(f"refusing to save: non-finite values in {len(bad)} adapter tensors (first: {bad[0]}); the last checkpoint is unchanged")


def _export(session: Session, out_dir: Path, *, final: bool = False) -> None:
    if session.cfg.train.method != "lora":
        methods.export(session, out_dir, final=final)
        return
    acc, net = session.accelerator, session.cfg.network
    text_encoders = [acc.unwrap_model(te) for te in session.text_encoders] if net.train_text_encoder else []
    session.family.export_adapter(
        out_dir, unet=acc.unwrap_model(session.unet), text_encoders=text_encoders,
        rank=net.rank, alpha=net.alpha, formats=session.cfg.save.formats,
        metadata={"lorastudio.step": str(session.pos.step), "lorastudio.base_model": session.cfg.model.path},
    )


def _needed_bytes(session: Session) -> int:
    """Room for one more checkpoint: the last one's size, or an estimate from the adapter size."""
    previous = ckpt.list_checkpoints(session.run_dir)
    adapter = sum(p.numel() * 4 for p in session.params.values())
    estimate = ckpt.dir_size(previous[-1]) if previous else adapter * 6 + (1 << 20)
    return int(estimate + session.cfg.train.min_free_disk_mb * 1e6)


def save_checkpoint(session: Session) -> None:
    """Write `checkpoints/step_N` atomically (exports + trainer_state), then prune old ones."""
    if session.last_saved_step == session.pos.step:
        return
    _check_finite_weights(session)
    # Every process checks the disk, so a full disk stops all of them rather than leaving
    # the others waiting for a main process that has exited.
    ckpt.check_free_space(session.run_dir, _needed_bytes(session))
    if session.is_main:

        def fill(tmp: Path) -> None:
            _export(session, tmp)
            save_trainer_state(
                tmp / STATE_DIR, params=session.params, optimizer=session.optimizer, lr_scheduler=session.lr_scheduler,
                position=session.pos, config=session.cfg.model_dump(mode="json"), dataset_fingerprint=session.fingerprint,
            )

        target = session.run_dir / ckpt.CHECKPOINTS / f"step_{session.pos.step}"
        ckpt.write_atomic_dir(target, fill, info={"step": session.pos.step, "epoch": session.pos.epoch}, needed_bytes=_needed_bytes(session))
        ckpt.prune(session.run_dir, session.cfg.save.keep_last)
    session.last_saved_step = session.pos.step
    session.accelerator.wait_for_everyone()


def write_final(session: Session) -> None:
    """Write `final/` (the adapter exports) atomically."""
    _check_finite_weights(session)
    if session.is_main:
        ckpt.write_atomic_dir(
            session.run_dir / "final", lambda tmp: _export(session, tmp, final=True), info={"step": session.pos.step}, needed_bytes=_needed_bytes(session)
        )
        session.log(f"done: {session.run_dir / 'final'}")
    session.accelerator.wait_for_everyone()
