"""The fault tests' harness: a stack tuned for fast recovery, private Redis and PostgreSQL
servers that a test may kill, a load generator, and the counts each test reports.

Counts are read from the store (the source of truth), never from the services' own word:
- submitted: POSTs the test made; accepted: those answered 202 (a 503 is not an acceptance:
  the client retries it, which is the contract);
- completed / unfinished: accepted runs in a terminal state / still not, after the wait;
- duplicates: agent messages beyond one per agent call (and beyond one orchestrator answer
  per run): a result applied twice;
- re-executed calls: calls started more than once (work lost with a killed worker is redone;
  that costs provider spend but never duplicates a result);
- time to recover: from the moment the fault was repaired (process restarted, server back)
  until every accepted run was terminal. Measured and reported, never asserted.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, text

from podium.client import PodiumClient
from podium.settings import Settings
from podium.store.provision import ensure_database
from tests.support.stack import Stack, base_env, free_port

# The worker pool runs 64 calls at once (PODIUM_WORKER_CONCURRENCY's default); 8 s each keeps
# them all in flight while the burst is still being submitted, and when the worker is killed.
IN_FLIGHT_RUNS = 64
SLOW_PROMPT = "[sim latency_ms=8000] crash test {i}: summarise the incident report"

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
PG_SERVER = os.environ.get("PODIUM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("PODIUM_TEST_REDIS", "redis://127.0.0.1:6379/0")
TERMINAL = ("completed", "failed", "cancelled")
# How long a test waits for every accepted run to end after the fault was repaired. Generous
# (a 2-core machine running the whole suite); recovery is measured, not asserted.
RECOVERY_WINDOW_S = 75.0
# The negative control waits this long for runs that will never end.
CONTROL_WINDOW_S = 30.0

# Reliability knobs shortened so a test sees recovery in seconds, not minutes: the lease of a
# running call, the reaper's pass and stall thresholds, the outbox sweep and the health probe.
FAST_RECOVERY = {
    "PODIUM_CALL_LEASE_S": "3",
    "PODIUM_REAPER_INTERVAL_S": "1",
    "PODIUM_REAPER_STALL_S": "5",
    "PODIUM_OUTBOX_SWEEP_S": "1",
    "PODIUM_HEALTH_PROBE_INTERVAL_S": "0.5",
    "PODIUM_CALL_TIMEOUT_S": "30",
}


def fault_env(database_url: str, redis_url: str, prefix: str, **overrides: str) -> dict[str, str]:
    env = base_env(
        PODIUM_DATABASE_URL=database_url,
        PODIUM_BROKER_URL=redis_url,
        PODIUM_REDIS_URL=redis_url,
        PODIUM_REDIS_KEY_PREFIX=prefix,
        PODIUM_ADMIN_KEY="fault-admin-" + secrets.token_hex(12),
        PODIUM_HTTP_PORT=str(free_port()),
        PODIUM_LLM_PROVIDER="simulated",
        PODIUM_SIMULATED_LATENCY_MS="30",
        PODIUM_SIMULATED_SCRIPT=str(FIXTURES / "sim_script.yaml"),
        PODIUM_LOG_LEVEL="INFO",
        PODIUM_REVIEW_ENABLED="false",
        PYTHONPATH=str(ROOT),
        **FAST_RECOVERY,
    )
    env.update(overrides)
    return env


def new_database_url(server: str = PG_SERVER) -> str:
    url = f"{server}/podium_fault_{uuid.uuid4().hex[:12]}"
    ensure_database(url)
    return url


def start_stack(workdir: Path, env: dict[str, str], *services: str) -> Stack:
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir, env)
    stack.podium("migrate")
    stack.start(*services)
    return stack


def clean_redis_prefix(url: str, prefix: str) -> None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
    except redis.RedisError:
        pass


# --- private servers ----------------------------------------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, up: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _listening(port) != up:
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} still {'closed' if up else 'open'} after {timeout}s")
        time.sleep(0.1)


class PrivateRedis:
    """A redis-server of our own on a free port (the machine's 6379 is shared with other
    test sessions and must never be restarted). Same flags as tests/support/services.py."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port, up=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        wait_port(self.port, up=False)

    def stop(self) -> None:
        self.kill()


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} was not found")
    return path


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb, trust auth) on a free port, so a test can stop
    and start it without touching the machine's server on 5432. As root, the cluster runs
    as the ``postgres`` OS user (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="podium-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def server_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        self._run(
            _pg_bin("initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "start",
        )
        wait_port(self.port, up=True)

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        wait_port(self.port, up=False)

    def destroy(self) -> None:
        try:
            if _listening(self.port):
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- load and counts ------------------------------------------------------------------------


@dataclass
class FaultReport:
    test: str
    submitted: int = 0
    accepted: int = 0
    rejected_503: int = 0
    completed: int = 0
    failed: int = 0
    unfinished: int = 0
    duplicates: int = 0
    reexecuted_calls: int = 0
    dead_letters: int = 0
    postmortems: int = 0
    recover_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"{k}={v}" for k, v in asdict(self).items() if k not in ("test", "notes")]
        parts += [f"{k}={v}" for k, v in self.notes.items()]
        return f"{self.test}: " + " ".join(parts)


