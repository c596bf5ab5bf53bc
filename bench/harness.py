"""The benchmark harness: throwaway databases and Redis prefixes, the Podium services as
subprocesses, an async HTTP load driver, process sampling and small statistics helpers.

Everything a benchmark creates is registered with the ``BenchSession`` and removed when it
closes (also on Ctrl-C, SIGTERM or an exception): processes, PostgreSQL databases
(``podium_bench_<hex>``), Redis keys under the session's prefix and RabbitMQ queues.

Environment knobs (all optional):

- ``BENCH_PG``: the PostgreSQL server (default ``postgresql+psycopg://postgres@127.0.0.1:5432``)
- ``BENCH_REDIS``: Podium's Redis (default ``redis://127.0.0.1:6379/10``)
- ``BENCH_BASELINE_REDIS``: the bare Celery baseline's Redis (default db 9)
- ``BENCH_RABBITMQ``: the RabbitMQ broker (default ``amqp://guest:guest@127.0.0.1:5672//``)
- ``BENCH_PODIUM_SRC``: measure another source tree of Podium (a checkout or an exported
  commit): its ``shared/src`` and ``services/*/src`` go first on the services' PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
HOOKS_DIR = ROOT / "bench" / "hooks"
PG_SERVER = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/10")
BASELINE_REDIS_URL = os.environ.get("BENCH_BASELINE_REDIS", "redis://127.0.0.1:6379/9")
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
PODIUM_QUEUES = ("orchestrator", "learner", "agents.default")
TERMINAL_RUN = ("completed", "failed", "cancelled")
TERMINAL_CALL = ("succeeded", "failed", "cancelled")
# Tenant quota defaults (0 = unlimited) so no benchmark is ever throttled by a quota.
NO_QUOTAS = {
    "PODIUM_TENANT_REQUESTS_PER_MINUTE": "0",
    "PODIUM_TENANT_CONCURRENT_RUNS": "0",
    "PODIUM_TENANT_CONCURRENT_CALLS": "0",
    "PODIUM_TENANT_TOKENS_PER_DAY": "0",
    "PODIUM_TENANT_COST_PER_MONTH_USD": "0",
}

_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, with the time since the harness was imported."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max of durations given in seconds, in milliseconds."""
    ms = [v * 1000.0 for v in values_s]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0 or math.isnan(value) or math.isnan(base):
        return None
    return round(value / base, 3)


def target(name: str, value: float | None, op: str, bound: float, unit: str = "") -> dict[str, Any]:
    """One target check: ``op`` is ">=" or "<="; a missing value fails."""
    ok = value is not None and not math.isnan(value)
    if ok:
        assert value is not None
        ok = value >= bound if op == ">=" else value <= bound
    return {
        "name": name,
        "value": None if value is None else round(value, 3),
        "target": f"{'≥' if op == '>=' else '≤'} {bound:g}{unit}",
        "pass": ok,
    }


def inflight_efficiency(
    intervals: Sequence[tuple[float, float]],
    concurrency: int,
    latency_s: float,
    stop_at: float | None = None,
) -> dict[str, float]:
    """Efficiency of a pool of ``concurrency`` slots fed from a full queue with calls of
    ``latency_s``: completions per second in the steady window divided by the ideal
    ``concurrency / latency_s``. Also the whole drain's efficiency (first start to last end).

    The steady window starts half a latency after the first call started and lasts a whole
    number of latencies (calls that start together finish together, so a window of k
    latencies holds k rounds of completions whatever its phase); it ends before ``stop_at``
    (the worker was stopped with the queue still full) or, for a drain, half a latency after
    the last call started (completions until then are of calls started on a full queue)."""
    if not intervals:
        return {"efficiency": math.nan}
    t0 = min(s for s, _ in intervals)
    last_start = max(s for s, _ in intervals)
    last_end = max(e for _, e in intervals)
    limit = stop_at if stop_at is not None else last_start + latency_s / 2
    w0 = t0 + latency_s / 2
    rounds = math.floor((limit - w0) / latency_s)
    w1 = w0 + rounds * latency_s if rounds >= 1 else limit
    ideal = concurrency / latency_s
    window = w1 - w0
    done = sum(1 for _, e in intervals if w0 < e <= w1)
    achieved = done / window if window > 0 else math.nan
    drain = len(intervals) / (last_end - t0) if stop_at is None and last_end > t0 else math.nan
    durations = [e - s for s, e in intervals]
    # Most calls in flight at once (a sweep over start/end events).
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    return {
        "window_s": round(window, 3),
        "completed_in_window": done,
        "achieved_per_s": round(achieved, 2),
        "ideal_per_s": round(ideal, 2),
        "efficiency": round(achieved / ideal, 3) if window > 0 else math.nan,
        "drain_efficiency": round(drain / ideal, 3) if not math.isnan(drain) else math.nan,
        "peak_in_flight": peak,
        "call_p50_ms": round(percentile(durations, 50) * 1000, 1),
        "call_p99_ms": round(percentile(durations, 99) * 1000, 1),
    }


