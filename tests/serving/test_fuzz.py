"""Fuzz the API from its own OpenAPI schema: no 5xx, and every 4xx is a problem+json body."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from lorastudio.serving.app import create_app
from lorastudio.serving.http import Settings
from lorastudio.serving.store import JobStore, default_url

_DATA = Path(tempfile.mkdtemp(prefix="lorastudio-fuzz-"))
atexit.register(shutil.rmtree, _DATA, True)
_SETTINGS = Settings(data_dir=_DATA, db_url=default_url(_DATA), workers=0, wait_cap_s=0.2, worker_stale_s=1e9,
                     allowed_hosts=["testserver"])  # the host name the ASGI transport sends
_STORE = JobStore(_SETTINGS.db_url)
_STORE.worker_seen("fuzz-worker", pid=1, host="test", device="cpu", state="ready", now=time.time())  # admits jobs
_, ADMIN = _STORE.create_key(["admin"])
APP = create_app(_SETTINGS, store=_STORE, supervise=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_and_every_4xx_is_a_problem(case):
    for headers in ({"Authorization": f"Bearer {ADMIN}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
        if response.status_code >= 400:
            content_type = response.headers.get("content-type") or [""]
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            assert content_type.startswith("application/problem+json"), (case.path, response.text[:300])
            assert "Traceback" not in response.text
