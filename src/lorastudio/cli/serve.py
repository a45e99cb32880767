"""`lorastudio serve`: the HTTP API with supervised worker processes."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from pathlib import Path

import click

_EPILOG = """\b
Examples:
  lorastudio keys create --scope generate,train,admin     # prints the key once
  lorastudio serve                                        # the shipped toy model on 127.0.0.1:8000
  curl -s http://127.0.0.1:8000/v1/images/generations -H "Authorization: Bearer $KEY" \\
       -H 'Content-Type: application/json' -d '{"prompt": "ohwx_kfood_style, a photo of bibimbap", "size": "64x64"}'
  lorastudio serve --model ./sd15 --devices cuda:0,cuda:1 --data /srv/lorastudio
  lorastudio serve --db postgresql+psycopg://user:pw@db/lorastudio --data /mnt/shared --workers 0

\b
Without --db the job store is SQLite (WAL) under --data. With PostgreSQL several API servers
and workers on several hosts share one queue (workers claim with FOR UPDATE SKIP LOCKED);
--data must then be a shared mount. --workers 0 serves the API only (workers elsewhere).
A non-loopback --host needs at least one API key (`lorastudio keys create`).
SIGTERM drains: new work gets 503, running jobs finish (up to --drain-timeout), the queue stays.
"""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_model() -> str:
    """The shipped toy-world model, so `serve` works offline on a fresh clone."""
    from lorastudio.toyworld.pretrain import shipped_base_dir

    found = shipped_base_dir()
    if found is None:
        raise click.ClickException("the shipped toy model is not installed; pass --model PATH_OR_HUB_ID")
    return str(found)


@click.command(epilog=_EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless keys exist).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--data", "data_dir", default=Path("lorastudio_data"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Outputs, uploads, adapters, the SQLite store.")
@click.option("--db", default=None, help="Job store URL (default: SQLite under --data; postgresql+psycopg://... to scale out).")
@click.option("--model", default=None, help="Base model: diffusers folder or hub id. Default: the shipped toy model.")
@click.option("--family", default=None, type=click.Choice(["sd15", "sd2", "sdxl", "flux"]),
              help="Model family (default: read from the model; a Flux folder's variant too: dev or schnell).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(0, 64), help="Worker processes on the CPU / one device.")
@click.option("--devices", default=None, help="One worker per device, e.g. cuda:0,cuda:1 (overrides --workers).")
@click.option("--allow-host", "allow_hosts", multiple=True, help="Extra Host header value to answer for (a proxy's name).")
@click.option("--allow-origin", "allow_origins", multiple=True, help="Origin allowed to call the API from a browser.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1, 100000), help="Queued jobs before 429.")
@click.option("--max-inflight", default=16, show_default=True, type=click.IntRange(1, 10000), help="Queued+running jobs per key before 429.")
@click.option("--wait-cap", default=60.0, show_default=True, type=click.FloatRange(0, 600), help="Seconds a synchronous call waits before answering 202.")
@click.option("--drain-timeout", default=30.0, show_default=True, type=click.FloatRange(0, 3600))
@click.option("--controlnet", default=None, metavar="ID_OR_PATH",
              help="A canny ControlNet (diffusers folder or hub id) so enhance can keep the photo's layout "
                   "(control=canny). SD 1.5/2.x/SDXL.")
@click.option("--fake-workers", is_flag=True, hidden=True, help="Timing stand-ins instead of models (load tests).")
@click.option("--fake-step-s", default=0.01, hidden=True, type=click.FloatRange(0, 10), help="A fake worker's seconds per step.")
def command(host: str, port: int, data_dir: Path, db: str | None, model: str | None, family: str | None,
            workers: int, devices: str | None, allow_hosts: tuple[str, ...], allow_origins: tuple[str, ...],
            max_queue: int, max_inflight: int, wait_cap: float, drain_timeout: float, controlnet: str | None,
            fake_workers: bool, fake_step_s: float) -> None:
    """Serve text-to-image, enhance and training as an HTTP API (OpenAI images compatible)."""
    try:
        import uvicorn
    except ImportError:
        raise click.ClickException("serving needs its extra: pip install 'lorastudio[serve]'") from None
    from lorastudio.serving.app import create_app
    from lorastudio.serving.http import Settings
    from lorastudio.serving.store import JobStore, default_url

    data_dir.mkdir(parents=True, exist_ok=True)
    db_url = db or default_url(data_dir)
    store = JobStore(db_url)
    if not _is_loopback(host) and not store.has_keys():
        raise click.ClickException(f"--host {host} is not a loopback address and no API key exists; create one with "
                                   f"`lorastudio keys create --data {data_dir} --scope generate` first")
    if not fake_workers:
        model = model or default_model()
        if family is None:
            from lorastudio.evaluation.loading import LoadError, resolve_family

            try:
                found = resolve_family(model, "auto")
            except LoadError as exc:
                raise click.ClickException(str(exc)) from None
            family = {"sd": "sd15"}.get(found, found)
    if controlnet and family == "flux":
        raise click.ClickException("--controlnet: serving a ControlNet works for SD 1.5/2.x/SDXL, not Flux yet")
    settings = Settings(data_dir=data_dir, db_url=db_url, host=host, port=port, model=model or "",
                        family=family or "sd15", workers=workers,
                        devices=[d.strip() for d in devices.split(",") if d.strip()] if devices else [],
                        fake_workers=fake_workers, fake_step_s=fake_step_s, allowed_hosts=list(allow_hosts), allowed_origins=list(allow_origins),
                        max_queue=max_queue, max_inflight_per_key=max_inflight, wait_cap_s=wait_cap,
                        drain_timeout_s=drain_timeout, controlnet=controlnet or "")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    app = create_app(settings, store=store)
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="warning"), app, store,
                            drain_timeout)
    click.echo(f"lorastudio serve on http://{host}:{port} (data {data_dir}, model {settings.model or 'fake'})", err=True)
    server.run()


class JsonLines(logging.Formatter):
    """One JSON object per log line (time, level, logger, message, and a traceback when any)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {"t": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _server_base():
    import uvicorn

    return uvicorn.Server


class DrainingServer(_server_base()):
    """uvicorn, except that the first SIGTERM / Ctrl-C drains before the server stops."""

    def __init__(self, config, app, store, drain_timeout: float) -> None:  # noqa: ANN001
        super().__init__(config)
        self.app, self.store, self.drain_timeout = app, store, drain_timeout

    def handle_exit(self, sig, frame) -> None:  # noqa: ANN001
        if self.app.state.draining:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self.app.state.draining = True
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        supervisor = self.app.state.supervisor
        if supervisor is not None:
            # Workers finish the job they hold and claim nothing more; the queue stays in the store.
            supervisor.stop(timeout=self.drain_timeout)
        else:
            deadline = time.time() + self.drain_timeout
            while time.time() < deadline and self.store.counts().get("running", 0) > 0:
                time.sleep(0.2)
        self.should_exit = True
