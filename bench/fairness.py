"""Fair scheduling benchmark: a noisy tenant at 20x the load of 4 quiet tenants.

Runs the real stack (gateway, orchestrator, agent-worker, learner) as subprocesses against a
throwaway PostgreSQL database and a unique Redis key prefix, then drives an open-loop load of
``direct`` runs (one agent call each, simulated LLM latency set per prompt):

- warm-up: the quiet tenants alone, not measured;
- phase A "no noise": 4 quiet tenants at ``q`` runs/s each for ``D`` seconds;
- phase C (only with ``--cpu-control CORES``): the quiet schedule plus busy loops on CORES
  CPUs, a control that separates CPU contention from scheduling;
- phase D (only with ``--separate-noise-control``): the quiet schedule on this stack while
  B's noisy load goes to a second, independent stack on the same machine, a control where
  only the host (CPU, PostgreSQL and Redis servers) is shared, not Podium's dispatcher;
- phase B "noise": the same quiet schedule plus one noisy tenant at ``20 q`` runs/s.

Queue wait of a call = ``agent_calls.started_at - agent_calls.created_at`` (read from the
database). Targets: quiet p95 wait in B <= 1.5x the one in A; Jain's fairness index over the
achieved / max-min-fair throughput in B >= 0.9.

    uv run python -m bench.fairness [--quick]

Writes ``bench/results/fairness.json``. Exits 0 even when a target fails (a benchmark), 1 only
if the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, text

from bench.harness import free_port, percentile
from podium.client import PodiumClient
from podium.store.provision import drop_database, ensure_database

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fairness.json"
PG_SERVER = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
SERVICES = {
    "gateway": "podium_gateway",
    "orchestrator": "podium_orchestrator",
    "agent-worker": "podium_agent_worker",
    "learner": "podium_learner",
}
POOL = "default"
TERMINAL_RUN = ("completed", "failed", "cancelled")
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[fairness {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- statistics ------------------------------------------------------------------------------


def dist_ms(values_s: Sequence[float]) -> dict[str, Any]:
    ms = [v * 1000.0 for v in values_s]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "mean_ms": round(sum(ms) / len(ms), 1),
        "max_ms": round(max(ms), 1),
    }


def jain(xs: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 = perfectly even, 1/n = one takes all."""
    square_sum = sum(x * x for x in xs)
    return (sum(xs) ** 2) / (len(xs) * square_sum) if xs and square_sum > 0 else math.nan


def max_min_fair(demands: dict[str, float], caps: dict[str, float], capacity: float) -> dict:
    """Water-filling: each tenant gets min(demand, cap, equal share of what is left)."""
    want = {t: min(demands[t], caps.get(t, math.inf)) for t in demands}
    share: dict[str, float] = {}
    left, active = capacity, set(want)
    while active:
        level = left / len(active)
        done = {t for t in active if want[t] <= level}
        if not done:
            for t in active:
                share[t] = level
            break
        for t in done:
            share[t] = want[t]
            left -= want[t]
        active -= done
    return share


def peak_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """Most intervals open at once (an end at the same instant as a start closes first)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    return peak


# --- the machine: CPU accounting from /proc --------------------------------------------------

_CLK = os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def _proc_table() -> dict[int, tuple[str, int, float]]:
    """pid -> (comm, pgid, cpu seconds) for every live process."""
    table: dict[int, tuple[str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        rest = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = (comm, int(rest[2]), (int(rest[11]) + int(rest[12])) / _CLK)
    return table


class CpuMeter:
    """CPU used between ``start()`` and ``stop()``: the machine's busy fraction and the cores
    taken by each service, PostgreSQL, Redis and this benchmark process."""

    def __init__(self, groups: dict[str, int], database: str) -> None:
        self.groups = groups  # name -> process group id
        self.databases = {database: "postgresql"}  # database name -> owner

    def track(self, label: str, stack: Stack, database: str) -> None:
        """Count another stack's processes and database backends as ``label``, not as
        foreign load."""
        # "label#service" counts as label, like "orchestrator#2" as the orchestrator.
        self.groups.update({f"{label}#{n}": p.pid for n, p in stack.procs.items()})
        self.databases[database] = f"{label} postgresql"

    def untrack(self, label: str) -> None:
        """Forget a stopped stack (its process group ids may be reused)."""
        for name in [n for n in self.groups if n.partition("#")[0] == label]:
            del self.groups[name]

    def _by_owner(self) -> dict[int, tuple[str, float]]:
        # "orchestrator#2" counts as the orchestrator.
        owner_of = {pgid: name.partition("#")[0] for name, pgid in self.groups.items()}
        out: dict[int, tuple[str, float]] = {}
        me = os.getpid()
        for pid, (comm, pgid, cpu) in _proc_table().items():
            if pgid in owner_of:
                name = owner_of[pgid]
            elif pid == me:
                name = "bench (this process)"
            elif pid in BURNER_PIDS:
                name = "cpu burners (control)"
            elif comm.startswith("postgres"):
                name = self._postgres_owner(pid)
            elif comm.startswith("redis"):
                name = "redis"
            else:
                name = "other"
            out[pid] = (name, cpu)
        return out

    def _postgres_owner(self, pid: int) -> str:
        """Backends of our database are ours; of other databases, someone else's load."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return "postgresql (server)"
        for database, owner in self.databases.items():
            if database in cmdline:
                return owner
        if cmdline.startswith("postgres: ") and cmdline.count(" ") >= 4:
            return "other"  # "postgres: 15/main: user database host(port) state"
        return "postgresql (server)"

    def start(self) -> None:
        self._t = time.monotonic()
        self._machine = _machine_jiffies()
        self._procs = self._by_owner()

    def stop(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self._t, 1e-6)
        busy0, total0 = self._machine
        busy1, total1 = _machine_jiffies()
        cores: dict[str, float] = {}
        for pid, (name, cpu) in self._by_owner().items():
            before = self._procs.get(pid, (name, 0.0))[1]
            cores[name] = cores.get(name, 0.0) + max(cpu - before, 0.0) / elapsed
        busy = (busy1 - busy0) / max(total1 - total0, 1)
        ours = sum(v for k, v in cores.items() if k != "other")
        return {
            "machine_busy_pct": round(100 * busy, 1),
            # Work that is not this benchmark's (another benchmark, a test run...): the
            # machine's busy time less ours, which also counts processes that came and went.
            "foreign_cores": round(max(busy * (os.cpu_count() or 1) - ours, 0.0), 2),
            "cores": {k: round(v, 2) for k, v in sorted(cores.items(), key=lambda kv: -kv[1])},
        }


