"""The floor: a minimal durable pipeline on Podium's stack, to say what a `direct` run costs
on the machine at hand before any of Podium's own work (docs/performance.md, "The floor").

    python -m bench.floor gateway|orchestrator|worker|learner   (started by the bench)

It keeps the guarantees of Podium's `direct` run and nothing more:

- **admission** is durable: one transaction writes the run and its outbox row; the message
  is published after the commit, and the outbox row is marked published in batches (every
  0.1 s, by one thread), as Podium does;
- every hop is a Celery task with acks_late and task_reject_on_worker_lost, JSON, prefetch 1,
  a threads pool, on the same broker as Podium's stack: ``start`` (gateway -> orchestrator),
  ``call`` (orchestrator -> worker), ``finish`` (worker -> orchestrator), ``completed``
  (orchestrator -> learner): four messages per run;
- each hop's state change and the outbox row of the message it causes commit together;
  every transition is conditional on the state before it, so a redelivery changes nothing;
- the model is a zero-latency function; its answer and a post-mortem row are committed;
- events go to a Redis stream per run (started, call completed, completed).

Raw SQL through psycopg, one connection per thread (no ORM), no tenancy, no decisions, no
quotas, no metrics. Reads ``FLOOR_DATABASE_URL`` (a psycopg URL), ``FLOOR_BROKER_URL``,
``FLOOR_REDIS_URL``, ``FLOOR_PREFIX`` (Redis keys and queue names) and ``FLOOR_PORT``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_runs (
    id text PRIMARY KEY, input text NOT NULL, status text NOT NULL, output text,
    created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);
CREATE TABLE IF NOT EXISTS floor_calls (
    id text PRIMARY KEY, run_id text NOT NULL REFERENCES floor_runs(id), status text NOT NULL,
    output text, created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);
CREATE TABLE IF NOT EXISTS floor_outbox (
    id text PRIMARY KEY, task text NOT NULL, payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz);
CREATE TABLE IF NOT EXISTS floor_postmortems (
    run_id text PRIMARY KEY REFERENCES floor_runs(id), facts jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
"""

# (message id, task, payload) of an outbox row written in the current transaction.
Staged = tuple[str, str, dict[str, Any]]


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set")
    return value


def queue(role: str, prefix: str | None = None) -> str:
    """The queue of a role. On Redis the transport prefixes every key already; on RabbitMQ
    the name carries the prefix, so that two stacks never share a queue."""
    prefix = os.environ.get("FLOOR_PREFIX", "floor") if prefix is None else prefix
    return f"{prefix.rstrip(':')}.{role}"


ROUTES = {
    "start": "orchestrator",
    "call": "worker",
    "finish": "orchestrator",
    "completed": "learner",
}