# --- the machine ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        import celery
        import kombu

        info["celery"] = celery.__version__
        info["kombu"] = kombu.__version__
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(REDIS_URL)
        info["redis"] = client.info("server")["redis_version"]
        client.close()
    with contextlib.suppress(Exception):
        engine = create_engine(f"{PG_SERVER}/postgres")
        with engine.connect() as conn:
            info["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
        engine.dispose()
    with contextlib.suppress(Exception):
        from kombu import Connection

        with Connection(RABBITMQ_URL, connect_timeout=2) as conn:
            conn.connect()
            props = conn.connection.server_properties
            info["rabbitmq"] = str(props.get("version", "?"))
    return info


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout

    # Porcelain lines are "XY path": the first column may be a space, so no strip().
    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if len(line) > 3]
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "dirty_files": [f for f in dirty if not f.startswith("bench/")][:30],
        "podium_src": os.environ.get("BENCH_PODIUM_SRC") or str(ROOT),
    }


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _group_pids(pgid: int) -> list[int]:
    """Every live pid of a process group (a service and, for prefork, its children)."""
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def proc_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class Service:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the service's whole process group."""
        return sum(proc_rss_mb(p) for p in _group_pids(self.pid))

    def main_rss_mb(self) -> float:
        return proc_rss_mb(self.pid)

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p) for p in _group_pids(self.pid))

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Sampler:
    """Samples RSS and CPU of some services every ``interval`` seconds in a thread."""

    def __init__(self, services: dict[str, Service], interval: float = 0.25) -> None:
        import threading

        self.services = services
        self.interval = interval
        self.peak_rss: dict[str, float] = dict.fromkeys(services, 0.0)
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._cpu0 = {n: s.cpu_s() for n, s in services.items()}
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now: dict[str, float] = {}
            for name, svc in self.services.items():
                rss = svc.rss_mb()
                now[name] = rss
                self.peak_rss[name] = max(self.peak_rss[name], rss)
            self.samples.append((time.monotonic(), now))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, dict[str, float]]:
        """Peak RSS (MB) and mean CPU (cores) of each service over the sampling period."""
        self._stop.set()
        self._thread.join(timeout=5)
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        out: dict[str, dict[str, float]] = {}
        for name, svc in self.services.items():
            cpu = (svc.cpu_s() - self._cpu0[name]) / elapsed
            out[name] = {"peak_rss_mb": round(self.peak_rss[name], 1), "cpu_cores": round(cpu, 2)}
        return out


def _system_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _CLK_TCK


def _server_groups(database: str | None) -> dict[str, list[int]]:
    """pids of the servers a benchmark uses: the PostgreSQL backends of ``database``,
    redis-server and RabbitMQ's Erlang VM."""
    groups: dict[str, list[int]] = {"redis": [], "rabbitmq": []}
    if database:
        groups["postgresql"] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if database and cmd.startswith("postgres:") and f" {database} " in cmd:
            groups["postgresql"].append(int(entry))
        elif "redis-server" in cmd.split(" ", 1)[0]:
            groups["redis"].append(int(entry))
        elif "beam.smp" in cmd.split(" ", 1)[0] and "rabbit" in cmd:
            groups["rabbitmq"].append(int(entry))
    return groups


class ServerSampler:
    """CPU (cores) of the servers (PostgreSQL backends of one database, Redis, RabbitMQ) and
    of the whole machine between ``__init__`` and ``stop()``. Backends that exit meanwhile
    take their CPU time with them: a lower bound."""

    def __init__(self, database: str | None = None) -> None:
        self.database = database
        self._t0 = time.monotonic()
        self._busy0 = _system_busy_s()
        self._cpu0 = {
            pid: proc_cpu_s(pid) for pids in _server_groups(database).values() for pid in pids
        }

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        out: dict[str, float] = {}
        for name, pids in _server_groups(self.database).items():
            used = sum(proc_cpu_s(pid) - self._cpu0.get(pid, 0.0) for pid in pids)
            out[f"{name}_cpu_cores"] = round(used / elapsed, 2)
        out["machine_busy_cores"] = round((_system_busy_s() - self._busy0) / elapsed, 2)
        return out