def wait_for_idle(max_wait_s: float, busy_pct: float = 25.0, window_s: float = 3.0) -> dict:
    """Wait (up to ``max_wait_s``) until the machine is mostly idle before starting, so other
    load does not pollute the figures; returns what was seen."""
    deadline = time.monotonic() + max_wait_s
    waited_from = time.monotonic()
    quiet_windows = 0
    while True:
        b0, t0 = _machine_jiffies()
        time.sleep(window_s)
        b1, t1 = _machine_jiffies()
        busy = 100.0 * (b1 - b0) / max(t1 - t0, 1)
        quiet_windows = quiet_windows + 1 if busy <= busy_pct else 0
        idle = quiet_windows >= 3  # idle for three windows in a row
        if idle or time.monotonic() >= deadline:
            return {
                "busy_pct_before_start": round(busy, 1),
                "idle_at_start": idle,
                "waited_s": round(time.monotonic() - waited_from, 1),
            }
        if not quiet_windows:
            log(f"machine {busy:.0f}% busy (other load); waiting for it to settle")


BURNER_PIDS: set[int] = set()
_BURNER = """
import sys, time
duty = float(sys.argv[1])
while True:
    t = time.monotonic()
    while time.monotonic() - t < 0.01 * duty:
        pass
    time.sleep(0.01 * (1 - duty))
"""