RESULTS: list[FaultReport] = []


def record(report: FaultReport) -> None:
    RESULTS.append(report)
    print("\n[fault] " + report.line())
    target = os.environ.get("PODIUM_FAULT_RESULTS")
    if target:
        path = Path(target)
        existing = json.loads(path.read_text()) if path.exists() else []
        existing = [r for r in existing if r.get("test") != report.test]
        existing.append(asdict(report))
        path.write_text(json.dumps(existing, indent=2))


class Tenant:
    """A tenant on a stack, with a client that retries 503s (the contract) when asked to."""

    def __init__(self, stack: Stack, name: str = "fault") -> None:
        with PodiumClient(stack.url, stack.env["PODIUM_ADMIN_KEY"]) as admin:
            tenant = admin.create_tenant(f"{name}-{uuid.uuid4().hex[:6]}")
            self.key = admin.create_key(tenant["id"])["key"]
        self.id = tenant["id"]
        self.url = stack.url
        self.client = PodiumClient(stack.url, self.key, timeout=10)

    def close(self) -> None:
        self.client.close()


@dataclass
class Submission:
    prompt: str
    options: dict[str, Any]
    run_id: str | None = None
    rejections: int = 0


class Load:
    """Submits runs concurrently and reads their outcome from the store."""

    def __init__(self, tenant: Tenant, store_url: str) -> None:
        self.tenant = tenant
        self.store: Engine = create_engine(store_url, pool_pre_ping=True, pool_size=2)
        self.rejected = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.store.dispose()

    def _post(self, sub: Submission, retry_503: bool, deadline: float) -> None:
        """Create a thread, then the run; an answer 503 (or no answer) is retried until the
        deadline when ``retry_503``: that is the client's side of the contract."""
        headers = {"Authorization": f"Bearer {self.tenant.key}"}
        # One Idempotency-Key per submission: a retried POST whose first attempt was in fact
        # accepted returns the same run, never a second one.
        key = f"fault-{uuid.uuid4().hex}"
        thread: str | None = None
        with httpx.Client(base_url=self.tenant.url, headers=headers, timeout=10) as http:
            while True:
                try:
                    if thread is None:
                        r = http.post("/v1/threads", json={"title": "fault"})
                        if r.status_code == 201:
                            thread = r.json()["id"]
                            continue
                    else:
                        r = http.post(
                            f"/v1/threads/{thread}/runs",
                            json={"input": sub.prompt, **sub.options},
                            headers={"Idempotency-Key": key},
                        )
                        if r.status_code == 202:
                            sub.run_id = r.json()["id"]
                            return
                    if r.status_code != 503:
                        raise AssertionError(f"unexpected answer {r.status_code}: {r.text[:300]}")
                    assert r.headers.get("retry-after"), "a 503 must say Retry-After"
                except httpx.HTTPError:
                    pass  # no answer at all: the same as a refusal, retried
                sub.rejections += 1
                with self._lock:
                    self.rejected += 1
                if not retry_503 or time.monotonic() > deadline:
                    return
                time.sleep(0.5)

    def submit(
        self, prompts: list[tuple[str, dict[str, Any]]], *, retry_503: bool = True
    ) -> list[Submission]:
        subs = [Submission(p, o) for p, o in prompts]
        deadline = time.monotonic() + RECOVERY_WINDOW_S
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: self._post(s, retry_503, deadline), subs))
        return subs

    def _query(self, sql: str, **params: Any) -> list[Any]:
        with self.store.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def count_calls(self, run_ids: list[str], status: str) -> int:
        rows = self._query(
            "SELECT count(*) FROM agent_calls WHERE run_id = ANY(:ids) AND status = :s",
            ids=run_ids,
            s=status,
        )
        return int(rows[0][0])

    def wait_calls(self, run_ids: list[str], status: str, at_least: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            n = self.count_calls(run_ids, status)
            if n >= at_least or time.monotonic() > deadline:
                return n
            time.sleep(0.1)

    def thread_of(self, run_id: str) -> str:
        return str(self._query("SELECT thread_id FROM runs WHERE id = :i", i=run_id)[0][0])

    def statuses(self, run_ids: list[str]) -> dict[str, str]:
        rows = self._query("SELECT id, status FROM runs WHERE id = ANY(:ids)", ids=run_ids)
        return {r[0]: r[1] for r in rows}

    def wait_terminal(self, run_ids: list[str], timeout: float) -> tuple[dict[str, str], float]:
        """Poll the store until every run is terminal or ``timeout``; returns the statuses
        and when the wait ended (monotonic)."""
        deadline = time.monotonic() + timeout
        statuses: dict[str, str] = {}
        while True:
            try:
                statuses = self.statuses(run_ids)
            except Exception:  # the store may be down in the outage tests
                statuses = statuses or {}
            done = [r for r in run_ids if statuses.get(r) in TERMINAL]
            if len(done) == len(run_ids) or time.monotonic() > deadline:
                return statuses, time.monotonic()
            time.sleep(0.2)

    def duplicates(self, run_ids: list[str]) -> int:
        per_call = self._query(
            "SELECT call_id, count(*) FROM thread_events WHERE kind = 'agent_message' "
            "AND call_id IS NOT NULL AND run_id = ANY(:ids) GROUP BY call_id HAVING count(*) > 1",
            ids=run_ids,
        )
        # Answers a run writes itself (finish, merges): at most one per run.
        per_run = self._query(
            "SELECT run_id, count(*) FROM thread_events WHERE kind = 'agent_message' "
            "AND call_id IS NULL AND run_id = ANY(:ids) GROUP BY run_id HAVING count(*) > 1",
            ids=run_ids,
        )
        return sum(int(r[1]) - 1 for r in per_call) + sum(int(r[1]) - 1 for r in per_run)

    def answered_calls_without_message(self, run_ids: list[str]) -> int:
        """Succeeded calls with an answer but no message: a result lost between the two."""
        rows = self._query(
            "SELECT count(*) FROM agent_calls c WHERE c.run_id = ANY(:ids) "
            "AND c.status = 'succeeded' AND c.result IS NULL AND coalesce(c.output, '') <> '' "
            "AND NOT EXISTS (SELECT 1 FROM thread_events e WHERE e.call_id = c.id "
            "AND e.kind = 'agent_message')",
            ids=run_ids,
        )
        return int(rows[0][0])

    def reexecuted(self, run_ids: list[str]) -> int:
        rows = self._query(
            "SELECT count(*) FROM agent_calls WHERE run_id = ANY(:ids) AND attempts > 1",
            ids=run_ids,
        )
        return int(rows[0][0])

    def dead_letters(self) -> int:
        return int(self._query("SELECT count(*) FROM dead_letters")[0][0])

    def postmortems(self, run_ids: list[str], expect: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            n = int(
                self._query(
                    "SELECT count(*) FROM postmortems WHERE run_id = ANY(:ids)", ids=run_ids
                )[0][0]
            )
            if n >= expect or time.monotonic() > deadline:
                return n
            time.sleep(0.3)

    def report(
        self, test: str, subs: list[Submission], statuses: dict[str, str], **notes: Any
    ) -> FaultReport:
        ids = [s.run_id for s in subs if s.run_id]
        return FaultReport(
            test=test,
            submitted=len(subs),
            accepted=len(ids),
            rejected_503=sum(s.rejections for s in subs),
            completed=sum(1 for r in ids if statuses.get(r) == "completed"),
            failed=sum(1 for r in ids if statuses.get(r) in ("failed", "cancelled")),
            unfinished=sum(1 for r in ids if statuses.get(r) not in TERMINAL),
            duplicates=self.duplicates(ids),
            reexecuted_calls=self.reexecuted(ids),
            dead_letters=self.dead_letters(),
            notes=notes,
        )


def unacked_messages(stack: Stack) -> int:
    """Messages delivered but not acknowledged, kept by the Redis transport for redelivery."""
    client = redis.Redis.from_url(stack.env["PODIUM_BROKER_URL"], socket_connect_timeout=2)
    try:
        return int(client.hlen(stack.env["PODIUM_REDIS_KEY_PREFIX"] + "unacked"))
    finally:
        client.close()


def queued_ids(stack: Stack, queue: str) -> set[str]:
    """Ids of the task messages waiting in ``queue`` (a Redis list)."""
    client = redis.Redis.from_url(stack.env["PODIUM_BROKER_URL"], socket_connect_timeout=2)
    try:
        raw = client.lrange(stack.env["PODIUM_REDIS_KEY_PREFIX"] + queue, 0, -1)
    finally:
        client.close()
    ids = set()
    for item in raw:
        try:
            ids.add(str(json.loads(item)["headers"]["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def stack_settings(stack: Stack) -> Settings:
    """Settings pointing at the stack's store and broker (for injecting messages)."""
    env = stack.env
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=env["PODIUM_DATABASE_URL"],
        broker_url=env["PODIUM_BROKER_URL"],
        redis_url=env["PODIUM_REDIS_URL"],
        redis_key_prefix=env["PODIUM_REDIS_KEY_PREFIX"],
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def dead_services(stack: Stack) -> list[str]:
    """Services of the stack whose process has exited."""
    return [name for name, proc in stack.procs.items() if proc.poll() is not None]


def log_offset(stack: Stack, service: str = "orchestrator") -> int:
    """Where the service's log ends now (to read only what a test caused)."""
    path = stack.workdir / f"{service}.log"
    return path.stat().st_size if path.exists() else 0


def reaper_actions(stack: Stack, since: int = 0) -> dict[str, int]:
    """What the orchestrator's reaper reports having done (from byte ``since`` of its log)."""
    path = stack.workdir / "orchestrator.log"
    totals: dict[str, int] = {}
    if not path.exists():
        return totals
    with path.open("rb") as f:
        f.seek(since)
        text_ = f.read().decode(errors="replace")
    for line in text_.splitlines():
        if "reaper: " not in line or "=" not in line:
            continue
        for part in line.split("reaper: ", 1)[1].split(", "):
            name, _, value = part.partition("=")
            if value.strip().isdigit():
                totals[name.strip()] = totals.get(name.strip(), 0) + int(value)
    return totals


def timed_get(url: str, timeout: float = 10) -> tuple[int, float, dict[str, str], Any]:
    started = time.monotonic()
    r = httpx.get(url, timeout=timeout)
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return r.status_code, time.monotonic() - started, dict(r.headers), body


def timed_post(
    url: str, key: str, path: str, body: dict[str, Any], timeout: float = 10
) -> tuple[int, float, dict[str, str], Any]:
    started = time.monotonic()
    r = httpx.post(
        url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
    )
    try:
        payload = r.json()
    except ValueError:
        payload = r.text
    return r.status_code, time.monotonic() - started, dict(r.headers), payload


def iter_prompts(n: int, template: str, **options: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(n):
        yield template.format(i=i), dict(options)


def kill_agent_worker_mid_flight(
    stack: Stack, tenant: Tenant, test: str, window_s: float = RECOVERY_WINDOW_S
) -> FaultReport:
    """The harness of (a), also the negative control's (h): submit 64 slow runs, SIGKILL the
    agent-worker once >= 50 of their calls are running, restart it, wait up to ``window_s``
    for every run to end, and count."""
    load = Load(tenant, stack.env["PODIUM_DATABASE_URL"])
    since = log_offset(stack)
    try:
        subs = load.submit(list(iter_prompts(IN_FLIGHT_RUNS, SLOW_PROMPT, pattern="direct")))
        ids = [s.run_id for s in subs if s.run_id]
        assert len(ids) == IN_FLIGHT_RUNS, "every run must be accepted before the fault"
        in_flight = load.wait_calls(ids, "running", at_least=50, timeout=30)
        assert in_flight >= 50, f"only {in_flight} calls in flight"
        stack.stop("agent-worker", sig=signal.SIGKILL)
        # What the broker still holds for redelivery (acks_late) once the worker is gone.
        unacked = unacked_messages(stack)
        stack.start("agent-worker")
        restarted = time.monotonic()
        statuses, ended = load.wait_terminal(ids, timeout=window_s)
        report = load.report(
            test,
            subs,
            statuses,
            calls_in_flight_at_kill=in_flight,
            unacked_in_broker_after_kill=unacked,
            reaper=reaper_actions(stack, since),
        )
        report.recover_s = round(ended - restarted, 1) if report.unfinished == 0 else None
        report.notes["answers_lost"] = load.answered_calls_without_message(ids)
        finished = [r for r in ids if statuses.get(r) in TERMINAL]
        report.postmortems = load.postmortems(finished, expect=len(finished), timeout=30)
        report.notes["dead_services"] = dead_services(stack)
        return report
    finally:
        load.close()


def verdict(report: FaultReport) -> list[str]:
    """What the harness holds against a run of the load: empty when nothing was lost or
    applied twice. (a) to (d) require it empty; the negative control (h) requires it not."""
    problems = []
    if report.accepted < report.submitted:
        problems.append(f"{report.submitted - report.accepted} submissions never accepted")
    if report.unfinished:
        problems.append(f"{report.unfinished} accepted runs never finished (lost)")
    if report.completed != report.accepted:
        problems.append(f"{report.accepted - report.completed} runs did not complete")
    if report.duplicates:
        problems.append(f"{report.duplicates} duplicate agent messages")
    if report.notes.get("answers_lost"):
        problems.append(f"{report.notes['answers_lost']} answers without their message")
    if report.postmortems != report.completed + report.failed:
        problems.append("a run.completed notification was lost")
    if report.notes.get("dead_services"):
        problems.append(f"services died: {report.notes['dead_services']}")
    return problems