def machine_busy_cores(seconds: float = 1.0) -> float:
    """How many cores the machine keeps busy now (before a benchmark: other work on it)."""
    before = _system_busy_s()
    time.sleep(seconds)
    return round((_system_busy_s() - before) / seconds, 2)


def stop_process(popen: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout``."""
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)
    # Children that outlived their parent (prefork pools).
    for pid in _group_pids(popen.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def podium_pythonpath(extra: Sequence[str] = ()) -> str:
    """The services' PYTHONPATH: an alternative Podium source tree first (BENCH_PODIUM_SRC),
    then the repository root (so ``bench.*`` launchers and hooks import)."""
    parts = list(extra)
    src = os.environ.get("BENCH_PODIUM_SRC")
    if src:
        base = Path(src)
        parts.append(str(base / "shared" / "src"))
        parts += [str(p) for p in sorted((base / "services").glob("*/src"))]
    parts.append(str(ROOT))
    return os.pathsep.join(parts)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env.pop("PYTHONPATH", None)
    env["PYTHONPATH"] = podium_pythonpath()
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- the session: everything a run creates, removed at the end ------------------------------


class BenchSession:
    """Owns every resource a benchmark run creates and removes them in ``close()``."""

    def __init__(self, label: str = "bench") -> None:
        self.hex = secrets.token_hex(4)
        self.label = label
        self.workdir = Path(tempfile.mkdtemp(prefix=f"podium-bench-{self.hex}-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.databases: list[str] = []
        self.redis_prefixes: list[tuple[str, str]] = []
        self.rabbit_queues: set[str] = set()
        self._db_counter = 0
        self._template: str | None = None
        self._old_handlers: dict[int, Any] = {}
        self._closed = False

    # signals: SIGTERM behaves like Ctrl-C so the finally blocks clean up
    def __enter__(self) -> BenchSession:
        def raise_interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str], log_name: str | None = None
    ) -> Service:
        log_path = self.workdir / f"{log_name or name}.log"
        handle = log_path.open("ab")
        popen = subprocess.Popen(
            list(argv),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.workdir,
        )
        handle.close()
        self.procs.append(popen)
        return Service(name, popen, log_path)

    # PostgreSQL: one migrated template, cheap copies of it
    def _admin_engine(self) -> Engine:
        return create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")

    def _db_name(self) -> str:
        self._db_counter += 1
        return f"podium_bench_{self.hex}{self._db_counter:02x}"

    def new_database(self) -> str:
        """A fresh, migrated PostgreSQL database (a copy of the session's template)."""
        if self._template is None:
            name = self._db_name()
            engine = self._admin_engine()
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            engine.dispose()
            self.databases.append(name)
            env = base_env()
            env["PODIUM_DATABASE_URL"] = f"{PG_SERVER}/{name}"
            subprocess.run(
                [sys.executable, "-c", "from podium.cli.main import cli; cli()", "migrate"],
                env=env,
                check=True,
                capture_output=True,
                timeout=180,
            )
            self._template = name
        name = self._db_name()
        engine = self._admin_engine()
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"'))
        engine.dispose()
        self.databases.append(name)
        return f"{PG_SERVER}/{name}"

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        engine = self._admin_engine()
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()
        if name in self.databases:
            self.databases.remove(name)

    # Redis: a prefix per stack, all under the session's
    def new_prefix(self, redis_url: str = REDIS_URL) -> str:
        prefix = f"podium-bench-{self.hex}-{len(self.redis_prefixes):02d}:"
        self.redis_prefixes.append((redis_url, prefix))
        return prefix

    def clear_prefix(self, redis_url: str, prefix: str) -> int:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
            return len(keys)
        finally:
            client.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for popen in reversed(self.procs):
            with contextlib.suppress(Exception):
                stop_process(popen, timeout=15)
        for redis_url, prefix in self.redis_prefixes:
            with contextlib.suppress(Exception):
                self.clear_prefix(redis_url, prefix)
        if self.rabbit_queues:
            with contextlib.suppress(Exception):
                delete_rabbit_queues(sorted(self.rabbit_queues))
        for name in list(self.databases):
            with contextlib.suppress(Exception):
                self.drop_database(f"{PG_SERVER}/{name}")
        if os.environ.get("BENCH_KEEP_LOGS") != "1":
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        log("cleaned up: processes, databases, Redis keys, RabbitMQ queues")


# --- brokers --------------------------------------------------------------------------------


def rabbit_queue_length(name: str, url: str = RABBITMQ_URL) -> int:
    from kombu import Connection

    with Connection(url, connect_timeout=3) as conn:
        channel = conn.channel()
        try:
            _, count, _ = channel.queue_declare(queue=name, passive=True)
            return int(count)
        except Exception:
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()


def rabbit_queue_exists(name: str, url: str = RABBITMQ_URL) -> bool:
    from kombu import Connection

    with Connection(url, connect_timeout=3) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(queue=name, passive=True)
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                channel.close()


def purge_rabbit_queues(names: Sequence[str], url: str = RABBITMQ_URL) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=3) as conn:
        for name in names:
            channel = conn.channel()
            with contextlib.suppress(Exception):
                channel.queue_purge(name)
            with contextlib.suppress(Exception):
                channel.close()


def delete_rabbit_queues(names: Sequence[str], url: str = RABBITMQ_URL) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=3) as conn:
        for name in names:
            channel = conn.channel()
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
            with contextlib.suppress(Exception):
                channel.close()


