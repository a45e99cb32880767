"""Fixtures for the studio: a real app (fake workers) under a TestClient, and toy-world photo datasets."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import pytest

from lorastudio.serving.app import create_app
from lorastudio.serving.http import Settings
from lorastudio.serving.store import JobStore, default_url

TRIGGER = "ohwx_kfood_style"


class Studio:
    """An app under a TestClient with helpers for sessions and datasets."""

    def __init__(self, client, app, store, data: Path) -> None:
        self.client, self.app, self.store, self.data = client, app, store, data
        self.csrf = ""

    def key(self, *scopes: str) -> str:
        return self.store.create_key(list(scopes or ("generate", "train")))[1]

    def login(self, token: str) -> None:
        response = self.client.post("/studio/login", data={"key": token}, follow_redirects=False)
        assert response.status_code == 303, response.text
        self.refresh_csrf()

    def refresh_csrf(self) -> str:
        page = self.client.get("/studio")
        assert page.status_code == 200, page.text
        self.csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
        return self.csrf

    def h(self) -> dict:
        return {"X-CSRF-Token": self.csrf}

    def upload(self, folder: Path, dataset_id: str = "kfood", trigger: str = TRIGGER) -> dict:
        files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
        response = self.client.post("/v1/datasets", data={"id": dataset_id, "trigger": trigger}, files=files,
                                    headers=self.h())
        assert response.status_code == 201, response.text
        return response.json()

    def wait_status(self, job_id: str, states=("succeeded", "failed", "canceled"), timeout: float = 60) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            view = self.client.get(f"/v1/jobs/{job_id}").json()
            if view["status"] in states:
                return view
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} stayed {view['status']}")


@pytest.fixture
def studio_factory(tmp_path):
    """Start a studio app: `with studio_factory() as s:` (fake workers unless workers=0)."""
    from starlette.testclient import TestClient

    @contextlib.contextmanager
    def start(**options):
        data = tmp_path / "data"
        data.mkdir(parents=True, exist_ok=True)
        settings = Settings(data_dir=data, db_url=default_url(data), fake_workers=True,
                            **{"workers": 1, "lease_s": 3.0, **options})
        store = JobStore(settings.db_url)
        app = create_app(settings, store=store)
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            yield Studio(client, app, store, data)
        store.close()

    return start


@pytest.fixture
def photos(tmp_path) -> Path:
    """12 toy-world food photos with the planted confounder (black background, sesame) and sidecars."""
    from lorastudio.toyworld.demo import write_photos

    folder = tmp_path / "photos"
    write_photos(folder, 12, (96, 96), seed=3)
    return folder
