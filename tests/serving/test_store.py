"""The job store on SQLite and on a real PostgreSQL server: the same tests for both."""

from __future__ import annotations

import threading

from lorastudio.serving.store import JobStore


def test_submit_is_idempotent_and_claims_follow_priority(db_url):
    store = JobStore(db_url)
    first, created = store.submit("generate", "k1", {"prompt": "a"}, idempotency_key="req-1", now=100.0)
    again, created_again = store.submit("generate", "k1", {"prompt": "a"}, idempotency_key="req-1", now=101.0)
    assert created and not created_again and again.id == first.id
    other_key, created_other = store.submit("generate", "k2", {"prompt": "a"}, idempotency_key="req-1", now=101.0)
    assert created_other and other_key.id != first.id  # idempotency keys are per API key
    urgent, _ = store.submit("generate", "k1", {"prompt": "b"}, priority=5, now=102.0)
    assert store.position(urgent) == 0 and store.position(store.get(first.id)) == 1
    claimed = store.claim("w0", lease_s=10, now=103.0)
    assert claimed.id == urgent.id and claimed.status == "running" and claimed.attempts == 1
    assert [t for _, t, _ in store.events_after(urgent.id)] == ["queued", "started"]
    assert store.get(first.id, key_id="k2") is None  # another key's job is not found
    store.close()


def test_concurrent_claims_never_hand_out_a_job_twice(db_url):
    store = JobStore(db_url)
    ids = {store.submit("generate", "k", {"i": i})[0].id for i in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        mine = JobStore(db_url)
        while (job := mine.claim(name, lease_s=30)) is not None:
            with lock:
                claimed.append(job.id)
            mine.finish(job.id, name, "succeeded", result={"images": []})
        mine.close()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids) and len(claimed) == len(set(claimed))
    assert store.counts() == {"succeeded": 40}
    store.close()


def test_an_expired_lease_requeues_once_then_fails_worker_lost(db_url):
    store = JobStore(db_url)
    job, _ = store.submit("generate", "k", {"prompt": "a"}, now=0.0)
    store.claim("w0", lease_s=5, now=1.0)
    assert store.heartbeat(job.id, "w0", lease_s=5, now=4.0)  # renewed until 9.0
    assert store.reap(now=8.0) == []
    assert store.reap(now=10.0) == [job.id]
    back = store.get(job.id)
    assert back.status == "queued" and back.attempts == 1 and back.worker_id is None
    store.claim("w1", lease_s=5, now=11.0)
    assert not store.heartbeat(job.id, "w0", lease_s=5, now=12.0)  # the old worker lost it
    assert store.reap(now=20.0) == [job.id]
    lost = store.get(job.id)
    assert lost.status == "failed" and lost.error_code == "worker_lost" and lost.attempts == 2
    assert [t for _, t, _ in store.events_after(job.id)][-1] == "failed"
    store.close()


def test_cancel_deadline_and_finish_rules(db_url):
    store = JobStore(db_url)
    queued, _ = store.submit("generate", "k", {}, now=0.0)
    assert store.cancel(queued.id, key_id="other") is None  # not the owner: nothing happens
    assert store.get(queued.id).status == "queued"
    assert store.cancel(queued.id, key_id="k").status == "canceled"
    assert store.claim("w0", lease_s=5, now=1.0) is None  # a canceled job never runs
    late, _ = store.submit("generate", "k", {}, deadline_at=5.0, now=2.0)
    assert store.claim("w0", lease_s=5, now=6.0) is None
    assert store.get(late.id).status == "expired" and store.get(late.id).error_code == "deadline_exceeded"
    running, _ = store.submit("generate", "k", {}, now=7.0)
    store.claim("w0", lease_s=5, now=7.5)
    assert store.cancel(running.id).cancel_requested and store.cancel_requested(running.id)
    assert not store.finish(running.id, "someone-else", "succeeded", result={})
    assert store.finish(running.id, "w0", "canceled", now=8.0)
    assert store.get(running.id).status == "canceled"
    store.close()


def test_keys_are_stored_as_hashes_and_revocable(db_url):
    store = JobStore(db_url)
    key_id, token = store.create_key(["generate", "train"], "app")
    assert store.verify_key(token) == (key_id, ["generate", "train"])
    assert store.verify_key(token + "x") is None and store.verify_key("not-a-key") is None
    from sqlalchemy import text

    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT hash FROM api_keys")).scalars().all()
    assert token not in " ".join(stored)
    assert store.revoke_key(key_id) and store.verify_key(token) is None and not store.has_keys()
    store.close()
