"""The durable job store: SQLAlchemy 2 Core over SQLite (WAL, embedded) or PostgreSQL.

One table of jobs is the queue. Workers claim the best queued job in one transaction
(`SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, where several workers on several hosts
race; a `BEGIN IMMEDIATE` write lock on SQLite) and hold a lease they renew with a
heartbeat. A lease that runs out means the worker is gone: the job is queued again once
(its attempt count kept) or fails with `worker_lost`. Events (`queued`, `started`, `step`,
`completed`, ...) are rows too, so any API process can stream them and a restart loses none.

Times are UNIX seconds from the caller's clock, so tests can move time explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (
    Boolean, Column, Float, ForeignKey, Integer, MetaData, String, Table, Text, UniqueConstraint, and_, create_engine,
    delete, event, func, insert, or_, select, update,
)
from sqlalchemy.engine import Connection, Engine

TERMINAL = ("succeeded", "failed", "canceled", "expired")
STATES = ("queued", "running", *TERMINAL)
KINDS = ("generate", "enhance", "train", "caption", "evaluate", "audit")
SCOPES = ("generate", "train", "admin")
KEY_PREFIX = "lsk_"

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("priority", Integer, nullable=False, default=0),
    Column("key_id", String(32), nullable=False, index=True),
    Column("idempotency_key", String(128)),
    Column("params", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("deadline_at", Float),
    Column("lease_until", Float),
    Column("worker_id", String(64)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=2),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("result", Text),
    Column("error_code", String(32)),
    Column("error_message", Text),
    Column("trace", Text),
    UniqueConstraint("key_id", "idempotency_key", name="uq_jobs_idempotency"),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("type", String(16), nullable=False),
    Column("data", Text, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False, default=""),
    Column("scopes", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

loras = Table(
    "loras", metadata,
    Column("id", String(64), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("family", String(8), nullable=False),
    Column("format", String(32), nullable=False),
    Column("modules", Integer, nullable=False),
    Column("file", String(256), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
)

# A registered id's trigger embedding: the whole entry for a textual-inversion file (the loras
# row then holds the embedding itself, format "embedding"), or a pivotal LoRA's partner file.
# A table of its own, so databases made before it gain it from create_all.
lora_embeddings = Table(
    "lora_embeddings", metadata,
    Column("lora_id", String(64), ForeignKey("loras.id", ondelete="CASCADE"), primary_key=True),
    Column("trigger", String(64), nullable=False),
    Column("vectors", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("file", String(256), nullable=False),
)

workers = Table(
    "workers", metadata,
    Column("id", String(64), primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("host", String(128), nullable=False),
    Column("device", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("last_seen", Float, nullable=False),
)


# The counter row that pauses the queue (1) or not (0/absent); admin.set_paused writes it.
QUEUE_PAUSED = "queue_paused"
counters = Table(
    "counters", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)


class StoreError(Exception):
    """A request the store refuses; `code` is the problem code the API answers with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Job:
    """A job row with its JSON columns decoded."""

    id: str
    kind: str
    status: str
    priority: int
    key_id: str
    params: dict
    created_at: float
    started_at: float | None
    finished_at: float | None
    deadline_at: float | None
    lease_until: float | None
    worker_id: str | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    result: dict | None
    error_code: str | None
    error_message: str | None
    trace: list | None
    idempotency_key: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        data = dict(row._mapping)
        for name in ("params", "result", "trace"):
            data[name] = json.loads(data[name]) if data[name] else ({} if name == "params" else None)
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)