class Store:
    """One psycopg connection per thread; ``tx()`` is one transaction."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self._url = url
        self._local = threading.local()

    def conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self._url)
            self._local.conn = conn
        return conn

    def tx(self) -> Any:
        return self.conn().transaction()


class Outbox:
    """Rows written with the state change; published after the commit; marked in batches."""

    def __init__(self, store: Store, celery: Any) -> None:
        self.store = store
        self.celery = celery
        self._marks: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._mark_loop, daemon=True).start()

    def stage(self, cur: Any, task: str, payload: dict[str, Any]) -> Staged:
        message_id = uuid.uuid4().hex
        cur.execute(
            "INSERT INTO floor_outbox (id, task, payload) VALUES (%s, %s, %s)",
            (message_id, task, json.dumps(payload)),
        )
        return message_id, task, payload

    def publish(self, staged: Staged) -> None:
        message_id, task, payload = staged
        self.celery.send_task(
            f"floor.{task}", args=[payload], queue=queue(ROUTES[task]), task_id=message_id
        )
        with self._lock:
            self._marks.append(message_id)

    def _mark_loop(self) -> None:
        while True:
            time.sleep(0.1)
            with self._lock:
                ids, self._marks = self._marks, []
            if ids:
                with self.store.tx(), self.store.conn().cursor() as cur:
                    cur.execute(
                        "UPDATE floor_outbox SET published_at = now() WHERE id = ANY(%s)", (ids,)
                    )


def make_celery() -> Any:
    from bench.baseline_celery import bare_app

    concurrency = int(os.environ.get("FLOOR_CONCURRENCY", "16"))
    prefix = os.environ.get("FLOOR_PREFIX", "")
    return bare_app("floor", _env("FLOOR_BROKER_URL"), prefix, concurrency)


class Events:
    def __init__(self) -> None:
        import redis

        self._client = redis.Redis.from_url(_env("FLOOR_REDIS_URL"))
        self._prefix = os.environ.get("FLOOR_PREFIX", "floor")

    def publish(self, run_id: str, type_: str, data: dict[str, Any]) -> None:
        key = f"{self._prefix}:events:{run_id}"
        self._client.xadd(key, {"type": type_, "data": json.dumps(data)}, maxlen=1000)


def answer(prompt: str) -> str:
    """The zero-latency model."""
    return f"(floor) an answer to: {prompt[:80]}"


def register(role: str, app: Any, store: Store, outbox: Outbox, events: Events) -> None:
    def start(payload: dict[str, Any]) -> None:
        run_id = payload["run_id"]
        call_id = uuid.uuid4().hex
        with store.tx(), store.conn().cursor() as cur:
            cur.execute(
                "UPDATE floor_runs SET status = 'running' WHERE id = %s AND status = 'queued'",
                (run_id,),
            )
            if cur.rowcount == 0:
                return
            cur.execute(
                "INSERT INTO floor_calls (id, run_id, status) VALUES (%s, %s, 'pending')",
                (call_id, run_id),
            )
            staged = outbox.stage(cur, "call", {"call_id": call_id, "run_id": run_id})
        outbox.publish(staged)
        events.publish(run_id, "run.started", {"run_id": run_id})

    def call(payload: dict[str, Any]) -> None:
        call_id, run_id = payload["call_id"], payload["run_id"]
        with store.tx(), store.conn().cursor() as cur:
            cur.execute(
                "UPDATE floor_calls c SET status = 'running' FROM floor_runs r"
                " WHERE c.id = %s AND c.status = 'pending' AND r.id = c.run_id"
                " RETURNING r.input",
                (call_id,),
            )
            row = cur.fetchone()
        if row is None:
            return
        output = answer(row[0])
        with store.tx(), store.conn().cursor() as cur:
            cur.execute(
                "UPDATE floor_calls SET status = 'succeeded', output = %s, finished_at = now()"
                " WHERE id = %s AND status = 'running'",
                (output, call_id),
            )
            if cur.rowcount == 0:
                return
            staged = outbox.stage(cur, "finish", {"call_id": call_id, "run_id": run_id})
        outbox.publish(staged)
        events.publish(run_id, "call.completed", {"run_id": run_id, "call_id": call_id})

    def finish(payload: dict[str, Any]) -> None:
        call_id, run_id = payload["call_id"], payload["run_id"]
        with store.tx(), store.conn().cursor() as cur:
            cur.execute(
                "UPDATE floor_runs r SET status = 'completed', finished_at = now(),"
                " output = c.output FROM floor_calls c"
                " WHERE r.id = %s AND r.status = 'running' AND c.id = %s",
                (run_id, call_id),
            )
            if cur.rowcount == 0:
                return
            staged = outbox.stage(cur, "completed", {"run_id": run_id})
        outbox.publish(staged)
        events.publish(run_id, "run.completed", {"run_id": run_id})

    def completed(payload: dict[str, Any]) -> None:
        run_id = payload["run_id"]
        with store.tx(), store.conn().cursor() as cur:
            cur.execute(
                "INSERT INTO floor_postmortems (run_id, facts)"
                " SELECT id, json_build_object('status', status,"
                " 'latency_ms', extract(epoch FROM finished_at - created_at) * 1000)"
                " FROM floor_runs WHERE id = %s ON CONFLICT DO NOTHING",
                (run_id,),
            )

    handlers = {"start": start, "call": call, "finish": finish, "completed": completed}
    for task, handler in handlers.items():
        if ROUTES[task] == role:
            app.task(name=f"floor.{task}")(handler)


class RunIn(BaseModel):
    input: str = Field(min_length=1, max_length=10_000)


def serve_gateway() -> None:
    import uvicorn
    from fastapi import FastAPI, HTTPException

    store = Store(_env("FLOOR_DATABASE_URL"))
    outbox = Outbox(store, make_celery())
    api = FastAPI()

    # A sync route: FastAPI runs it on its thread pool, and psycopg's connection stays with
    # its thread.
    @api.post("/runs", status_code=202)
    def create_run(body: RunIn) -> dict[str, str]:
        run_id = uuid.uuid4().hex
        try:
            with store.tx(), store.conn().cursor() as cur:
                cur.execute(
                    "INSERT INTO floor_runs (id, input, status) VALUES (%s, %s, 'queued')",
                    (run_id, body.input),
                )
                staged = outbox.stage(cur, "start", {"run_id": run_id})
        except Exception as exc:
            raise HTTPException(503, f"store unavailable: {exc}") from exc
        # A failed publish is left in the outbox, where Podium's sweep would find it.
        with contextlib.suppress(Exception):
            outbox.publish(staged)
        return {"id": run_id, "status": "queued"}

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(api, host="127.0.0.1", port=int(_env("FLOOR_PORT")), log_level="warning")


def serve_worker(role: str) -> None:
    app = make_celery()
    store = Store(_env("FLOOR_DATABASE_URL"))
    register(role, app, store, Outbox(store, app), Events())
    app.worker_main(
        [
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            os.environ.get("FLOOR_CONCURRENCY", "16"),
            "--queues",
            queue(role),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"{queue(role)}@%h",
        ]
    )


def create_schema(url: str) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(SCHEMA)


def main() -> None:
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "gateway":
        serve_gateway()
    elif role in ("orchestrator", "worker", "learner"):
        serve_worker(role)
    else:
        raise SystemExit("usage: python -m bench.floor gateway|orchestrator|worker|learner")


if __name__ == "__main__":
    main()
