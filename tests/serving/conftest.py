"""Fixtures for the service: real apps with real worker processes, SQLite and PostgreSQL.

PostgreSQL is Debian's server, started here in a private cluster owned by the `postgres`
user (initdb refuses root) on a loopback port. Locally the PostgreSQL tests skip with a
one-line reason when no server binary is installed; under CI (CI=true) they fail instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lorastudio.serving.app import create_app
from lorastudio.serving.http import Settings
from lorastudio.serving.store import JobStore, default_url
from serve_helpers import free_port


def _pg_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A PostgreSQL server of our own for the session, as a SQLAlchemy URL."""
    bin_dir = _pg_binaries()
    if bin_dir is None or shutil.which("runuser") is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    root = Path("/tmp") / f"lorastudio-pg-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700)
    shutil.chown(root, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(bin_dir / "initdb"), "-D", str(root / "data"), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = free_port()
    subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "lorastudio"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/lorastudio"
    finally:
        subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each store test runs against both backends; PostgreSQL gets a fresh schema per test."""
    if request.param == "sqlite":
        yield default_url(tmp_path)
        return
    base = request.getfixturevalue("postgres_url")
    from sqlalchemy import create_engine, text

    name = f"t{os.getpid()}_{int(time.time() * 1e6) % 10**9}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    yield base.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def toy_model() -> str:
    from lorastudio.toyworld.pretrain import shipped_base_dir

    return str(shipped_base_dir())


class Service:
    """An app under a TestClient, its store, and keys."""

    def __init__(self, client, app, store, data: Path) -> None:
        self.client, self.app, self.store, self.data = client, app, store, data
        self.keys: dict[str, str] = {}

    def key(self, *scopes: str, name: str = "") -> str:
        _, token = self.store.create_key(list(scopes or ("generate",)), name)
        return token

    def auth(self, token: str) -> dict:
        return {"Authorization": f"Bearer {token}"}

    def wait_ready(self, token: str, timeout: float = 120.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.client.get("/readyz", headers=self.auth(token)).status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError("no worker became ready")

    def wait_status(self, job_id: str, token: str, states=("succeeded", "failed", "canceled", "expired"),
                    timeout: float = 120.0) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            view = self.client.get(f"/v1/jobs/{job_id}", headers=self.auth(token)).json()
            if view["status"] in states:
                return view
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} stayed {view['status']}")


@pytest.fixture
def service_factory(tmp_path):
    """Start services: `with service_factory(fake=True, ...) as svc:`."""
    from starlette.testclient import TestClient

    @contextlib.contextmanager
    def start(*, fake: bool = True, data: Path | None = None, db: str | None = None, model: str = "", **options):
        data = data or tmp_path / "data"
        data.mkdir(parents=True, exist_ok=True)
        settings = Settings(data_dir=data, db_url=db or default_url(data), model=model, fake_workers=fake,
                            **{"workers": 1, "wait_cap_s": 30.0, "lease_s": 3.0, **options})
        store = JobStore(settings.db_url)
        app = create_app(settings, store=store)
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            yield Service(client, app, store, data)
        store.close()

    return start