@contextlib.contextmanager
def cpu_burners(cores: float) -> Iterator[None]:
    """Busy-loop processes using about ``cores`` CPUs (a control: CPU load without a noisy
    tenant)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        left = cores
        while left > 1e-6:
            duty = min(left, 1.0)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BURNER, str(duty)],
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            BURNER_PIDS.add(procs[-1].pid)
            left -= duty
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# --- the stack -------------------------------------------------------------------------------
SLOT_SETTINGS = {
    "agent-worker": ("PODIUM_WORKER_CONCURRENCY", 64),
    "orchestrator": ("PODIUM_ORCHESTRATOR_CONCURRENCY", 8),
}


def _split_slots(env: dict[str, str], service: str, count: int) -> dict[str, str]:
    """The per-process concurrency when ``count`` processes share a service's slots."""
    if service not in SLOT_SETTINGS or count == 1:
        return {}
    key, default = SLOT_SETTINGS[service]
    total = int(env.get(key, default))
    if total % count:
        raise ValueError(f"{total} {service} slots do not split evenly over {count} processes")
    return {key: str(total // count)}


def parse_processes(spec: str) -> dict[str, int]:
    """``orchestrator=2,agent-worker=2`` -> {"orchestrator": 2, "agent-worker": 2}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        service, _, count = part.partition("=")
        if service not in SERVICES or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(
                f"bad --processes entry {part!r}: want SERVICE=N with SERVICE one of "
                f"{', '.join(SERVICES)} and N >= 1"
            )
        out[service] = int(count)
    return out


@dataclass
class Stack:
    """The four services as subprocesses (own process groups), a database and a prefix."""

    workdir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PODIUM_HTTP_PORT']}"

    def migrate(self) -> None:
        cli = [sys.executable, "-c", "from podium.cli.main import cli; cli()", "migrate"]
        out = subprocess.run(
            cli, check=False, env=self.env, capture_output=True, text=True, timeout=180
        )
        if out.returncode != 0:
            raise RuntimeError(f"podium migrate failed:\n{out.stdout}\n{out.stderr}")

    def start(self, processes: dict[str, int] | None = None) -> None:
        """Start every service; ``processes`` runs more than one process of a service (the
        extra ones are named ``service#2``...), sharing its slots between them."""
        for service, module in SERVICES.items():
            count = (processes or {}).get(service, 1)
            for index in range(count):
                name = service if index == 0 else f"{service}#{index + 1}"
                env = dict(self.env, **_split_slots(self.env, service, count))
                if service != "gateway":
                    self.metrics_ports[name] = free_port()
                    env["PODIUM_METRICS_PORT"] = str(self.metrics_ports[name])
                elif index:
                    raise ValueError("one gateway process only (it owns the HTTP port)")
                with (self.workdir / f"{name}.log").open("ab") as out:
                    self.procs[name] = subprocess.Popen(
                        [sys.executable, "-m", module],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
        for name in self.procs:
            self._wait_ready(name)

    def _wait_ready(self, name: str, timeout: float = 90) -> None:
        url = (
            f"{self.url}/readyz"
            if name == "gateway"
            else f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
        )
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout}s:\n{self.log(name)}")
            time.sleep(0.2)

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def log(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Children that outlived their parent.
        for pid, (_, pgid, _) in _proc_table().items():
            if any(pgid == p.pid for p in self.procs.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def podium_stack(
    workers: int, tenant_calls: int, processes: dict[str, int] | None = None
) -> Iterator[tuple[Stack, str]]:
    """A started stack and its database URL; everything is removed on exit."""
    tag = secrets.token_hex(6)
    pg_url = f"{PG_SERVER}/podium_test_{tag}"
    prefix = f"podium-bench-fair-{tag}:"
    workdir = Path(tempfile.mkdtemp(prefix=f"podium-fairness-{tag}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env.pop("PYTHONPATH", None)
    env.update(
        PODIUM_DATABASE_URL=pg_url,
        PODIUM_BROKER_URL=REDIS_URL,
        PODIUM_REDIS_URL=REDIS_URL,
        PODIUM_REDIS_KEY_PREFIX=prefix,
        PODIUM_ADMIN_KEY="bench-admin-" + secrets.token_hex(12),
        PODIUM_HTTP_PORT=str(free_port()),
        PODIUM_LLM_PROVIDER="simulated",
        PODIUM_SIMULATED_LATENCY_MS="30",
        PODIUM_LOG_LEVEL="WARNING",
        PODIUM_OUTBOX_SWEEP_S="1",
        PODIUM_WORKER_CONCURRENCY=str(workers),
        PODIUM_TENANT_CONCURRENT_CALLS=str(tenant_calls),
        PODIUM_TENANT_CONCURRENT_RUNS="0",
        PODIUM_TENANT_REQUESTS_PER_MINUTE="0",
        PYTHONUNBUFFERED="1",
    )
    stack = Stack(workdir, env)
    ok = False
    try:
        ensure_database(pg_url)
        log(f"database {pg_url.rsplit('/', 1)[1]}, redis prefix {prefix}, logs in {workdir}")
        stack.migrate()
        stack.start(processes)
        yield stack, pg_url
        ok = True
    finally:
        if not ok:
            for name in stack.procs:
                tail = stack.log(name, 1500).strip()
                if tail:
                    log(f"--- {name} log tail ---\n{tail}")
        stack.stop()
        with contextlib.suppress(Exception):
            drop_database(pg_url)
        with contextlib.suppress(Exception):
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
            client.close()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        log("stack stopped, database dropped, redis keys removed")


# --- load ------------------------------------------------------------------------------------


@dataclass
class Tenant:
    name: str
    id: str
    key: str
    quiet: bool
    cap: int = 0


@dataclass
class Arrival:
    tenant: Tenant
    offset: float  # seconds after the phase start
    thread_id: str = ""
    sent_mono: float = 0.0
    status: int = 0
    run_id: str = ""
    post_s: float = 0.0
    error: str = ""


def schedule(rate: float, duration: float, rng: random.Random, poisson: bool) -> list[float]:
    """Arrival offsets in [0, duration): exponential gaps, or a fixed interval with a random
    phase."""
    out: list[float] = []
    if rate <= 0:
        return out
    t = rng.expovariate(rate) if poisson else rng.uniform(0, 1 / rate)
    while t < duration:
        out.append(t)
        t += rng.expovariate(rate) if poisson else 1 / rate
    return out


def create_tenants(
    stack: Stack, names: Sequence[tuple[str, bool]], caps: dict[str, int] | None = None
) -> list[Tenant]:
    """Tenants (name, quiet) with an API key each, ``caps`` overriding the deployment's
    concurrent_calls for some (an admin PATCH, as an operator would); the cap is read back
    from the stack."""
    tenants: list[Tenant] = []
    with PodiumClient(stack.url, stack.env["PODIUM_ADMIN_KEY"]) as admin:
        for name, quiet in names:
            created = admin.create_tenant(f"fair-{name}-{secrets.token_hex(3)}")
            if caps and name in caps:
                admin.set_limits(created["id"], concurrent_calls=caps[name])
            key = admin.create_key(created["id"])["key"]
            with PodiumClient(stack.url, key) as client:
                cap = int(client.usage()["concurrent_calls"]["limit"])
            tenants.append(Tenant(name, created["id"], key, quiet, cap))
    return tenants


async def create_threads(url: str, arrivals: list[Arrival]) -> None:
    """One new thread per run, created ahead of the timed phases."""
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(a: Arrival) -> None:
            async with sem:
                r = await client.post(
                    "/v1/threads",
                    json={"title": f"fair {a.tenant.name}"},
                    headers={"Authorization": f"Bearer {a.tenant.key}"},
                )
                r.raise_for_status()
                a.thread_id = r.json()["id"]

        await asyncio.gather(*(one(a) for a in arrivals))


async def drive(url: str, arrivals: list[Arrival], prompt: str) -> dict[str, Any]:
    """Open loop: each POST is sent at its scheduled time in its own task, never waiting for
    earlier responses. Returns when every response is in."""
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def post(a: Arrival) -> None:
            try:
                r = await client.post(
                    f"/v1/threads/{a.thread_id}/runs",
                    json={"input": prompt, "pattern": "direct"},
                    headers={"Authorization": f"Bearer {a.tenant.key}"},
                )
                a.status = r.status_code
                if r.status_code == 202:
                    a.run_id = r.json()["id"]
                else:
                    a.error = r.text[:200]
            except httpx.HTTPError as exc:
                a.error = repr(exc)
            a.post_s = time.monotonic() - a.sent_mono

        ordered = sorted(arrivals, key=lambda a: a.offset)
        tasks = []
        t0_mono, t0_wall = time.monotonic(), time.time()
        for a in ordered:
            delay = t0_mono + a.offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            a.sent_mono = time.monotonic()
            tasks.append(asyncio.create_task(post(a)))
        t1_wall = time.time()
        await asyncio.gather(*tasks)
    lateness = [a.sent_mono - (t0_mono + a.offset) for a in ordered]
    return {"t0": t0_wall, "t_last_send": t1_wall, "lateness": lateness}


async def drive_pair(
    url: str, arrivals: list[Arrival], side_url: str, side_arrivals: list[Arrival], prompt: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two open-loop schedules, to two stacks, started together."""
    main, side = await asyncio.gather(
        drive(url, arrivals, prompt), drive(side_url, side_arrivals, prompt)
    )
    return main, side


class DispatcherProbe:
    """Samples the fair dispatcher's Redis state every ``interval`` seconds, read-only:
    queued and in flight per tenant, and the in-flight items with the time each was picked
    (released to the workers), which splits a call's queue wait into the part before the
    pick and the hop to the worker after it."""

    def __init__(self, prefix: str, tenants: list[Tenant], interval: float = 0.05) -> None:
        self.base = f"{prefix}podium:fair:{POOL}:"
        self.tenants = tenants
        self.interval = interval
        self.samples: list[tuple[float, dict[str, tuple[int, int]], int]] = []
        self.picked: dict[str, float] = {}  # item -> picked at (Redis server clock)
        self.last_seen: dict[str, float] = {}  # item -> last sample it was in flight
        self._stop = threading.Event()
        self._r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(redis.RedisError):
                pipe = self._r.pipeline(transaction=True)
                for t in self.tenants:
                    pipe.llen(f"{self.base}q:{t.id}")
                    pipe.hget(f"{self.base}tin", t.id)
                pipe.hgetall(f"{self.base}inflight")
                values = pipe.execute()
                now = time.time()
                state = {
                    t.id: (int(values[2 * i]), int(values[2 * i + 1] or 0))
                    for i, t in enumerate(self.tenants)
                }
                inflight: dict[str, str] = values[-1]
                for item, value in inflight.items():
                    if item not in self.picked:
                        self.picked[item] = float(value.rpartition("|")[2])
                    self.last_seen[item] = now
                self.samples.append((now, state, len(inflight)))
            self._stop.wait(self.interval)

    def summary(self, t0: float, t1: float) -> dict[str, Any]:
        window = [s for s in self.samples if t0 <= s[0] <= t1]
        out: dict[str, Any] = {"samples": len(window)}
        for t in self.tenants:
            queued = [s[1][t.id][0] for s in window]
            inflight = [s[1][t.id][1] for s in window]
            out[t.name] = {
                "queued_max": max(queued, default=0),
                "queued_mean": round(sum(queued) / len(queued), 2) if queued else 0,
                "inflight_max": max(inflight, default=0),
                "inflight_mean": round(sum(inflight) / len(inflight), 2) if inflight else 0,
            }
        out["pool_inflight_max"] = max((s[2] for s in window), default=0)
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._r.close()


def wait_runs_done(engine: Any, run_ids: list[str], timeout: float) -> int:
    """Wait until every run is terminal; returns how many are not."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            pending = conn.execute(
                text("SELECT count(*) FROM runs WHERE id = ANY(:ids) AND status <> ALL(:done)"),
                {"ids": run_ids, "done": list(TERMINAL_RUN)},
            ).scalar_one()
        if pending == 0 or time.monotonic() > deadline:
            return int(pending)
        time.sleep(0.25)


def fetch_calls(engine: Any, run_ids: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.id, c.tenant_id, c.run_id, c.status, c.created_at, c.started_at, "
                "c.finished_at, r.created_at AS run_created_at "
                "FROM agent_calls c JOIN runs r ON r.id = c.run_id WHERE c.run_id = ANY(:ids)"
            ),
            {"ids": run_ids},
        ).mappings()

        def ts(v: dt.datetime | None) -> float | None:
            if v is None:
                return None
            return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).timestamp()

        return [
            {
                "item": f"{r['id']}:{r['run_id']}",
                "tenant_id": r["tenant_id"],
                "run_id": r["run_id"],
                "status": r["status"],
                "created": ts(r["created_at"]),
                "started": ts(r["started_at"]),
                "finished": ts(r["finished_at"]),
                "run_created": ts(r["run_created_at"]),
            }
            for r in rows
        ]


# --- the benchmark ---------------------------------------------------------------------------


def submission_stats(arrivals: list[Arrival], duration: float, lateness: list[float]) -> dict:
    sent = [a for a in arrivals if a.sent_mono]
    statuses: dict[str, int] = {}
    for a in sent:
        key = str(a.status) if a.status else "error"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "sent": len(sent),
        "rate_per_s": round(len(sent) / duration, 3),
        "statuses": statuses,
        "post_latency": dist_ms([a.post_s for a in sent]),
        "send_lateness": dist_ms(lateness),
    }


def analyse_phase(
    name: str,
    tenants: list[Tenant],
    arrivals: list[Arrival],
    calls: list[dict[str, Any]],
    t0: float,
    duration: float,
    now: float,
    workers: int,
    latency_s: float,
) -> dict[str, Any]:
    runs = {a.run_id for a in arrivals if a.run_id}
    mine = [c for c in calls if c["run_id"] in runs]
    by_tenant = {t.id: [c for c in mine if c["tenant_id"] == t.id] for t in tenants}
    quiet_ids = {t.id for t in tenants if t.quiet}
    quiet = [c for c in mine if c["tenant_id"] in quiet_ids and c["started"] is not None]

    def waits(cs: list[dict[str, Any]]) -> list[float]:
        return [c["started"] - c["created"] for c in cs if c["started"] is not None]

    out: dict[str, Any] = {
        "phase": name,
        "duration_s": duration,
        "quiet_wait": dist_ms(waits(quiet)),
        # The queue wait split at the dispatcher's pick (from the Redis probe): created ->
        # picked is the orchestrator's commit and submit plus any wait for the tenant's turn;
        # picked -> started is the broker hop and the worker's claim transaction.
        "quiet_created_to_picked": dist_ms(
            [c["picked"] - c["created"] for c in quiet if c["picked"] is not None]
        ),
        "quiet_picked_to_started": dist_ms(
            [c["started"] - c["picked"] for c in quiet if c["picked"] is not None]
        ),
        # Before the call exists: gateway commit -> orchestrator -> call row (not fair-queued).
        "quiet_run_to_call": dist_ms([c["created"] - c["run_created"] for c in quiet]),
        "quiet_call_duration": dist_ms(
            [c["finished"] - c["started"] for c in quiet if c["finished"]]
        ),
        "quiet_end_to_end": dist_ms(
            [c["finished"] - c["run_created"] for c in quiet if c["finished"]]
        ),
        # The tail, with when it happened: clustered offsets point at a periodic stall.
        "quiet_slowest": [
            {
                "at_s": round(c["created"] - t0, 2),
                "wait_ms": round((c["started"] - c["created"]) * 1000, 1),
                "created_to_picked_ms": (
                    round((c["picked"] - c["created"]) * 1000, 1) if c["picked"] else None
                ),
            }
            for c in sorted(quiet, key=lambda c: c["created"] - c["started"])[:6]
        ],
        "tenants": {},
    }
    demand: dict[str, float] = {}
    achieved: dict[str, float] = {}
    caps: dict[str, float] = {}
    for t in tenants:
        submitted = [a for a in arrivals if a.tenant is t and a.sent_mono]
        if not submitted:
            continue
        cs = by_tenant[t.id]
        started_in = [
            c for c in cs if c["started"] is not None and t0 <= c["started"] < t0 + duration
        ]
        intervals = [(c["started"], c["finished"] or now) for c in cs if c["started"] is not None]
        demand[t.id] = len(submitted) / duration
        achieved[t.id] = len(started_in) / duration
        caps[t.id] = (t.cap or workers) / latency_s
        out["tenants"][t.name] = {
            "quiet": t.quiet,
            "cap_concurrent_calls": t.cap,
            "submitted": len(submitted),
            "calls": len(cs),
            "started_in_phase": len(started_in),
            "not_started_at_analysis": sum(1 for c in cs if c["started"] is None),
            "demand_per_s": round(demand[t.id], 3),
            "achieved_per_s": round(achieved[t.id], 3),
            "wait": dist_ms(waits(cs)),
            "max_in_flight": peak_overlap(intervals),
            # How long a call holds its tenant's dispatcher slot (pick -> slot freed, to the
            # probe's 50 ms resolution): with a cap of k, throughput is at most k / hold.
            "slot_hold": dist_ms(
                [
                    c["released"] - c["picked"]
                    for c in cs
                    if c["picked"] is not None and c["finished"] is not None
                ]
            ),
        }
    capacity = workers / latency_s
    fair = max_min_fair(demand, caps, capacity)
    for t in tenants:
        if t.id in fair:
            row = out["tenants"][t.name]
            row["fair_share_per_s"] = round(fair[t.id], 3)
            row["achieved_over_fair"] = round(achieved[t.id] / fair[t.id], 3)
            row["achieved_over_demand"] = round(achieved[t.id] / demand[t.id], 3)
    out["capacity_per_s"] = capacity
    out["jain_vs_fair_share"] = round(jain([achieved[t] / fair[t] for t in fair]), 4)
    out["jain_vs_demand"] = round(jain([achieved[t] / demand[t] for t in demand]), 4)
    out["jain_raw_throughput"] = round(jain(list(achieved.values())), 4)
    return out


def run_phase(
    stack: Stack,
    label: str,
    arrivals: list[Arrival],
    prompt: str,
    duration: float,
    cpu: CpuMeter,
    side: SideNoise | None = None,
) -> dict[str, Any]:
    """Drive one phase; with ``side``, its noisy schedule goes to the second stack at the
    same time (its send results are in ``result["side"]``)."""
    extra = f" (+ {len(side.arrivals)} on the noise stack)" if side else ""
    log(f"phase {label}: {len(arrivals)} runs{extra} over {duration:g}s")
    cpu.start()
    if side is None:
        result = asyncio.run(drive(stack.url, arrivals, prompt))
    else:
        result, result["side"] = asyncio.run(
            drive_pair(stack.url, arrivals, side.stack.url, side.arrivals, prompt)
        )
    result["cpu"] = cpu.stop()
    result["duration"] = duration
    late = result["lateness"]
    log(
        f"phase {label}: sent {len(arrivals)}, send lateness p99 "
        f"{percentile(late, 99) * 1000:.1f} ms, max {max(late, default=0) * 1000:.1f} ms, "
        f"machine busy {result['cpu']['machine_busy_pct']}%"
    )
    stacks = [("", stack)] + ([("noise stack ", side.stack)] if side else [])
    if dead := [f"{tag}{n}" for tag, s in stacks for n in s.procs if n not in s.alive()]:
        raise RuntimeError(f"services died during phase {label}: {dead}")
    return result


@dataclass
class SideNoise:
    """Control D's noisy load on a second, independent stack: its own database, Redis
    prefix, ports and processes; only the machine is shared with the main stack."""

    stack: Stack
    engine: Any
    tenant: Tenant
    arrivals: list[Arrival]

    def report(
        self, sent: dict[str, Any], duration: float, workers: int, latency_s: float
    ) -> dict[str, Any]:
        """The noisy tenant's submission and throughput on the second stack (read before
        it is stopped), to show the noise really loaded it."""
        ids = [a.run_id for a in self.arrivals if a.run_id]
        calls = fetch_calls(self.engine, ids)
        for c in calls:
            c["picked"] = c["released"] = None  # no dispatcher probe on this stack
        phase = analyse_phase(
            "D (noise stack)",
            [self.tenant],
            self.arrivals,
            calls,
            sent["t0"],
            duration,
            time.time(),
            workers,
            latency_s,
        )
        row = phase["tenants"][self.tenant.name]
        row.pop("slot_hold")  # needs the probe
        return {
            "submission": submission_stats(self.arrivals, duration, sent["lateness"]),
            "noisy": row,
        }


@contextlib.contextmanager
def separate_noise_stack(
    workers: int,
    tenant_calls: int,
    processes: dict[str, int],
    offsets: list[float],
    warm_offsets: list[float],
    warmup: float,
    prompt: str,
    cpu: CpuMeter,
    cap: int,
) -> Iterator[SideNoise]:
    """A second stack with the noisy tenant (same cap), warmed up and counted by ``cpu``;
    removed on exit like the main one."""
    log("control D: starting the separate noise stack")
    with podium_stack(workers, tenant_calls, processes) as (side, pg_url):
        engine = create_engine(pg_url, pool_size=2)
        try:
            (noisy,) = create_tenants(side, [("noisy", False)], {"noisy": cap})
            if noisy.cap != cap:
                raise RuntimeError(f"noise stack cap {noisy.cap} != main stack cap {cap}")
            warm = [Arrival(noisy, off) for off in warm_offsets]
            arrivals = [Arrival(noisy, off) for off in offsets]
            asyncio.run(create_threads(side.url, warm + arrivals))
            cpu.track("noise stack", side, pg_url.rsplit("/", 1)[1])
            try:
                # Cold code paths (first runs, pools) would otherwise cost CPU inside D.
                run_phase(side, "D warm-up (noise stack)", warm, prompt, warmup, cpu)
                wait_runs_done(engine, [a.run_id for a in warm if a.run_id], 60)
                yield SideNoise(side, engine, noisy, arrivals)
            finally:
                cpu.untrack("noise stack")
        finally:
            engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s phases instead of 30 s")
    parser.add_argument("--duration", type=float, help="seconds per phase")
    parser.add_argument("--quiet-rate", type=float, default=0.5, help="runs/s per quiet tenant")
    parser.add_argument("--noise-factor", type=float, default=20.0)
    parser.add_argument("--quiet-tenants", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--workers", type=int, default=8, help="agent-worker slots (W)")
    parser.add_argument("--tenant-calls", type=int, help="per-tenant cap (default W/2)")
    parser.add_argument(
        "--noisy-calls",
        type=int,
        help="the noisy tenant's own cap (PATCH /v1/tenants), e.g. to keep slots in reserve",
    )
    parser.add_argument(
        "--processes",
        type=parse_processes,
        default={},
        metavar="SERVICE=N,...",
        help="run N processes of a service, sharing its slots (e.g. orchestrator=2)",
    )
    parser.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--cpu-control",
        type=float,
        default=0.0,
        metavar="CORES",
        help="add a control phase C: the quiet load alone plus busy loops on CORES CPUs",
    )
    parser.add_argument(
        "--separate-noise-control",
        action="store_true",
        help="add a control phase D: the quiet load here while B's noisy load goes to a "
        "second, independent stack on the same machine",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=300.0,
        help="wait up to this many seconds for other load on the machine to go away",
    )
    args = parser.parse_args()

    duration = args.duration or (15.0 if args.quick else 30.0)
    warmup = 5.0 if args.quick else 8.0
    tenant_calls = args.tenant_calls or max(args.workers // 2, 1)
    latency_s = args.latency_ms / 1000.0
    noisy_rate = args.quiet_rate * args.noise_factor
    prompt = f"[sim latency_ms={args.latency_ms:g}] Say something short."
    poisson = args.arrivals == "poisson"
    params = {
        "mode": "quick" if args.quick else "full",
        "phase_duration_s": duration,
        "warmup_s": warmup,
        "quiet_tenants": args.quiet_tenants,
        "quiet_rate_per_s": args.quiet_rate,
        "noisy_rate_per_s": noisy_rate,
        "noise_factor": args.noise_factor,
        "latency_ms": args.latency_ms,
        "workers": args.workers,
        "tenant_concurrent_calls": tenant_calls,
        "noisy_concurrent_calls": args.noisy_calls,
        "capacity_calls_per_s": args.workers / latency_s,
        "arrivals": args.arrivals,
        "seed": args.seed,
        "pattern": "direct",
        "cpu_control_cores": args.cpu_control,
        "separate_noise_control": args.separate_noise_control,
        "processes": {name: args.processes.get(name, 1) for name in SERVICES},
    }
    log(f"parameters: {json.dumps(params)}")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        load = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else {}
        report = bench(
            args, params, duration, warmup, tenant_calls, latency_s, noisy_rate, prompt, poisson
        )
        foreign = max(ph["cpu"]["foreign_cores"] for ph in report["phases"].values())
        load["foreign_cores_max_during_phases"] = foreign
        # More than a tenth of the machine in someone else's work: the figures are not clean.
        load["contaminated"] = foreign > 0.2
        report["machine"]["other_load"] = load
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as exc:
        log(f"benchmark failed: {exc!r}")
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    print(f"\nwrote {args.output}")
    return 0


def bench(
    args: argparse.Namespace,
    params: dict[str, Any],
    duration: float,
    warmup: float,
    tenant_calls: int,
    latency_s: float,
    noisy_rate: float,
    prompt: str,
    poisson: bool,
) -> dict[str, Any]:
    with podium_stack(args.workers, tenant_calls, args.processes) as (stack, pg_url):
        engine = create_engine(pg_url, pool_size=2)
        try:
            names = [(f"quiet{i + 1}", True) for i in range(args.quiet_tenants)]
            noisy_cap = {"noisy": args.noisy_calls} if args.noisy_calls is not None else None
            tenants = create_tenants(stack, [*names, ("noisy", False)], noisy_cap)
            quiet_t = [t for t in tenants if t.quiet]
            noisy = tenants[-1]
            log(f"tenants: {[(t.name, t.cap) for t in tenants]}")

            # The quiet tenants get the same schedule in A and B (same seeds), so the two
            # phases differ only by the noise.
            def quiet_arrivals(length: float, salt: int) -> list[Arrival]:
                return [
                    Arrival(t, off)
                    for i, t in enumerate(quiet_t)
                    for off in schedule(
                        args.quiet_rate, length, random.Random(args.seed * 1000 + salt + i), poisson
                    )
                ]

            warm = quiet_arrivals(warmup, 500)
            # B and D send the same noisy schedule (D to the second stack).
            noise_offsets = schedule(noisy_rate, duration, random.Random(args.seed + 99), poisson)
            noise = [Arrival(noisy, off) for off in noise_offsets]
            # (key, label, arrivals, cores of synthetic CPU load). C and D, the optional
            # controls, run before B so that B's noisy backlog cannot spill into them; D's
            # noise stack is stopped before B.
            plan: list[tuple[str, str, list[Arrival], float]] = [
                ("A", "no noise", quiet_arrivals(duration, 0), 0.0)
            ]
            if args.cpu_control > 0:
                plan.append(
                    (
                        "C",
                        f"no noisy tenant, {args.cpu_control:g} cores of CPU burners",
                        quiet_arrivals(duration, 0),
                        args.cpu_control,
                    )
                )
            if args.separate_noise_control:
                plan.append(
                    ("D", "noisy tenant on a separate stack", quiet_arrivals(duration, 0), 0.0)
                )
            plan.append(("B", "noise", quiet_arrivals(duration, 0) + noise, 0.0))
            everything = warm + [a for _, _, arrivals, _ in plan for a in arrivals]
            log(f"creating {len(everything)} threads ahead of time")
            asyncio.run(create_threads(stack.url, everything))

            groups = {n: p.pid for n, p in stack.procs.items()}
            cpu = CpuMeter(groups, pg_url.rsplit("/", 1)[1])
            probe = DispatcherProbe(stack.env["PODIUM_REDIS_KEY_PREFIX"], tenants)
            results: dict[str, dict[str, Any]] = {}
            try:
                run_phase(stack, "warm-up", warm, prompt, warmup, cpu)
                wait_runs_done(engine, [a.run_id for a in warm if a.run_id], 60)
                for key, label, arrivals, burn in plan:
                    # D's noise stack lives for D only: A, C and B run without it.
                    side_cm = (
                        separate_noise_stack(
                            args.workers,
                            tenant_calls,
                            args.processes,
                            noise_offsets,
                            [a.offset for a in warm],
                            warmup,
                            prompt,
                            cpu,
                            noisy.cap,
                        )
                        if key == "D"
                        else contextlib.nullcontext()
                    )
                    with side_cm as side:
                        time.sleep(1.0)
                        with cpu_burners(burn):
                            res = run_phase(
                                stack, f"{key} ({label})", arrivals, prompt, duration, cpu, side
                            )
                        quiet_runs = [a.run_id for a in arrivals if a.run_id and a.tenant.quiet]
                        res["quiet_runs_unfinished"] = wait_runs_done(engine, quiet_runs, 90)
                        if side is not None:
                            # Read now: the noise stack and its database go when D ends.
                            res["noise_stack"] = side.report(
                                res.pop("side"), duration, args.workers, latency_s
                            )
                    results[key] = res
                now = time.time()
                for res in results.values():
                    res["dispatcher"] = probe.summary(res["t0"], res["t0"] + duration)
            finally:
                probe.stop()
            ids = [a.run_id for _, _, arrivals, _ in plan for a in arrivals if a.run_id]
            calls = fetch_calls(engine, ids)
            for c in calls:
                c["picked"] = probe.picked.get(c["item"])
                c["released"] = probe.last_seen.get(c["item"])
        finally:
            engine.dispose()

    phases = {}
    for key, label, arrivals, burn in plan:
        res = results[key]
        phase = analyse_phase(
            key, tenants, arrivals, calls, res["t0"], duration, now, args.workers, latency_s
        )
        phase["label"] = label
        phase["cpu_burner_cores"] = burn
        phase["cpu"] = res["cpu"]
        phase["dispatcher"] = res["dispatcher"]
        phase["quiet_runs_unfinished"] = res["quiet_runs_unfinished"]
        if "noise_stack" in res:
            phase["noise_stack"] = res["noise_stack"]
        lateness = dict(
            zip(
                (id(a) for a in sorted(arrivals, key=lambda a: a.offset)),
                res["lateness"],
                strict=True,
            )
        )
        phase["submission"] = {}
        for who, quiet in (("quiet", True), ("noisy", False)):
            group = [a for a in arrivals if a.tenant.quiet is quiet]
            if group:
                phase["submission"][who] = submission_stats(
                    group, duration, [lateness[id(a)] for a in group]
                )
        phases[key] = phase

    p95_a = phases["A"]["quiet_wait"].get("p95_ms", math.nan)
    p95_b = phases["B"]["quiet_wait"].get("p95_ms", math.nan)
    ratio = p95_b / p95_a if p95_a and not math.isnan(p95_a) else math.nan
    jain_b = phases["B"]["jain_vs_fair_share"]
    noisy_row = phases["B"]["tenants"]["noisy"]
    targets = [
        {
            "name": "quiet p95 queue wait, noise / no noise",
            "value": round(ratio, 3),
            "target": "<= 1.5",
            "pass": bool(ratio <= 1.5),
        },
        {
            "name": "Jain's index (achieved / max-min fair share), phase B",
            "value": jain_b,
            "target": ">= 0.9",
            "pass": bool(jain_b >= 0.9),
        },
        {
            "name": "noisy tenant's max calls in flight <= its concurrent_calls cap",
            "value": noisy_row["max_in_flight"],
            "target": f"<= {noisy.cap}",
            "pass": noisy_row["max_in_flight"] <= noisy.cap,
        },
    ]
    noisy_sub = phases["B"]["submission"]["noisy"]
    headline: dict[str, Any] = {
        "quiet_p95_wait_ms_no_noise": p95_a,
        "quiet_p95_wait_ms_noise": p95_b,
        "quiet_p95_ratio": round(ratio, 3),
        "jain_vs_fair_share": jain_b,
        "jain_vs_demand": phases["B"]["jain_vs_demand"],
        "noisy_429": noisy_sub["statuses"].get("429", 0),
        "noisy_max_in_flight": noisy_row["max_in_flight"],
        "noisy_cap": noisy.cap,
        "noisy_achieved_per_s": noisy_row["achieved_per_s"],
        "noisy_fair_share_per_s": noisy_row["fair_share_per_s"],
    }
    if "C" in phases:
        p95_c = phases["C"]["quiet_wait"].get("p95_ms", math.nan)
        headline["quiet_p95_wait_ms_cpu_control"] = p95_c
        headline["quiet_p95_ratio_cpu_control"] = round(p95_c / p95_a, 3) if p95_a else None
    if "D" in phases:
        p95_d = phases["D"]["quiet_wait"].get("p95_ms", math.nan)
        headline["quiet_p95_wait_ms_separate_noise"] = p95_d
        headline["quiet_p95_ratio_separate_noise"] = round(p95_d / p95_a, 3) if p95_a else None
    return {
        "benchmark": "fairness",
        "description": (
            "A noisy tenant at 20x load against quiet tenants: the quiet tenants' p95 queue "
            "wait (agent_calls.started_at - created_at) with and without the noise, and Jain's "
            "fairness index of the achieved throughput against the max-min fair share."
        ),
        "machine": machine_info(),
        "parameters": params,
        "targets": targets,
        "headline": headline,
        "phases": phases,
    }


def print_summary(report: dict[str, Any]) -> None:
    p = report["parameters"]
    m = report["machine"]
    print(
        f"\nFairness benchmark ({p['mode']}), {m['date']}, {m['nproc']} cores: "
        f"W={p['workers']} slots, latency {p['latency_ms']:g} ms, capacity "
        f"{p['capacity_calls_per_s']:g} calls/s, per-tenant cap {p['tenant_concurrent_calls']}; "
        f"{p['quiet_tenants']} quiet x {p['quiet_rate_per_s']:g}/s, noisy "
        f"{p['noisy_rate_per_s']:g}/s, {p['phase_duration_s']:g} s per phase ({p['arrivals']})"
    )
    for key, ph in report["phases"].items():
        label = ph["label"]
        w = ph["quiet_wait"]
        pre = ph["quiet_run_to_call"]
        sub = ph["submission"]
        print(f"\nPhase {key} ({label}): machine busy {ph['cpu']['machine_busy_pct']}%")
        print(
            f"  quiet queue wait  n={w.get('n')} p50 {w.get('p50_ms')} ms  p95 {w.get('p95_ms')}"
            f" ms  p99 {w.get('p99_ms')} ms  max {w.get('max_ms')} ms"
        )
        print(
            f"  quiet run->call   p50 {pre.get('p50_ms')} ms  p95 {pre.get('p95_ms')} ms "
            f"(before the fair queue)"
        )
        cp, ps_ = ph["quiet_created_to_picked"], ph["quiet_picked_to_started"]
        print(
            f"  wait split: created->picked p50 {cp.get('p50_ms')} / p95 {cp.get('p95_ms')} ms,"
            f" picked->started p50 {ps_.get('p50_ms')} / p95 {ps_.get('p95_ms')} ms"
        )
        for who, s in sub.items():
            print(
                f"  {who} submission: {s['sent']} sent, {s['rate_per_s']}/s, statuses "
                f"{s['statuses']}, send lateness p99 {s['send_lateness'].get('p99_ms')} ms"
            )
        print(
            f"  {'tenant':8} {'demand/s':>9} {'fair/s':>7} {'got/s':>7} {'got/fair':>8} "
            f"{'p95 wait':>9} {'max infl':>8} {'queued max':>10} {'hold p50':>8}"
        )
        for name, row in ph["tenants"].items():
            d = ph["dispatcher"].get(name, {})
            print(
                f"  {name:8} {row['demand_per_s']:9.2f} {row['fair_share_per_s']:7.2f} "
                f"{row['achieved_per_s']:7.2f} {row['achieved_over_fair']:8.3f} "
                f"{row['wait'].get('p95_ms', math.nan):9.1f} {row['max_in_flight']:8d} "
                f"{d.get('queued_max', 0):10d} {row['slot_hold'].get('p50_ms', math.nan):8.1f}"
            )
        if side := ph.get("noise_stack"):
            s, row = side["submission"], side["noisy"]
            print(
                f"  noise stack: noisy {s['sent']} sent, {s['rate_per_s']}/s, statuses "
                f"{s['statuses']}; got {row['achieved_per_s']}/s, p95 wait "
                f"{row['wait'].get('p95_ms')} ms, max in flight {row['max_in_flight']}"
            )
        print(
            f"  Jain: vs fair share {ph['jain_vs_fair_share']}, vs demand "
            f"{ph['jain_vs_demand']}; cores {ph['cpu']['cores']}"
        )
    load = m.get("other_load", {})
    if load.get("contaminated"):
        print(
            f"\nWARNING: other processes used up to {load['foreign_cores_max_during_phases']} "
            "cores during the phases; the figures are polluted by that load."
        )
    h = report["headline"]
    if "quiet_p95_ratio_cpu_control" in h:
        print(
            f"\nControl C: quiet p95 wait {h['quiet_p95_wait_ms_cpu_control']} ms with CPU "
            f"burners and no noisy tenant = {h['quiet_p95_ratio_cpu_control']}x phase A "
            f"(B, with the noisy tenant: {h['quiet_p95_ratio']}x)"
        )
    if "quiet_p95_ratio_separate_noise" in h:
        print(
            f"\nControl D: quiet p95 wait {h['quiet_p95_wait_ms_separate_noise']} ms with the "
            f"noisy tenant on a separate stack = {h['quiet_p95_ratio_separate_noise']}x phase A "
            f"(B, same stack: {h['quiet_p95_ratio']}x)"
        )
    print("\nTargets:")
    for t in report["targets"]:
        print(
            f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['name']}: {t['value']} "
            f"(target {t['target']})"
        )


if __name__ == "__main__":
    sys.exit(main())
