"""serving.md §3c, the 12 server reliability cases: faults, and nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

BODY = {"prompt": "a photo of bibimbap", "size": "64x64", "steps": 20, "seed": 1}
ASYNC = {"Prefer": "respond-async"}


def _submit(svc, token, body=None, **headers):
    response = svc.client.post("/v1/images/generations", json=body or BODY,
                               headers={**svc.auth(token), **ASYNC, **headers})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _steps(svc, job_id):
    return [d for _, t, d in svc.store.events_after(job_id) if t == "step"]


def test_01_12_kill_9_of_the_worker_mid_job_requeues_it_and_the_api_stays_up(service_factory):
    with service_factory(fake=True, fake_step_s=0.1) as svc:
        token = svc.key("generate", "train")
        svc.wait_ready(token)
        lora = svc.client.post("/v1/loras", files={"file": ("l.safetensors", _lora_bytes())}, data={"id": "hot"},
                               headers=svc.auth(token))
        assert lora.status_code == 201, lora.text
        running = _submit(svc, token, {**BODY, "loras": [{"id": "hot", "scale": 1}]})
        waiting = [_submit(svc, token) for _ in range(3)]
        while not _steps(svc, running):
            time.sleep(0.05)
        pid = svc.app.state.supervisor.pids()["w0"]
        os.kill(pid, signal.SIGKILL)
        assert svc.client.get("/healthz").status_code == 200  # the API does not notice
        end = time.time() + 30
        while svc.app.state.supervisor.pids()["w0"] == pid and time.time() < end:
            time.sleep(0.05)
        assert svc.app.state.supervisor.pids()["w0"] != pid  # restarted
        first = svc.wait_status(running, token)
        assert first["status"] == "succeeded" and first["attempts"] == 2  # re-queued once, then done
        assert [t for _, t, _ in svc.store.events_after(running)].count("requeued") == 1
        assert all(svc.wait_status(j, token)["status"] == "succeeded" for j in waiting)
        assert not list(svc.store.iter_jobs("running"))
        # The restarted worker rebuilds its LoRA cache lazily: the adapter still works.
        again = svc.client.post("/v1/images/generations", json={**BODY, "steps": 2, "loras": [{"id": "hot", "scale": 1}]},
                                headers=svc.auth(token))
        assert again.status_code == 200, again.text
        assert svc.store.counter_values()["worker_restarts"] == 1


def _lora_bytes() -> bytes:
    import io

    import torch
    from safetensors.torch import save

    tensors = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(8, 2)}
    return io.BytesIO(save(tensors)).getvalue()


def test_01b_a_job_lost_twice_fails_with_worker_lost(service_factory):
    with service_factory(fake=True, fake_step_s=0.2) as svc:
        token = svc.key("generate")
        svc.wait_ready(token)
        job = _submit(svc, token)
        for attempt in (1, 2):
            end = time.time() + 30
            while time.time() < end and not (svc.store.get(job).status == "running"
                                             and svc.store.get(job).attempts == attempt and _steps(svc, job)):
                time.sleep(0.05)
            os.kill(svc.app.state.supervisor.pids()["w0"], signal.SIGKILL)
            time.sleep(0.6)
        final = svc.wait_status(job, token)
        assert final["status"] == "failed" and final["error"]["code"] == "worker_lost"


def test_02_an_api_restart_keeps_every_queued_job(service_factory, tmp_path):
    data = tmp_path / "shared"
    with service_factory(fake=True, data=data, fake_step_s=0.05) as svc:
        token = svc.key("generate")
        svc.wait_ready(token)
        jobs = [_submit(svc, token) for _ in range(10)]
    left = {j: svc.store.get(j).status for j in jobs}
    assert "queued" in left.values() and "running" not in left.values()  # the stop drained the running one
    with service_factory(fake=True, data=data, fake_step_s=0.01) as again:
        assert all(again.wait_status(j, token)["status"] == "succeeded" for j in jobs)


def test_04_cancel_queued_never_runs_and_cancel_running_stops_within_a_step(service_factory):
    with service_factory(fake=True, fake_step_s=0.1) as svc:
        token = svc.key("generate")
        svc.wait_ready(token)
        running = _submit(svc, token, {**BODY, "steps": 100})
        queued = _submit(svc, token)
        while not _steps(svc, running):
            time.sleep(0.02)
        assert svc.client.delete(f"/v1/jobs/{queued}", headers=svc.auth(token)).json()["status"] == "canceled"
        svc.client.delete(f"/v1/jobs/{running}", headers=svc.auth(token))
        asked = len(_steps(svc, running))
        assert svc.wait_status(running, token)["status"] == "canceled"
        assert len(_steps(svc, running)) <= asked + 2  # one step in flight, one to notice
        assert "started" not in [t for _, t, _ in svc.store.events_after(queued)]
        nxt = svc.client.post("/v1/images/generations", json={**BODY, "steps": 2}, headers=svc.auth(token))
        assert nxt.status_code == 200  # the worker is free again


def test_05_a_client_that_disconnects_does_not_lose_its_job(live_server):
    url, svc_token, store = live_server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/images/generations", json={**BODY, "steps": 30}, timeout=0.3,
                   headers={"Authorization": f"Bearer {svc_token}"})
    end = time.time() + 30
    while time.time() < end and store.counts().get("succeeded", 0) < 1:
        time.sleep(0.1)
    assert store.counts().get("succeeded") == 1


def test_06_a_lora_changed_on_disk_fails_its_requests_only(service_factory):
    with service_factory(fake=True) as svc:
        token = svc.key("generate", "train")
        svc.wait_ready(token)
        svc.client.post("/v1/loras", files={"file": ("l.safetensors", _lora_bytes())}, data={"id": "style"},
                        headers=svc.auth(token))
        row = svc.store.get_lora("style")
        (svc.data / row["file"]).write_bytes(b"corrupted")
        response = svc.client.post("/v1/images/generations", json={**BODY, "steps": 2, "loras": [{"id": "style"}]},
                                   headers=svc.auth(token))
        assert response.status_code == 409 and response.json()["code"] == "lora_unusable"
        assert svc.client.post("/v1/images/generations", json={**BODY, "steps": 2},
                               headers=svc.auth(token)).status_code == 200


def test_08_a_full_disk_fails_the_job_with_storage_full(service_factory, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True).returncode:
        if os.environ.get("CI"):
            pytest.fail("cannot mount a small tmpfs to fill")
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        with service_factory(fake=True, data=mount / "data", db=f"sqlite:///{tmp_path / 'jobs.sqlite3'}") as svc:
            token = svc.key("generate")
            svc.wait_ready(token)
            filler = mount / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass  # ENOSPC: the volume is full
            finally:
                os.close(fd)
            response = svc.client.post("/v1/images/generations", json={**BODY, "steps": 2}, headers=svc.auth(token))
            assert response.status_code == 507 and response.json()["code"] == "storage_full"
            assert not [p for p in (mount / "data").rglob("*.png")]  # no partial output
            filler.unlink()
            assert svc.client.post("/v1/images/generations", json={**BODY, "steps": 2},
                                   headers=svc.auth(token)).status_code == 200
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_09_10_idempotency_and_deadlines(service_factory):
    with service_factory(fake=True, fake_step_s=0.1) as svc:
        token = svc.key("generate")
        svc.wait_ready(token)
        first = _submit(svc, token, {**BODY, "steps": 30}, **{"Idempotency-Key": "order-7"})
        second = _submit(svc, token, {**BODY, "steps": 30}, **{"Idempotency-Key": "order-7"})
        assert first == second
        late = _submit(svc, token, {**BODY, "deadline_s": 0.5})
        view = svc.wait_status(late, token)
        assert view["status"] == "expired" and view["error"]["code"] == "deadline_exceeded"
        assert "started" not in [t for _, t, _ in svc.store.events_after(late)]


def test_11_sigterm_drains_answers_503_and_keeps_the_queue(tmp_path):
    from serve_helpers import free_port

    from lorastudio.serving.store import JobStore, default_url

    data, port = tmp_path / "d", free_port()
    data.mkdir()
    store = JobStore(default_url(data))
    _, token = store.create_key(["generate"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lorastudio", "serve", "--port", str(port), "--data", str(data),
                             "--fake-workers", "--drain-timeout", "20"], env=env, stderr=subprocess.DEVNULL)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        end = time.time() + 60
        while time.time() < end:
            try:
                if httpx.get(f"{url}/readyz", headers=auth).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        post = lambda steps: httpx.post(f"{url}/v1/images/generations", json={**BODY, "steps": steps},  # noqa: E731
                                        headers={**auth, **ASYNC})
        running = post(150).json()["id"]
        queued = [post(5).json()["id"] for _ in range(3)]
        while store.get(running).status != "running":
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = post(5)
        assert refused.status_code == 503 and refused.json()["code"] == "draining" and refused.headers["Retry-After"]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert store.get(running).status == "succeeded"  # finished within the drain timeout
    assert all(store.get(j).status == "queued" for j in queued)  # persisted for the next start


@pytest.fixture
def live_server(tmp_path):
    """`lorastudio serve --fake-workers` as a real process on a loopback port."""
    from serve_helpers import free_port

    from lorastudio.serving.store import JobStore, default_url

    data, port = tmp_path / "live", free_port()
    data.mkdir()
    store = JobStore(default_url(data))
    _, token = store.create_key(["generate"])
    proc = subprocess.Popen([sys.executable, "-m", "lorastudio", "serve", "--port", str(port), "--data", str(data),
                             "--fake-workers"], env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 60
    while time.time() < end:
        try:
            if httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    yield url, token, store
    proc.terminate()
    proc.wait(timeout=60)


def test_03_an_out_of_memory_job_fails_with_oom_and_the_next_one_runs(tmp_path):
    """Fault injection at the runner boundary: the worker's own handling is what is tested."""
    import torch

    from lorastudio.serving.store import JobStore, default_url
    from lorastudio.serving.worker import Worker, parse_args

    data = tmp_path / "d"
    data.mkdir()
    url = default_url(data)
    worker = Worker(parse_args(["--db", url, "--data", str(data), "--worker-id", "w0", "--fake"]))
    released = []

    class Exhausted:
        def run(self, job, trace):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

        def release_memory(self):
            released.append(True)

    from lorastudio.serving.runners import FakeRunner

    store = JobStore(url)
    huge, _ = store.submit("generate", "k", {"prompt": "x", "steps": 2, "n": 1, "seed": 0, "width": 2048,
                                              "height": 2048})
    normal, _ = store.submit("generate", "k", {"prompt": "x", "steps": 2, "n": 1, "seed": 0})
    worker.runner = Exhausted()
    worker.execute(store.claim("w0", 10))
    failed = store.get(huge.id)
    assert failed.status == "failed" and failed.error_code == "oom" and released == [True]
    assert "80.00 GiB" not in (failed.error_message or "")
    worker.runner = FakeRunner(worker.args, worker.store, data)
    worker.execute(store.claim("w0", 10))
    assert store.get(normal.id).status == "succeeded"
