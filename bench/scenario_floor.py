"""(f) Against the floor: what a `direct` run costs in Podium next to a minimal durable
pipeline on the same stack (``bench/floor.py``), measured in the same run, pair by pair.

    uv run --frozen python -m bench.scenario_floor [--full] [--brokers redis,rabbitmq]

For each broker, the floor and Podium each run as four processes (gateway, orchestrator,
agent worker, learner) on their own PostgreSQL database, with a zero-latency model, and get
the same load: N runs POSTed by async httpx with 16 connections while everything runs (one
thread per run for Podium, created beforehand and not timed). For each:

- **CPU per run**: the CPU of the four processes (from /proc, user + system, children
  included) over the load window, minus their idle CPU measured just before (scaled to the
  load window's length), divided by N. The load window ends when the last post-mortem is
  written, so the learner is counted;
- **completed runs/s**: N / (last run finished - first POST), as scenario (c)'s mixed phase.

Then Podium embedded (``podium dev``, SQLite, one process) gets the same load: its completed
runs/s against the floor's on Redis. No counting hooks are loaded here (scenario (d) counts
statements and messages): both stacks run as a user runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from bench import harness
from bench.baselines import Baselines
from bench.harness import (
    RABBITMQ_URL,
    REDIS_URL,
    BenchSession,
    EmbeddedStack,
    Mode,
    PodiumStack,
    Service,
    log,
    ratio,
)

NAME = "floor"
TITLE = "(f) Against the floor: a direct run next to a minimal durable pipeline"
CONCURRENCY = 16
WARM = 20
ROLES = ("gateway", "orchestrator", "worker", "learner")
TARGET_CPU_X = 2.0
TARGET_COMPLETED_X = 0.6
TARGET_EMBEDDED_X = 0.4


class FloorStack:
    """The floor's four processes on a fresh database, a Redis prefix and a broker."""

    def __init__(self, session: BenchSession, *, broker: str, label: str) -> None:
        from bench.floor import create_schema

        self.session = session
        self.broker = broker
        self.database_url = session.new_database()
        self.dsn = self.database_url.replace("postgresql+psycopg://", "postgresql://")
        create_schema(self.dsn)
        self.prefix = session.new_prefix()
        self.port = harness.free_port()
        self.label = label
        self.env = harness.base_env()
        self.env.update(
            FLOOR_DATABASE_URL=self.dsn,
            FLOOR_BROKER_URL=REDIS_URL if broker == "redis" else RABBITMQ_URL,
            FLOOR_REDIS_URL=REDIS_URL,
            FLOOR_PREFIX=self.prefix,
            FLOOR_PORT=str(self.port),
        )
        if broker == "rabbitmq":
            from bench.floor import ROUTES, queue

            for role in set(ROUTES.values()):
                session.rabbit_queues.add(queue(role, self.prefix))
        self.services: dict[str, Service] = {}
        self._engine = create_engine(self.database_url, pool_size=1, max_overflow=1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, roles: tuple[str, ...] = ROLES) -> None:
        for role in roles:
            argv = [sys.executable, "-m", "bench.floor", role]
            self.services[role] = self.session.spawn(
                role, argv, self.env, log_name=f"{self.label}-{role}"
            )
        deadline = time.monotonic() + 60
        while True:
            for role, svc in self.services.items():
                if not svc.alive():
                    raise RuntimeError(f"floor {role} exited:\n{svc.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"floor gateway not ready:\n{self.services['gateway'].log_tail()}"
                )
            time.sleep(0.1)

    def post(self, n: int) -> None:
        asyncio.run(_post_floor(self.url, n))

    def postmortems(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM floor_postmortems")).scalar_one())

    def wait_postmortems(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.postmortems() < n:
            for role, svc in self.services.items():
                if not svc.alive():
                    raise RuntimeError(f"floor {role} died:\n{svc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the floor finished only {self.postmortems()} of {n} runs")
            time.sleep(0.1)

    def last_finished(self) -> float:
        with self._engine.connect() as conn:
            value = conn.execute(
                text("SELECT extract(epoch FROM max(finished_at)) FROM floor_runs")
            ).scalar_one()
        return float(value)

    def close(self) -> None:
        for svc in self.services.values():
            harness.stop_process(svc.popen)
        self._engine.dispose()
        self.session.clear_prefix(REDIS_URL, self.prefix)
        self.session.drop_database(self.database_url)


async def _post_floor(url: str, n: int) -> None:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        todo = iter(range(n))

        async def worker() -> None:
            for i in todo:
                response = await http.post("/runs", json={"input": f"bench #{i}"})
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def _cpu(services: dict[str, Service]) -> dict[str, float]:
    return {name: svc.cpu_s() for name, svc in services.items()}


def cpu_per_run(
    before_idle: dict[str, float],
    after_idle: dict[str, float],
    after_load: dict[str, float],
    idle_s: float,
    load_s: float,
    n: int,
) -> dict[str, Any]:
    """Per process and in all, ms of CPU per run: (load - idle x load_s / idle_s) / n."""
    scale = load_s / idle_s if idle_s > 0 else 0.0
    by_process = {
        name: round(
            ((after_load[name] - after_idle[name]) - (after_idle[name] - before_idle[name]) * scale)
            * 1000
            / n,
            2,
        )
        for name in after_load
    }
    return {"total_ms": round(sum(by_process.values()), 2), "by_process_ms": by_process}


def measure_floor(session: BenchSession, broker: str, n: int, idle_s: float) -> dict[str, Any]:
    stack = FloorStack(session, broker=broker, label=f"f-floor-{broker}")
    try:
        stack.start()
        stack.post(WARM)
        stack.wait_postmortems(WARM, 60)
        time.sleep(1)
        c0, t0 = _cpu(stack.services), time.monotonic()
        time.sleep(idle_s)
        c1, t1 = _cpu(stack.services), time.monotonic()
        since = time.time()
        stack.post(n)
        stack.wait_postmortems(WARM + n, 120 + n / 5)
        c2, t2 = _cpu(stack.services), time.monotonic()
        cpu = cpu_per_run(c0, c1, c2, t1 - t0, t2 - t1, n)
        completed = round(n / (stack.last_finished() - since), 1)
        log(
            f"(f) floor on {broker}: {cpu['total_ms']} ms CPU per run, {completed} runs/s completed"
        )
        return {"cpu_per_run": cpu, "completed_per_s": completed, "runs": n}
    finally:
        stack.close()


def _wait_postmortems(stack: PodiumStack, tenant_id: str, n: int, timeout: float) -> None:
    ok = stack.wait_until(
        "post-mortems",
        lambda: (
            int(stack.scalar("SELECT count(*) FROM postmortems WHERE tenant_id = :t", t=tenant_id))
            >= n
        ),
        timeout=timeout,
        interval=0.1,
        watch=tuple(stack.services),
    )
    if not ok:
        raise RuntimeError(f"Podium did not finish {n} runs in {timeout:.0f}s")


def measure_podium(session: BenchSession, broker: str, n: int, idle_s: float) -> dict[str, Any]:
    stack = PodiumStack(session, label=f"f-podium-{broker}", broker=broker)
    try:
        stack.start_all()
        tenant = stack.create_tenant("floor")
        threads = harness.create_threads(stack.url, tenant.key, n + WARM, CONCURRENCY)
        harness.post_runs(stack.url, tenant.key, threads[:WARM], concurrency=CONCURRENCY)
        _wait_postmortems(stack, tenant.id, WARM, 60)
        time.sleep(1)
        c0, t0 = _cpu(stack.services), time.monotonic()
        time.sleep(idle_s)
        c1, t1 = _cpu(stack.services), time.monotonic()
        since = time.time()
        load = harness.post_runs(stack.url, tenant.key, threads[WARM:], concurrency=CONCURRENCY)
        _wait_postmortems(stack, tenant.id, WARM + n, 120 + n / 5)
        c2, t2 = _cpu(stack.services), time.monotonic()
        cpu = cpu_per_run(c0, c1, c2, t1 - t0, t2 - t1, n)
        ids = {p.run_id for p in load.posts if p.run_id}
        runs = [r for rid, r in stack.runs_by_id(tenant.id).items() if rid in ids]
        finished = [r[1] for r in runs if r[1] is not None]
        completed = round(len(finished) / (max(finished) - since), 1) if finished else None
        statuses: dict[str, int] = {}
        for r in runs:
            statuses[r[2]] = statuses.get(r[2], 0) + 1
        log(
            f"(f) podium on {broker}: {cpu['total_ms']} ms CPU per run, {completed} runs/s "
            f"completed ({statuses})"
        )
        return {
            "cpu_per_run": cpu,
            "completed_per_s": completed,
            "runs": n,
            "statuses": statuses,
            "settings": stack.settings,
        }
    finally:
        stack.close()


def measure_embedded(session: BenchSession, n: int) -> dict[str, Any]:
    stack = EmbeddedStack(session, label="f-embedded")
    try:
        svc = stack.start()
        tenant = stack.create_tenant("floor")
        threads = harness.create_threads(stack.url, tenant.key, n + WARM, CONCURRENCY)
        harness.post_runs(stack.url, tenant.key, threads[:WARM], concurrency=CONCURRENCY)
        deadline = time.monotonic() + 120
        while stack.count_runs(tenant.id) < WARM and time.monotonic() < deadline:
            time.sleep(0.1)
        since = time.time()
        load = harness.post_runs(stack.url, tenant.key, threads[WARM:], concurrency=CONCURRENCY)
        deadline = time.monotonic() + 120 + n / 5
        while stack.count_runs(tenant.id) < n + WARM and time.monotonic() < deadline:
            if not svc.alive():
                raise RuntimeError(f"podium dev died:\n{svc.log_tail()}")
            time.sleep(0.1)
        ids = {p.run_id for p in load.posts if p.run_id}
        rows = stack.rows(
            "SELECT id, finished_at FROM runs WHERE tenant_id = :t AND finished_at IS NOT NULL",
            t=tenant.id,
        )
        finished = [harness._epoch(r[1]) for r in rows if str(r[0]) in ids]
        completed = round(len(finished) / (max(finished) - since), 1) if finished else None
        log(f"(f) podium dev (sqlite): {completed} runs/s completed")
        return {"completed_per_s": completed, "runs": n, "completed": len(finished)}
    finally:
        stack.close()


def run(
    session: BenchSession, mode: Mode, baselines: Baselines, brokers: list[str] | None = None
) -> dict[str, Any]:
    del baselines  # the floor is this scenario's own baseline
    started = time.monotonic()
    n = mode.pick(300, 1000)
    idle_s = mode.pick(4.0, 10.0)
    brokers = brokers or ["redis", *(["rabbitmq"] if harness.rabbit_available() else [])]
    figures: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    notes: list[str] = []
    for broker in brokers:
        floor = measure_floor(session, broker, n, idle_s)
        podium = measure_podium(session, broker, n, idle_s)
        baseline[broker] = floor
        figures[broker] = podium
        ratios[broker] = {
            "cpu_per_run_vs_floor": ratio(
                podium["cpu_per_run"]["total_ms"], floor["cpu_per_run"]["total_ms"]
            ),
            "completed_per_s_vs_floor": ratio(podium["completed_per_s"], floor["completed_per_s"]),
        }
        if broker == "redis":
            targets += [
                harness.target(
                    "CPU per direct run vs the floor's (redis, postgresql)",
                    ratios[broker]["cpu_per_run_vs_floor"],
                    "<=",
                    TARGET_CPU_X,
                    "x",
                ),
                harness.target(
                    "completed direct runs/s vs the floor's (postgresql, mixed)",
                    ratios[broker]["completed_per_s_vs_floor"],
                    ">=",
                    TARGET_COMPLETED_X,
                    "x",
                ),
            ]
        else:
            notes.append(
                f"{broker}: CPU per run {ratios[broker]['cpu_per_run_vs_floor']}x the floor's "
                f"on {broker} (measured, no target)"
            )
    if "redis" in baseline:
        embedded = measure_embedded(session, n)
        figures["embedded"] = embedded
        ratios["embedded"] = {
            "completed_per_s_vs_floor": ratio(
                embedded["completed_per_s"], baseline["redis"]["completed_per_s"]
            )
        }
        targets.append(
            harness.target(
                "embedded (podium dev, sqlite) completed runs/s vs the floor's",
                ratios["embedded"]["completed_per_s_vs_floor"],
                ">=",
                TARGET_EMBEDDED_X,
                "x",
            )
        )
    return harness.scenario_result(
        NAME,
        TITLE,
        settings={
            "runs": n,
            "idle_window_s": idle_s,
            "client_concurrency": CONCURRENCY,
            "pattern": "direct",
            "simulated_latency_ms": 0,
            "brokers": brokers,
        },
        baseline=baseline,
        figures=figures,
        ratios=ratios,
        targets=targets,
        notes=notes,
        started=started,
    )


def main() -> int:
    from bench.run import emit

    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--brokers", default="", help="comma-separated: redis,rabbitmq")
    parser.add_argument(
        "--output", type=Path, help="write the result there instead of bench/results/latest.json"
    )
    args = parser.parse_args()
    mode = Mode(full=args.full)
    brokers = [b for b in args.brokers.split(",") if b] or None
    with BenchSession() as session:
        result = run(session, mode, Baselines(session, mode), brokers)
    emit([result], mode, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