def rabbit_available(url: str = RABBITMQ_URL) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.connect()
        return True
    except Exception:
        return False


# --- a Podium stack -------------------------------------------------------------------------


@dataclass
class Tenant:
    id: str
    key: str


def create_tenant(url: str, admin_key: str, name: str = "bench") -> Tenant:
    """A new tenant and an API key for it, through the admin API."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        response = http.post("/v1/tenants", json={"name": f"{name}-{secrets.token_hex(3)}"})
        response.raise_for_status()
        tenant_id = response.json()["id"]
        response = http.post(f"/v1/tenants/{tenant_id}/api-keys", json={"name": "bench"})
        response.raise_for_status()
        return Tenant(tenant_id, response.json()["key"])


def wait_http(url: str, svc: Service, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not svc.alive():
            raise RuntimeError(f"{svc.name} exited ({svc.popen.returncode}):\n{svc.log_tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{svc.name} not ready after {timeout:.0f}s:\n{svc.log_tail()}")
        time.sleep(0.1)


class EmbeddedStack:
    """``podium dev``: every service in one process, SQLite, in-process broker, no Redis."""

    def __init__(
        self,
        session: BenchSession,
        *,
        label: str,
        latency_ms: float = 0.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.label = label
        self.db_path = session.workdir / f"{label}.db"
        self.database_url = f"sqlite:///{self.db_path}"
        self.port = free_port()
        self.admin_key = "bench-admin-" + secrets.token_hex(12)
        self.env = base_env()
        self.env.update(
            PODIUM_DATABASE_URL=self.database_url,
            PODIUM_ADMIN_KEY=self.admin_key,
            PODIUM_HTTP_PORT=str(self.port),
            PODIUM_LLM_PROVIDER="simulated",
            PODIUM_SIMULATED_LATENCY_MS=str(latency_ms),
            PODIUM_LOG_LEVEL="WARNING",
            **NO_QUOTAS,
        )
        if env:
            self.env.update(env)
        self.service: Service | None = None
        self._engine: Engine | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> dict[str, str]:
        hidden = ("PODIUM_ADMIN_KEY", "PODIUM_DATABASE_URL", "PODIUM_HTTP_PORT")
        return {
            k: v for k, v in sorted(self.env.items()) if k.startswith("PODIUM_") and k not in hidden
        }

    def start(self) -> Service:
        argv = [sys.executable, "-c", "from podium.cli.main import cli; cli()", "dev"]
        self.service = self.session.spawn("podium-dev", argv, self.env, log_name=self.label)
        wait_http(f"{self.url}/readyz", self.service)
        return self.service

    def create_tenant(self, name: str = "bench") -> Tenant:
        return create_tenant(self.url, self.admin_key, name)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        return self._engine

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def count_runs(self, tenant_id: str) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM runs WHERE tenant_id = :t "
                "AND status IN ('completed','failed','cancelled')",
                t=tenant_id,
            )
        )

    def run_times(self, tenant_id: str) -> list[tuple[float, float | None, str]]:
        return [
            (_epoch(r[0]), None if r[1] is None else _epoch(r[1]), str(r[2]))
            for r in self.rows(
                "SELECT created_at, finished_at, status FROM runs WHERE tenant_id = :t",
                t=tenant_id,
            )
        ]

    def close(self) -> None:
        if self.service is not None:
            stop_process(self.service.popen)
            self.service = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)


def _epoch(value: Any) -> float:
    from datetime import UTC, datetime

    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class PodiumStack:
    """Podium's services as subprocesses on one database, one broker and one Redis prefix."""

    def __init__(
        self,
        session: BenchSession,
        *,
        label: str,
        broker: str = "redis",
        latency_ms: float = 0.0,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.session = session
        self.label = label
        self.broker = broker
        self.database_url = database_url or session.new_database()
        self.prefix = session.new_prefix()
        self.port = free_port()
        self.admin_key = "bench-admin-" + secrets.token_hex(12)
        broker_url = REDIS_URL if broker == "redis" else RABBITMQ_URL
        self.env = base_env()
        self.env.update(
            PODIUM_DATABASE_URL=self.database_url,
            PODIUM_BROKER_URL=broker_url,
            PODIUM_REDIS_URL=REDIS_URL,
            PODIUM_REDIS_KEY_PREFIX=self.prefix,
            PODIUM_ADMIN_KEY=self.admin_key,
            PODIUM_HTTP_PORT=str(self.port),
            PODIUM_LLM_PROVIDER="simulated",
            PODIUM_SIMULATED_LATENCY_MS=str(latency_ms),
            PODIUM_LOG_LEVEL="WARNING",
            **NO_QUOTAS,
        )
        if env:
            self.env.update(env)
        if broker == "rabbitmq":
            session.rabbit_queues.update(PODIUM_QUEUES)
        self.services: dict[str, Service] = {}
        self._engine: Engine | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> dict[str, str]:
        """The PODIUM_* settings of this stack, for the results (secrets left out)."""
        hidden = ("PODIUM_ADMIN_KEY", "PODIUM_DATABASE_URL", "PODIUM_HTTP_PORT")
        return {
            k: v
            for k, v in sorted(self.env.items())
            if k.startswith("PODIUM_") and k not in hidden and not k.endswith("KEY_PREFIX")
        }

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url, pool_size=2, max_overflow=2)
        return self._engine

    def start(
        self,
        name: str,
        module: str,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        launcher: Sequence[str] | None = None,
        wait: bool = True,
    ) -> Service:
        proc_env = dict(self.env)
        if env:
            proc_env.update(env)
        port = 0
        extra = list(args)
        if module != "podium_gateway":
            port = free_port()
            proc_env["PODIUM_METRICS_PORT"] = str(port)
            # A node name of its own: two replicas of a service on one host would otherwise
            # share one (RabbitMQ refuses the second one's exclusive pidbox queue).
            extra += ["--hostname", f"{name}.{self.prefix.rstrip(':')}@%h"]
        argv = [sys.executable, *(launcher or ["-m", module]), *extra]
        svc = self.session.spawn(name, argv, proc_env, log_name=f"{self.label}-{name}")
        svc.metrics_port = port
        self.services[name] = svc
        if wait:
            self.wait_ready(name)
        return svc

    def start_gateway(self, wait: bool = True) -> Service:
        return self.start("gateway", "podium_gateway", wait=wait)

    def start_dispatchers(self, orchestrators: int = 2) -> None:
        """Gateway and ``orchestrators`` orchestrators, started together (no agent-worker):
        what queues agent calls for the drain scenarios."""
        self.start_gateway(wait=False)
        names = [f"orchestrator-{i + 1}" for i in range(orchestrators)]
        for name in names:
            self.start(name, "podium_orchestrator", wait=False)
        for name in ("gateway", *names):
            self.wait_ready(name)

    def stop_dispatchers(self) -> None:
        self.stop(*[n for n in self.services if n == "gateway" or n.startswith("orchestrator")])

    def start_orchestrator(self) -> Service:
        return self.start("orchestrator", "podium_orchestrator")

    def start_learner(self) -> Service:
        return self.start("learner", "podium_learner")

    def start_worker(
        self,
        name: str = "agent-worker",
        *,
        pool: str = "threads",
        concurrency: int | None = None,
        wait: bool = True,
    ) -> Service:
        env: dict[str, str] = {}
        if concurrency is not None:
            env["PODIUM_WORKER_CONCURRENCY"] = str(concurrency)
        launcher = None
        args: list[str] = []
        if pool == "gevent":
            # Celery's own `celery` command monkey-patches before importing anything; the
            # service entry point does not, so the bench launcher does it first.
            launcher = ["-m", "bench.gevent_worker"]
        if pool != "threads":
            args += ["--pool", pool]
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        return self.start(
            name, "podium_agent_worker", args=args, env=env, launcher=launcher, wait=wait
        )

    def start_all(self, *, worker_pool: str = "threads", concurrency: int | None = None) -> None:
        self.start_gateway(wait=False)
        self.start("orchestrator", "podium_orchestrator", wait=False)
        self.start("learner", "podium_learner", wait=False)
        self.start_worker(pool=worker_pool, concurrency=concurrency, wait=False)
        for name in ("gateway", "orchestrator", "learner", "agent-worker"):
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 90.0) -> None:
        svc = self.services[name]
        url = (
            f"{self.url}/readyz"
            if svc.metrics_port == 0
            else f"http://127.0.0.1:{svc.metrics_port}/metrics"
        )
        deadline = time.monotonic() + timeout
        while True:
            if not svc.alive():
                raise RuntimeError(f"{name} exited ({svc.popen.returncode}):\n{svc.log_tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f}s:\n{svc.log_tail()}")
            time.sleep(0.1)

    def stop(self, *names: str, timeout: float = 30.0) -> None:
        for name in names or tuple(self.services):
            svc = self.services.pop(name, None)
            if svc is not None:
                stop_process(svc.popen, timeout=timeout)

    def close(self, drop: bool = True) -> None:
        self.stop()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self.session.clear_prefix(REDIS_URL, self.prefix)
        if self.broker == "rabbitmq":
            purge_rabbit_queues(PODIUM_QUEUES)
        if drop:
            self.session.drop_database(self.database_url)

    # --- API helpers -----------------------------------------------------------------------
    def create_tenant(self, name: str = "bench") -> Tenant:
        return create_tenant(self.url, self.admin_key, name)

    # --- broker helpers --------------------------------------------------------------------
    def queue_length(self, queue: str) -> int:
        if self.broker == "rabbitmq":
            return rabbit_queue_length(queue)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return int(client.llen(f"{self.prefix}{queue}"))
        finally:
            client.close()

    def purge_queue(self, queue: str) -> None:
        if self.broker == "rabbitmq":
            purge_rabbit_queues([queue])
            return
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.delete(f"{self.prefix}{queue}")
        finally:
            client.close()

    def move_messages(self, src: str, dst: str, count: int | None = None) -> int:
        """Move ``count`` (default: all) messages of the Redis list ``src`` to ``dst``,
        oldest first, keeping their order (kombu pushes on the left, pops on the right)."""
        if self.broker != "redis":
            raise RuntimeError("move_messages needs the Redis broker")
        client = redis.Redis.from_url(REDIS_URL)
        try:
            a, b = f"{self.prefix}{src}", f"{self.prefix}{dst}"
            n = int(client.llen(a)) if count is None else count
            pipe = client.pipeline(transaction=False)
            for _ in range(n):
                pipe.lmove(a, b, "RIGHT", "LEFT")
            return sum(1 for r in pipe.execute() if r is not None)
        finally:
            client.close()

    def hold_queue(self, queue: str, hold: bool) -> None:
        """Move a Redis queue's messages aside (``hold``) or back, atomically (RENAME), so
        several workers can be fully started before any message is visible to them."""
        if self.broker != "redis":
            raise RuntimeError("hold_queue needs the Redis broker")
        client = redis.Redis.from_url(REDIS_URL)
        try:
            live, aside = f"{self.prefix}{queue}", f"{self.prefix}{queue}.bench-hold"
            src, dst = (live, aside) if hold else (aside, live)
            if client.exists(src):
                client.rename(src, dst)
        finally:
            client.close()

    # --- store helpers ---------------------------------------------------------------------
    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def count_calls(self, tenant_id: str, *, terminal: bool | None = None) -> int:
        cond = ""
        if terminal is True:
            cond = " AND status IN ('succeeded','failed','cancelled')"
        elif terminal is False:
            cond = " AND status NOT IN ('succeeded','failed','cancelled')"
        return int(
            self.scalar(f"SELECT count(*) FROM agent_calls WHERE tenant_id = :t{cond}", t=tenant_id)
        )

    def count_runs(self, tenant_id: str, *, terminal: bool = True) -> int:
        op = "IN" if terminal else "NOT IN"
        return int(
            self.scalar(
                "SELECT count(*) FROM runs WHERE tenant_id = :t "
                f"AND status {op} ('completed','failed','cancelled')",
                t=tenant_id,
            )
        )

    def call_times(
        self, tenant_id: str, since: float | None = None
    ) -> list[tuple[float, float | None, float | None, str]]:
        """(created, started, finished, status) of the tenant's agent calls, epoch seconds."""
        sql = (
            "SELECT extract(epoch from created_at), extract(epoch from started_at), "
            "extract(epoch from finished_at), status FROM agent_calls WHERE tenant_id = :t"
        )
        params: dict[str, Any] = {"t": tenant_id}
        if since is not None:
            sql += " AND started_at >= to_timestamp(:since)"
            params["since"] = since
        return [
            (
                float(r[0]),
                None if r[1] is None else float(r[1]),
                None if r[2] is None else float(r[2]),
                str(r[3]),
            )
            for r in self.rows(sql, **params)
        ]

    def run_times(self, tenant_id: str) -> list[tuple[float, float | None, str]]:
        """(created, finished, status) of the tenant's runs, epoch seconds."""
        return [
            (float(r[0]), None if r[1] is None else float(r[1]), str(r[2]))
            for r in self.rows(
                "SELECT extract(epoch from created_at), extract(epoch from finished_at), status "
                "FROM runs WHERE tenant_id = :t",
                t=tenant_id,
            )
        ]

    def runs_by_id(self, tenant_id: str) -> dict[str, tuple[float, float | None, str]]:
        """{run id: (created, finished, status)} of the tenant's runs, epoch seconds."""
        return {
            str(r[0]): (float(r[1]), None if r[2] is None else float(r[2]), str(r[3]))
            for r in self.rows(
                "SELECT id, extract(epoch from created_at), extract(epoch from finished_at), "
                "status FROM runs WHERE tenant_id = :t",
                t=tenant_id,
            )
        }

    def wait_until(
        self,
        what: str,
        check: Callable[[], bool],
        timeout: float,
        interval: float = 0.25,
        watch: Sequence[str] = (),
    ) -> bool:
        """Poll ``check`` until true; False on timeout. Dies early if a watched service died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            for name in watch:
                svc = self.services.get(name)
                if svc is not None and not svc.alive():
                    raise RuntimeError(f"{name} died while waiting for {what}:\n{svc.log_tail()}")
            time.sleep(interval)
        log(f"timeout after {timeout:.0f}s waiting for {what}")
        return False


# --- the HTTP load driver -------------------------------------------------------------------


@dataclass
class PostResult:
    started: float  # epoch seconds
    latency_s: float
    status: int
    run_id: str | None = None


@dataclass
class LoadResult:
    posts: list[PostResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def accepted(self) -> list[PostResult]:
        return [p for p in self.posts if p.status == 202]

    @property
    def run_ids(self) -> list[str]:
        return [p.run_id for p in self.posts if p.run_id]

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.posts:
            out[str(p.status)] = out.get(str(p.status), 0) + 1
        return out


def _client(url: str, key: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=limits,
    )


async def _create_threads(url: str, key: str, n: int, concurrency: int) -> list[str]:
    ids: list[str] = []
    async with _client(url, key, concurrency) as http:
        todo = iter(range(n))

        async def worker() -> None:
            for i in todo:
                response = await http.post("/v1/threads", json={"title": f"bench {i}"})
                response.raise_for_status()
                ids.append(response.json()["id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


def create_threads(url: str, key: str, n: int, concurrency: int = 16) -> list[str]:
    return asyncio.run(_create_threads(url, key, n, concurrency))


async def _post_runs(
    url: str,
    key: str,
    thread_ids: Sequence[str],
    body: dict[str, Any],
    concurrency: int,
    rate: float | None,
    route: str = "/v1/threads/{thread_id}/runs",
) -> LoadResult:
    result = LoadResult()
    async with _client(url, key, concurrency) as http:

        async def post(thread_id: str, i: int) -> None:
            started = time.time()
            t = time.perf_counter()
            payload = dict(body)
            payload["input"] = f"{body.get('input', 'bench')} #{i}"
            try:
                response = await http.post(route.format(thread_id=thread_id), json=payload)
                status = response.status_code
                run_id = response.json().get("id") if status == 202 else None
            except httpx.HTTPError:
                status, run_id = 0, None
            result.posts.append(PostResult(started, time.perf_counter() - t, status, run_id))

        t0 = time.perf_counter()
        if rate is None:
            todo = iter(enumerate(thread_ids))

            async def worker() -> None:
                for i, thread_id in todo:
                    await post(thread_id, i)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            sem = asyncio.Semaphore(concurrency)
            tasks = []

            async def paced(thread_id: str, i: int) -> None:
                async with sem:
                    await post(thread_id, i)

            for i, thread_id in enumerate(thread_ids):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(paced(thread_id, i)))
            await asyncio.gather(*tasks)
        result.elapsed_s = time.perf_counter() - t0
    return result


def post_runs(
    url: str,
    key: str,
    thread_ids: Sequence[str],
    *,
    body: dict[str, Any] | None = None,
    concurrency: int = 16,
    rate: float | None = None,
    route: str = "/v1/threads/{thread_id}/runs",
) -> LoadResult:
    """POST one run on each thread: closed loop with ``concurrency`` clients, or open loop at
    ``rate`` runs/s (at most ``concurrency`` in flight). ``route``: where a run is POSTed
    (another server's, such as the floor's ``/runs``)."""
    return asyncio.run(
        _post_runs(
            url,
            key,
            thread_ids,
            body or {"input": "bench", "pattern": "direct"},
            concurrency,
            rate,
            route,
        )
    )


# --- modes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """quick (``make bench``, about 15 minutes) or full (``make bench MODE=full``)."""

    full: bool = False

    @property
    def name(self) -> str:
        return "full" if self.full else "quick"

    def pick(self, quick: Any, full: Any) -> Any:
        return full if self.full else quick


def dispatch_direct_calls(
    stack: PodiumStack, tenant: Tenant, n: int, body: dict[str, Any] | None = None
) -> tuple[int, float]:
    """Create ``n`` runs (one per thread) with gateway and orchestrator only, and wait until
    their agent calls are all queued on ``agents.default`` with no worker consuming.
    Returns (calls queued, seconds it took)."""
    t = time.monotonic()
    threads = create_threads(stack.url, tenant.key, n, concurrency=16)
    load = post_runs(stack.url, tenant.key, threads, body=body, concurrency=16)
    bad = {k: v for k, v in load.statuses().items() if k != "202"}
    if bad:
        raise RuntimeError(f"run admission refused some runs: {bad}")
    return wait_queued(stack, tenant, n), time.monotonic() - t


def wait_queued(
    stack: PodiumStack, tenant: Tenant, calls: int, queued: int | None = None, timeout: float = 300
) -> int:
    """Wait until the tenant has ``calls`` agent calls and ``queued`` (default: ``calls``)
    messages wait on ``agents.default``. Returns the queue's length."""
    want = calls if queued is None else queued
    stack.wait_until(
        f"{want} agent calls queued",
        lambda: (
            stack.count_calls(tenant.id) >= calls and stack.queue_length("agents.default") >= want
        ),
        timeout=timeout,
        interval=0.5,
        watch=tuple(stack.services),
    )
    return stack.queue_length("agents.default")


# --- results --------------------------------------------------------------------------------


def scenario_result(
    name: str,
    title: str,
    *,
    settings: dict[str, Any],
    baseline: dict[str, Any],
    figures: dict[str, Any],
    ratios: dict[str, Any],
    targets: list[dict[str, Any]],
    notes: list[str] | None = None,
    started: float,
) -> dict[str, Any]:
    return {
        "scenario": name,
        "title": title,
        "settings": settings,
        "baseline": baseline,
        "figures": figures,
        "ratios": ratios,
        "targets": targets,
        "pass": all(t["pass"] for t in targets) if targets else None,
        "notes": notes or [],
        "duration_s": round(time.monotonic() - started, 1),
    }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    t = time.monotonic()
    log(f"{what} ...")
    yield
    log(f"{what}: done in {time.monotonic() - t:.1f}s")
