"""(c) End to end over HTTP: run admission and completed ``direct`` runs, on PostgreSQL
(every service its own process, Redis broker) and on SQLite (``podium dev``: one process).

    uv run --frozen python -m bench.scenario_http [--full] [--store postgresql|sqlite]

Zero-latency simulated LLM. Clients: async httpx, closed loop with 16 connections, one run
per thread (threads are created beforehand and not timed). Phases on PostgreSQL:

1. **admission, gateway alone**: only the gateway runs, N runs are POSTed; admission rate =
   accepted / elapsed, and the POST latency percentiles (the target's figures);
2. **backlog**: orchestrator, agent-worker and learner start and complete the N queued
   runs; completed runs/s = N / (last run finished - first run started);
3. **mixed** (the target's completed runs/s): everything runs while M more runs are POSTed;
   admission rate and POST latency under load, and completed runs/s = M / (last run finished
   - first POST).

On SQLite only the mixed phase exists (one process does everything).
Baselines: bare Celery's publish rate (one client publishing tasks back to back) for the
admission rate, and its no-op drain rate / 3 (a direct run is three task executions:
orchestrator, agent-worker, orchestrator) for completed runs/s. For scale, the floor's own
gateway (bench/floor.py: one INSERT and an outbox row per run, no auth, quotas or events)
is measured alone the same way, with the same client: what admission costs on this machine
before anything Podium adds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.baselines import Baselines
from bench.harness import BenchSession, EmbeddedStack, Mode, PodiumStack, log, ratio, summary_ms
from bench.scenario_floor import FloorStack

NAME = "http"
TITLE = "(c) End to end over HTTP (direct runs, zero-latency simulated LLM)"
CONCURRENCY = 16
RUN_TASKS = 3
# Admission with the gateway alone, against bare Celery's publish rate from one client.
TARGET_ADMISSION_X = 0.25
TARGET_POST_P99_MS = 50.0
# Completed runs/s are held against the floor, in scenario (f).


def admission(load: harness.LoadResult) -> dict[str, Any]:
    accepted = load.accepted
    return {
        "posted": len(load.posts),
        "statuses": load.statuses(),
        "elapsed_s": round(load.elapsed_s, 3),
        "admitted_per_s": round(len(accepted) / load.elapsed_s, 1) if load.elapsed_s else None,
        "post_latency": summary_ms([p.latency_s for p in load.posts]),
    }


def completion(runs: list[tuple[float, float | None, str]], since: float) -> dict[str, Any]:
    done = [r for r in runs if r[1] is not None]
    if not done:
        return {"completed": 0}
    last = max(r[1] for r in done if r[1] is not None)
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    return {
        "runs": len(runs),
        "statuses": statuses,
        "elapsed_s": round(last - since, 3),
        "completed_per_s": round(len(done) / (last - since), 1),
        "run_latency": summary_ms([r[1] - r[0] for r in done if r[1] is not None]),
    }


def floor_admission(session: BenchSession, n: int) -> dict[str, Any]:
    """The floor's gateway alone (nothing consumes what it publishes), POSTed as Podium's."""
    floor = FloorStack(session, broker="redis", label="c-floor")
    try:
        floor.start(roles=("gateway",))
        ids = [str(i) for i in range(n + 20)]
        harness.post_runs(floor.url, "unused", ids[:20], concurrency=CONCURRENCY, route="/runs")
        sampler = harness.Sampler(dict(floor.services))
        load = harness.post_runs(
            floor.url, "unused", ids[20:], concurrency=CONCURRENCY, route="/runs"
        )
        phase = admission(load)
        phase["processes"] = sampler.stop()
        log(
            f"(c) the floor's gateway alone: {phase['admitted_per_s']} runs/s admitted, POST p99 "
            f"{phase['post_latency'].get('p99_ms')} ms"
        )
        return phase
    finally:
        floor.close()


def postgresql(session: BenchSession, n: int, m: int) -> dict[str, Any]:
    stack = PodiumStack(session, label="c-pg")
    try:
        stack.start_gateway()
        tenant = stack.create_tenant("http")
        threads = harness.create_threads(stack.url, tenant.key, n + m + 20, CONCURRENCY)
        # Warm the gateway (connections, caches) before timing it.
        harness.post_runs(stack.url, tenant.key, threads[:20], concurrency=CONCURRENCY)
        log(f"(c) postgresql: admission of {n} runs, gateway alone")
        sampler = harness.Sampler(dict(stack.services))
        alone = harness.post_runs(
            stack.url, tenant.key, threads[20 : 20 + n], concurrency=CONCURRENCY
        )
        usage_alone = sampler.stop()
        phase1 = admission(alone)
        phase1["processes"] = usage_alone
        log(
            f"(c) postgresql: {phase1['admitted_per_s']} runs/s admitted, POST p99 "
            f"{phase1['post_latency'].get('p99_ms')} ms; backlog drain"
        )
        stack.start("orchestrator", "podium_orchestrator", wait=False)
        stack.start("learner", "podium_learner", wait=False)
        stack.start_worker(wait=False)
        sampler = harness.Sampler(dict(stack.services))
        stack.wait_until(
            "backlog",
            lambda: stack.count_runs(tenant.id) >= n + 20,
            timeout=120 + n / 5,
            interval=0.5,
            watch=tuple(stack.services),
        )
        usage_backlog = sampler.stop()
        backlog_ids = {p.run_id for p in alone.posts if p.run_id}
        first_started = stack.scalar(
            "SELECT extract(epoch from min(started_at)) FROM runs WHERE tenant_id = :t",
            t=tenant.id,
        )
        by_id = stack.runs_by_id(tenant.id)
        backlog_runs = [r for rid, r in by_id.items() if rid in backlog_ids]
        phase2 = completion(backlog_runs, float(first_started))
        phase2.pop("run_latency", None)  # queueing time of a backlog: not a latency figure
        phase2["processes"] = usage_backlog
        log(f"(c) postgresql: backlog completed at {phase2.get('completed_per_s')} runs/s; mixed")
        since = time.time()
        sampler = harness.Sampler(dict(stack.services))
        mixed = harness.post_runs(stack.url, tenant.key, threads[20 + n :], concurrency=CONCURRENCY)
        stack.wait_until(
            "mixed runs",
            lambda: stack.count_runs(tenant.id) >= n + m + 20,
            timeout=120 + m / 5,
            interval=0.5,
            watch=tuple(stack.services),
        )
        usage_mixed = sampler.stop()
        phase3 = admission(mixed)
        mixed_ids = {p.run_id for p in mixed.posts if p.run_id}
        by_id = stack.runs_by_id(tenant.id)
        mixed_runs = [r for rid, r in by_id.items() if rid in mixed_ids]
        phase3.update(completion(mixed_runs, since))
        phase3["processes"] = usage_mixed
        log(
            f"(c) postgresql mixed: {phase3['admitted_per_s']} runs/s admitted (p99 "
            f"{phase3['post_latency'].get('p99_ms')} ms), {phase3.get('completed_per_s')} "
            "runs/s completed"
        )
        return {
            "admission_gateway_alone": phase1,
            "backlog": phase2,
            "mixed": phase3,
            "settings": stack.settings,
        }
    finally:
        stack.close()


def sqlite(session: BenchSession, m: int) -> dict[str, Any]:
    stack = EmbeddedStack(session, label="c-sqlite")
    try:
        svc = stack.start()
        tenant = stack.create_tenant("http")
        threads = harness.create_threads(stack.url, tenant.key, m + 20, CONCURRENCY)
        harness.post_runs(stack.url, tenant.key, threads[:20], concurrency=CONCURRENCY)
        deadline = time.monotonic() + 120
        while stack.count_runs(tenant.id) < 20 and time.monotonic() < deadline:
            time.sleep(0.25)
        log(f"(c) sqlite: {m} runs, mixed (one process)")
        since = time.time()
        sampler = harness.Sampler({"podium-dev": svc})
        mixed = harness.post_runs(stack.url, tenant.key, threads[20:], concurrency=CONCURRENCY)
        deadline = time.monotonic() + 120 + m / 5
        while stack.count_runs(tenant.id) < m + 20 and time.monotonic() < deadline:
            if not svc.alive():
                raise RuntimeError(f"podium dev died:\n{svc.log_tail()}")
            time.sleep(0.5)
        usage = sampler.stop()
        phase = admission(mixed)
        ids = {p.run_id for p in mixed.posts if p.run_id}
        rows = stack.rows(
            "SELECT id, created_at, finished_at, status FROM runs WHERE tenant_id = :t",
            t=tenant.id,
        )
        runs = [
            (harness._epoch(r[1]), None if r[2] is None else harness._epoch(r[2]), str(r[3]))
            for r in rows
            if str(r[0]) in ids
        ]
        phase.update(completion(runs, since))
        phase["processes"] = usage
        log(
            f"(c) sqlite: {phase['admitted_per_s']} runs/s admitted (p99 "
            f"{phase['post_latency'].get('p99_ms')} ms), {phase.get('completed_per_s')} runs/s "
            "completed"
        )
        return {"mixed": phase, "settings": stack.settings}
    finally:
        stack.close()


def run(
    session: BenchSession, mode: Mode, baselines: Baselines, stores: list[str] | None = None
) -> dict[str, Any]:
    started = time.monotonic()
    stores = stores or ["postgresql", "sqlite"]
    n = mode.pick(600, 3000)
    m = mode.pick(300, 2000)
    bare = baselines.broker("redis")
    base = {
        "broker": "redis",
        "publish_per_s": bare["drain"]["publish_per_s"],
        "drain_per_s": bare["drain"]["drain_per_s"],
        "runs_per_s_equivalent": round(bare["drain"]["drain_per_s"] / RUN_TASKS, 1),
        "round_trip": bare["round_trip"],
    }
    figures: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    if "postgresql" in stores:
        floor = floor_admission(session, n)
        pg = postgresql(session, n, m)
        figures["postgresql"] = pg
        figures["floor_admission_gateway_alone"] = floor
        alone, mixed = pg["admission_gateway_alone"], pg["mixed"]
        ratios["postgresql"] = {
            "admission_vs_bare_publish": ratio(alone["admitted_per_s"], base["publish_per_s"]),
            "admission_vs_floor_gateway": ratio(alone["admitted_per_s"], floor["admitted_per_s"]),
            "floor_gateway_admission_vs_bare_publish": ratio(
                floor["admitted_per_s"], base["publish_per_s"]
            ),
            "completed_vs_bare_drain_per_3_tasks": ratio(
                mixed.get("completed_per_s"), base["runs_per_s_equivalent"]
            ),
            "backlog_vs_bare_drain_per_3_tasks": ratio(
                pg["backlog"].get("completed_per_s"), base["runs_per_s_equivalent"]
            ),
        }
        targets += [
            harness.target(
                "admission, gateway alone, vs bare Celery's publish rate (postgresql)",
                ratios["postgresql"]["admission_vs_bare_publish"],
                ">=",
                TARGET_ADMISSION_X,
                "x",
            ),
            harness.target(
                "POST p99, gateway alone (postgresql)",
                alone["post_latency"].get("p99_ms"),
                "<=",
                TARGET_POST_P99_MS,
                " ms",
            ),
        ]
    if "sqlite" in stores:
        lite = sqlite(session, m)
        figures["sqlite"] = lite
        mixed = lite["mixed"]
        ratios["sqlite"] = {
            "admission_vs_bare_publish": ratio(mixed["admitted_per_s"], base["publish_per_s"]),
            "completed_vs_bare_drain_per_3_tasks": ratio(
                mixed.get("completed_per_s"), base["runs_per_s_equivalent"]
            ),
        }
        targets.append(
            harness.target(
                "POST p99, mixed (sqlite)",
                mixed["post_latency"].get("p99_ms"),
                "<=",
                TARGET_POST_P99_MS,
                " ms",
            )
        )
    return harness.scenario_result(
        NAME,
        TITLE,
        settings={
            "client_concurrency": CONCURRENCY,
            "admission_runs": n,
            "mixed_runs": m,
            "simulated_latency_ms": 0,
            "pattern": "direct",
        },
        baseline=base,
        figures=figures,
        ratios=ratios,
        targets=targets,
        started=started,
    )


def main() -> int:
    from bench.run import emit

    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--full", action="store_true")
    parser.add_argument(
        "--output", type=Path, help="write the result there instead of bench/results/latest.json"
    )
    parser.add_argument("--store", action="append", choices=("postgresql", "sqlite"))
    args = parser.parse_args()
    mode = Mode(full=args.full)
    with BenchSession() as session:
        result = run(session, mode, Baselines(session, mode), args.store)
    emit([result], mode, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
