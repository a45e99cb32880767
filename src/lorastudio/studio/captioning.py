"""Caption jobs: run a captioning backend over a studio dataset, as `lorastudio caption` does.

A request names a backend and a model by name only: a folder under `<data>/models/captioners/`
(contained, no symlinks) or a hub id, which loads from the local cache (the service runs
offline). The worker runs the real `caption` command as a child process on the dataset dir, so
its captions go through the same history: `lorastudio caption DIR --undo` and the gallery's
"Undo last change" revert a whole caption job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorastudio.studio import datasets as ds

# The backends that caption from pixels (manual captions are what the editor itself writes).
BACKENDS = ("hf-caption", "hf-vlm", "tagger", "clip-probe")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def models_root(data_dir: Path) -> Path:
    """Where an admin puts captioning model folders for the studio to offer."""
    return Path(data_dir) / "models" / "captioners"


def local_models(data_dir: Path) -> list[str]:
    """Names of the model folders under models/captioners/ (symlinks skipped)."""
    root = models_root(data_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _NAME.match(p.name) and p.is_dir() and not p.is_symlink())


def resolve_model(data_dir: Path, name: str) -> str:
    """A local captioner folder's path, or a hub id as given; anything else is refused."""
    if _NAME.match(name or "") and ".." not in name and name in local_models(data_dir):
        return str((models_root(data_dir) / name).resolve())
    if _HUB_ID.match(name or "") and ".." not in name:
        return name
    raise ds.StudioError(422, "bad_model", f"model '{name[:80]}' is neither a folder in models/captioners/ "
                                            "nor a hub id (owner/name)")


def busy(store: Any, dataset_id: str) -> bool:
    """Whether a caption job on this dataset is queued or running (it rewrites the manifest from
    another process, so the studio's own caption writes must wait for it)."""
    from lorastudio.serving.routes.admin import list_jobs

    return any((job.params or {}).get("dataset") == dataset_id
               for status in ("queued", "running") for job in list_jobs(store, None, status, "caption", 200))


def run_captioning(runner: Any, job: Any, trace: Any) -> dict:
    """The worker side of a `caption` job: the `caption` command on the dataset dir, its log kept."""
    from lorastudio.serving.runners import _cli
    from lorastudio.serving.trace import JobFailed

    params = job.params
    home = ds.dataset_home(runner.data, params["dataset"])
    work = runner.data / "captions" / job.id
    work.mkdir(parents=True, exist_ok=True)
    log = work / "caption.log"
    model = resolve_model(runner.data, params["model"])  # the job holds the name; the path stays on the server
    argv = ["caption", str(home / "dataset"), "--backend", params["backend"], "--model", model, "--quiet",
            "--overwrite" if params.get("overwrite") else "--only-missing"]
    if params.get("trigger"):
        argv += ["--trigger", params["trigger"]]
    with trace.span("caption", backend=params["backend"]):
        code = _cli(runner, job, argv, work, log)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        raise JobFailed("caption_failed", f"captioning exited with code {code}: {(tail or ['no output'])[0][:300]}")
    records = ds.records(home)
    done = sum(1 for r in records if (r.get("caption_text") or "").strip())
    trace.add("captioned", images=done, of=len(records))
    return {"dataset": params["dataset"], "captioned": done, "of": len(records), "images": []}