def hash_key(token: str) -> str:
    """The stored form of an API key: only its SHA-256 ever touches the disk."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _with_embedding(conn: Connection, row: Any) -> dict:
    """A loras row as a dict, with `embedding` (its lora_embeddings row without the key) or None."""
    found = conn.execute(select(lora_embeddings).where(lora_embeddings.c.lora_id == row.id)).first()
    embedding = {k: v for k, v in found._mapping.items() if k != "lora_id"} if found is not None else None
    return {**dict(row._mapping), "embedding": embedding}


def default_url(data_dir: Path) -> str:
    """The embedded SQLite database under the data dir."""
    return f"sqlite:///{Path(data_dir).resolve() / 'jobs.sqlite3'}"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001 - DB-API types
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: survives a process crash; a power cut may undo the last commits
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Writers take the write lock up front, so a claim's SELECT and UPDATE cannot
        # interleave with another claim's; readers stay concurrent (WAL).
        write = conn.get_execution_options().get("lorastudio_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class JobStore:
    """Jobs, events, API keys, registered LoRAs and worker heartbeats in one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
            _sqlite_setup(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        self._writer = self.engine.execution_options(lorastudio_write=True)
        metadata.create_all(self._writer)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def _tx(self) -> Any:
        return self._writer.begin()

    # ------------------------------------------------------------------ keys

    def create_key(self, scopes: list[str], name: str = "", now: float | None = None) -> tuple[str, str]:
        """A new API key; returns (key id, token). The token is shown once and never stored."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise StoreError("bad_scope", f"scopes must be a non-empty subset of {', '.join(SCOPES)} (got {bad or scopes})")
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = uuid.uuid4().hex[:12]
        with self._tx() as conn:
            conn.execute(insert(api_keys).values(id=key_id, hash=hash_key(token), name=name,
                                                 scopes=",".join(sorted(set(scopes))), created_at=now or time.time()))
        return key_id, token

    def list_keys(self) -> list[dict]:
        """Every key's id, name, scopes and state (never a token or hash)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).all()
        return [{"id": r.id, "name": r.name, "scopes": r.scopes.split(","), "created_at": r.created_at,
                 "revoked": r.revoked_at is not None} for r in rows]

    def revoke_key(self, key_id: str, now: float | None = None) -> bool:
        """Revoke a key; False when no such active key exists."""
        with self._tx() as conn:
            done = conn.execute(update(api_keys).where(and_(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)))
                                .values(revoked_at=now or time.time()))
        return done.rowcount == 1

    def has_keys(self) -> bool:
        """Whether any active key exists (a non-loopback bind needs one)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(api_keys)
                                .where(api_keys.c.revoked_at.is_(None))).scalar_one() > 0

    def verify_key(self, token: str) -> tuple[str, list[str]] | None:
        """(key id, scopes) for an active token, else None. Compared by hash in constant time."""
        if not token.startswith(KEY_PREFIX) or len(token) > 128:
            return None
        digest = hash_key(token)
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.hash == digest)).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.hash, digest):
            return None
        return row.id, row.scopes.split(",")

    # ------------------------------------------------------------------ jobs

    def submit(self, kind: str, key_id: str, params: dict, *, priority: int = 0, deadline_at: float | None = None,
               idempotency_key: str | None = None, max_attempts: int = 2, now: float | None = None) -> tuple[Job, bool]:
        """Queue a job; returns (job, created). The same idempotency key returns the first job."""
        if kind not in KINDS:
            raise StoreError("bad_kind", f"unknown job kind '{kind}'")
        now = now or time.time()
        job_id = uuid.uuid4().hex
        with self._tx() as conn:
            if idempotency_key is not None:
                existing = conn.execute(select(jobs).where(and_(jobs.c.key_id == key_id,
                                                                jobs.c.idempotency_key == idempotency_key))).first()
                if existing is not None:
                    return Job.from_row(existing), False
            conn.execute(insert(jobs).values(
                id=job_id, kind=kind, status="queued", priority=priority, key_id=key_id,
                idempotency_key=idempotency_key, params=json.dumps(params, sort_keys=True), created_at=now,
                deadline_at=deadline_at, attempts=0, max_attempts=max_attempts, cancel_requested=False))
            self._event(conn, job_id, "queued", {"kind": kind}, now)
        return self.get(job_id), True

    def get(self, job_id: str, key_id: str | None = None) -> Job | None:
        """A job, or None; with `key_id`, only that key's job (another key's is 'not found')."""
        query = select(jobs).where(jobs.c.id == job_id)
        if key_id is not None:
            query = query.where(jobs.c.key_id == key_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Job.from_row(row) if row is not None else None

    def position(self, job: Job) -> int | None:
        """How many queued jobs run before this one (0 = next), or None when not queued."""
        if job.status != "queued":
            return None
        ahead = or_(jobs.c.priority > job.priority,
                    and_(jobs.c.priority == job.priority, jobs.c.created_at < job.created_at))
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(jobs)
                                .where(and_(jobs.c.status == "queued", ahead))).scalar_one()

    def counts(self, key_id: str | None = None) -> dict[str, int]:
        """Jobs per state (for one key when given)."""
        query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
        if key_id is not None:
            query = query.where(jobs.c.key_id == key_id)
        with self.engine.connect() as conn:
            return {status: n for status, n in conn.execute(query).all()}

    def recent_service_seconds(self, limit: int = 20) -> list[float]:
        """Service times of the latest finished jobs (for Retry-After estimates)."""
        query = (select(jobs.c.finished_at - jobs.c.started_at).where(and_(
            jobs.c.status == "succeeded", jobs.c.started_at.is_not(None), jobs.c.finished_at.is_not(None)))
            .order_by(jobs.c.finished_at.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [float(v) for (v,) in conn.execute(query).all()]

    def claim(self, worker_id: str, lease_s: float, kinds: tuple[str, ...] = KINDS,
              now: float | None = None) -> Job | None:
        """Atomically take the best queued job for `worker_id` and lease it, or None."""
        now = now or time.time()
        with self._tx() as conn:
            self._expire_overdue(conn, now)
            if conn.execute(select(counters.c.value).where(counters.c.name == QUEUE_PAUSED)).scalar():
                return None  # paused by an admin: running jobs finish, queued ones wait
            query = (select(jobs.c.id).where(and_(jobs.c.status == "queued", jobs.c.kind.in_(kinds)))
                     .order_by(jobs.c.priority.desc(), jobs.c.created_at).limit(1))
            if not self.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            job_id = conn.execute(query).scalar()
            if job_id is None:
                return None
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                status="running", worker_id=worker_id, lease_until=now + lease_s, started_at=now,
                attempts=jobs.c.attempts + 1))
            self._event(conn, job_id, "started", {"worker": worker_id}, now)
        return self.get(job_id)

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float, now: float | None = None) -> bool:
        """Renew a lease; False when the job is no longer this worker's (lost, canceled)."""
        now = now or time.time()
        with self._tx() as conn:
            done = conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.worker_id == worker_id,
                                                        jobs.c.status == "running")).values(lease_until=now + lease_s))
        return done.rowcount == 1

    def finish(self, job_id: str, worker_id: str, status: str, *, result: dict | None = None,
               error: tuple[str, str] | None = None, trace: list | None = None, now: float | None = None) -> bool:
        """Record a running job's end (succeeded / failed / canceled); False if it was not ours."""
        if status not in ("succeeded", "failed", "canceled"):
            raise StoreError("bad_state", f"cannot finish a job as '{status}'")
        now = now or time.time()
        values: dict[str, Any] = {"status": status, "finished_at": now, "lease_until": None,
                                  "result": json.dumps(result) if result is not None else None,
                                  "trace": json.dumps(trace) if trace is not None else None}
        if error:
            values.update(error_code=error[0], error_message=error[1])
        with self._tx() as conn:
            done = conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.worker_id == worker_id,
                                                        jobs.c.status == "running")).values(**values))
            if done.rowcount != 1:
                return False
            data = dict(result or {}) if status in ("succeeded", "canceled") else (
                {"code": error[0], "message": error[1]} if error else {})
            self._event(conn, job_id, {"succeeded": "completed"}.get(status, status), data, now)
        return True

    def cancel(self, job_id: str, key_id: str | None = None, now: float | None = None) -> Job | None:
        """Cancel: a queued job never runs; a running one is asked to stop at its next step."""
        now = now or time.time()
        owner = [jobs.c.key_id == key_id] if key_id is not None else []
        with self._tx() as conn:
            gone = conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.status == "queued", *owner))
                                .values(status="canceled", finished_at=now))
            if gone.rowcount == 1:
                self._event(conn, job_id, "canceled", {"while": "queued"}, now)
            else:
                conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.status == "running", *owner))
                             .values(cancel_requested=True))
        return self.get(job_id, key_id)

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked a running job to stop."""
        with self.engine.connect() as conn:
            return bool(conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar())

    def reap(self, now: float | None = None, worker_id: str | None = None) -> list[str]:
        """Handle jobs whose worker is gone (lease expired, or `worker_id` known dead).

        Each is queued again while it has attempts left (the count is kept), else it fails
        with `worker_lost`. Returns the ids handled.
        """
        now = now or time.time()
        lost = jobs.c.worker_id == worker_id if worker_id is not None else jobs.c.lease_until < now
        handled = []
        with self._tx() as conn:
            for row in conn.execute(select(jobs.c.id, jobs.c.attempts, jobs.c.max_attempts, jobs.c.cancel_requested)
                                    .where(and_(jobs.c.status == "running", lost))).all():
                if row.cancel_requested:
                    conn.execute(update(jobs).where(jobs.c.id == row.id).values(status="canceled", finished_at=now))
                    self._event(conn, row.id, "canceled", {"while": "running"}, now)
                elif row.attempts < row.max_attempts:
                    conn.execute(update(jobs).where(jobs.c.id == row.id).values(
                        status="queued", worker_id=None, lease_until=None, started_at=None))
                    self._event(conn, row.id, "requeued", {"reason": "worker_lost", "attempts": row.attempts}, now)
                else:
                    conn.execute(update(jobs).where(jobs.c.id == row.id).values(
                        status="failed", finished_at=now, lease_until=None, error_code="worker_lost",
                        error_message="the worker running this job stopped"))
                    self._event(conn, row.id, "failed", {"code": "worker_lost"}, now)
                handled.append(row.id)
        return handled

    def _expire_overdue(self, conn: Connection, now: float) -> None:
        overdue = conn.execute(select(jobs.c.id).where(and_(jobs.c.status == "queued", jobs.c.deadline_at.is_not(None),
                                                            jobs.c.deadline_at < now))).scalars().all()
        for job_id in overdue:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                status="expired", finished_at=now, error_code="deadline_exceeded",
                error_message="the job's deadline passed before a worker could start it"))
            self._event(conn, job_id, "expired", {}, now)

    def expire_overdue(self, now: float | None = None) -> None:
        """Expire queued jobs past their deadline (they never run)."""
        with self._tx() as conn:
            self._expire_overdue(conn, now or time.time())

    # ------------------------------------------------------------------ events

    def _event(self, conn: Connection, job_id: str, kind: str, data: dict, now: float) -> None:
        conn.execute(insert(events).values(job_id=job_id, created_at=now, type=kind, data=json.dumps(data)))

    def add_event(self, job_id: str, kind: str, data: dict, now: float | None = None) -> None:
        """Append an event (e.g. a denoising step) to a job's stream."""
        with self._tx() as conn:
            self._event(conn, job_id, kind, data, now or time.time())

    def events_after(self, job_id: str, after: int = 0) -> list[tuple[int, str, dict]]:
        """(event id, type, data) of a job's events newer than `after`, oldest first."""
        query = (select(events.c.id, events.c.type, events.c.data)
                 .where(and_(events.c.job_id == job_id, events.c.id > after)).order_by(events.c.id))
        with self.engine.connect() as conn:
            return [(i, t, json.loads(d)) for i, t, d in conn.execute(query).all()]

    def event_log(self, job_id: str) -> list[tuple[int, float, str, dict]]:
        """(event id, time, type, data) of every event of a job, oldest first."""
        query = (select(events.c.id, events.c.created_at, events.c.type, events.c.data)
                 .where(events.c.job_id == job_id).order_by(events.c.id))
        with self.engine.connect() as conn:
            return [(i, float(at), t, json.loads(d)) for i, at, t, d in conn.execute(query).all()]

    def last_event_id(self) -> int:
        """The newest event id (0 when there is none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(events.c.id))).scalar() or 0)

    def events_since(self, after: int, limit: int = 1000) -> list[tuple[int, str, str, dict]]:
        """(event id, job id, type, data) of every job's events newer than `after`."""
        query = (select(events.c.id, events.c.job_id, events.c.type, events.c.data)
                 .where(events.c.id > after).order_by(events.c.id).limit(limit))
        with self.engine.connect() as conn:
            return [(i, j, t, json.loads(d)) for i, j, t, d in conn.execute(query).all()]

    # ------------------------------------------------------------------ LoRAs and workers

    def add_lora(self, lora_id: str, *, sha256: str, family: str, fmt: str, modules: int, file: str, key_id: str,
                 now: float | None = None, embedding: dict | None = None) -> None:
        """Register an adapter file (already validated and stored under the data dir), with its
        trigger embedding when it has one (`embedding`: trigger, vectors, sha256, file)."""
        with self._tx() as conn:
            if conn.execute(select(loras.c.id).where(loras.c.id == lora_id)).first() is not None:
                raise StoreError("lora_exists", f"a LoRA with id '{lora_id}' is already registered")
            conn.execute(insert(loras).values(id=lora_id, sha256=sha256, family=family, format=fmt, modules=modules,
                                              file=file, key_id=key_id, created_at=now or time.time()))
            if embedding is not None:
                conn.execute(insert(lora_embeddings).values(lora_id=lora_id, **embedding))

    def get_lora(self, lora_id: str) -> dict | None:
        """A registered adapter's row (`embedding`: its trigger embedding's row or None), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(loras).where(loras.c.id == lora_id)).first()
            return _with_embedding(conn, row) if row is not None else None

    def list_loras(self) -> list[dict]:
        """Every registered adapter."""
        with self.engine.connect() as conn:
            return [_with_embedding(conn, r) for r in conn.execute(select(loras).order_by(loras.c.created_at)).all()]

    def delete_lora(self, lora_id: str) -> dict | None:
        """Unregister an adapter; returns its row (the caller removes the files) or None."""
        with self._tx() as conn:
            row = conn.execute(select(loras).where(loras.c.id == lora_id)).first()
            found = _with_embedding(conn, row) if row is not None else None
            if row is not None:
                conn.execute(delete(lora_embeddings).where(lora_embeddings.c.lora_id == lora_id))
                conn.execute(delete(loras).where(loras.c.id == lora_id))
        return found

    def worker_seen(self, worker_id: str, *, pid: int, host: str, device: str, state: str,
                    now: float | None = None) -> None:
        """A worker's heartbeat row (state: loading, ready, busy, stopping)."""
        now = now or time.time()
        with self._tx() as conn:
            found = conn.execute(update(workers).where(workers.c.id == worker_id).values(
                pid=pid, host=host, device=device, state=state, last_seen=now))
            if found.rowcount == 0:
                conn.execute(insert(workers).values(id=worker_id, pid=pid, host=host, device=device, state=state,
                                                    last_seen=now))

    def live_workers(self, stale_s: float, now: float | None = None) -> list[dict]:
        """Workers seen within `stale_s` seconds."""
        now = now or time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(select(workers).where(workers.c.last_seen >= now - stale_s)
                                .order_by(workers.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def forget_worker(self, worker_id: str) -> None:
        """Drop a worker's heartbeat row (it exited or was found dead)."""
        with self._tx() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    def bump(self, name: str, by: int = 1) -> None:
        """Add to a named counter shared by every process (cache hits, restarts, 429s)."""
        with self._tx() as conn:
            done = conn.execute(update(counters).where(counters.c.name == name).values(value=counters.c.value + by))
            if done.rowcount == 0:
                conn.execute(insert(counters).values(name=name, value=by))

    def counter_values(self) -> dict[str, int]:
        """Every named counter."""
        with self.engine.connect() as conn:
            return {n: v for n, v in conn.execute(select(counters.c.name, counters.c.value)).all()}

    def durations(self, column: str) -> list[float]:
        """Queue waits ("wait") or service times ("service") of every finished job."""
        start, end = ((jobs.c.created_at, jobs.c.started_at) if column == "wait" else (jobs.c.started_at, jobs.c.finished_at))
        query = select(end - start).where(and_(start.is_not(None), end.is_not(None)))
        with self.engine.connect() as conn:
            return [float(v) for (v,) in conn.execute(query).all()]

    def iter_jobs(self, status: str) -> Iterator[Job]:
        """Jobs in one state (tests and the drain logic)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.status == status).order_by(jobs.c.created_at)).all()
        return iter([Job.from_row(r) for r in rows])
