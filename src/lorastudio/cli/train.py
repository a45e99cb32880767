"""`lorastudio train CONFIG.yaml [key=value ...]`: train a LoRA."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import click


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_workers(num_processes: int, argv: list[str]) -> int:
    """Re-run this command in `num_processes` processes (torch.distributed, gloo on CPU)."""
    env = dict(os.environ)
    # Each worker gets its share of the cores instead of all of them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(num_processes),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "lorastudio.cli.train", *argv,
    ]
    return subprocess.call(cmd, env=env)


@click.command(name="train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", default=None, metavar="auto|PATH", help="Continue from the newest complete checkpoint (auto) or a checkpoint / run dir.")
@click.option("--force", is_flag=True, help="Resume even though the config or dataset changed (the differences are printed).")
@click.option("--num-processes", type=int, default=1, show_default=True, help="Data-parallel processes (DDP; gloo on CPU). The batch size is per process.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars (for logs and CI).")
@click.option("--skip-audit", is_flag=True, help="Start even when `lorastudio audit` finds errors in a training dataset.")
def command(
    config: str, overrides: tuple[str, ...], resume: str | None, force: bool, num_processes: int, no_progress: bool,
    skip_audit: bool,
) -> None:
    """Train a LoRA from CONFIG.yaml, with optional key=value overrides.

    \b
    Examples:
      lorastudio init-config --family sd15 > cfg.yaml
      lorastudio train cfg.yaml data.datasets=[ds] train.max_steps=1500
      lorastudio train cfg.yaml --resume auto        # after Ctrl-C, a crash or a reboot

    The run dir (output_dir) gets config.resolved.yaml, metrics.jsonl, samples/step_N/,
    checkpoints/step_N/ and final/ (lora.safetensors for A1111/ComfyUI and diffusers/).
    Ctrl-C saves a checkpoint and exits 130 (SIGTERM: 143); a second Ctrl-C exits at once.
    Checks (unknown keys, impossible values, missing captions, wrong model family) run
    before any model loads, then each training dataset is audited (`lorastudio audit`):
    errors such as a missing trigger or style contamination stop the run before it wastes
    time, unless --skip-audit.
    """
    from lorastudio.config.loader import ConfigError, load_config
    from lorastudio.config.train import TrainConfig

    if num_processes < 1:
        raise click.BadParameter("must be >= 1", param_hint="--num-processes")
    try:
        cfg = load_config(TrainConfig, config, list(overrides))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if num_processes > 1 and "LOCAL_RANK" not in os.environ:
        argv = [config, *overrides, *(["--resume", resume] if resume else []), *(["--force"] if force else []),
                *(["--no-progress"] if no_progress else []), "--skip-audit"]
        sys.exit(_launch_workers(num_processes, argv))
    sys.exit(_run(cfg, resume, force, not no_progress, audit=not skip_audit))


def _run(cfg, resume: str | None, force: bool, show_progress: bool, *, audit: bool) -> int:
    from lorastudio.data.dataset import DatasetError
    from lorastudio.models.families import FamilyError
    from lorastudio.training.checkpoint import CheckpointError
    from lorastudio.training.preflight import PreflightError
    from lorastudio.training.recipe import TrainingStopped, run
    from lorastudio.training.state import ResumeError

    try:
        return run(cfg, resume=resume, force=force, show_progress=show_progress, audit=audit)
    except KeyboardInterrupt:
        # Only reachable before the loop starts (the loop handles Ctrl-C itself).
        click.echo("interrupted before training started; nothing to save", err=True)
        return 130
    except (PreflightError, DatasetError, FamilyError, ResumeError, CheckpointError, TrainingStopped) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    command()
