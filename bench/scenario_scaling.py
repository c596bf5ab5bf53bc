"""(e) Scaling curve: completed agent calls/s with 1, 2 and 4 agent-worker processes.

    uv run --frozen python -m bench.scenario_scaling [--full] [--workers 1 --workers 2 ...]

K x 3 direct runs are admitted and their agent calls queued (two orchestrators, no worker,
zero-latency simulated LLM), then gateway and orchestrators are stopped and the queue moved
aside. For each worker count N: K calls are moved to a held list while the N workers
(threads pool, default concurrency) start, then put on the queue at once (Redis RENAME), so
all N see them at the same moment. Rate = K / (last call finished - queue put back), from
``agent_calls``.

CPU of each worker, of the PostgreSQL backends of the bench database and of Redis is
sampled meanwhile, to show where the bottleneck is. The baseline is bare Celery draining
no-op tasks with the same N worker processes (the same RENAME start).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench import baseline_celery, harness
from bench.baselines import Baselines
from bench.harness import BenchSession, Mode, PodiumStack, log, ratio

NAME = "scaling"
TITLE = "(e) Scaling curve: agent calls/s with 1, 2 and 4 worker processes"
DRAIN_ENV = {"PODIUM_DISPATCH_WINDOW": "1000000", "PODIUM_REAPER_STALL_S": "600"}


def podium_drains(session: BenchSession, counts: list[int], k: int) -> dict[str, Any]:
    """One stack: k x len(counts) calls queued once, then moved aside; for each worker
    count N, k of them are put back at once for N workers started beforehand."""
    stack = PodiumStack(session, label="e", env=DRAIN_ENV)
    out: dict[str, Any] = {}
    try:
        # Two orchestrators queue the calls faster; they are stopped before the drain.
        stack.start_dispatchers()
        tenant = stack.create_tenant("scaling")
        queued, took = harness.dispatch_direct_calls(stack, tenant, k * len(counts))
        log(f"(e) {queued} calls queued in {took:.1f}s")
        stack.stop_dispatchers()
        stack.move_messages("agents.default", "agents.default.bench-all")
        database = stack.database_url.rsplit("/", 1)[1]
        done_before = 0
        for workers in counts:
            stack.move_messages("agents.default.bench-all", "agents.default.bench-hold", k)
            names = [f"agent-worker-{workers}-{i + 1}" for i in range(workers)]
            for name in names:
                stack.start_worker(name, wait=False)
            for name in names:
                stack.wait_ready(name)
            time.sleep(2.0)  # past the metrics endpoint: Celery's consumer is up too
            sampler = harness.Sampler({n: stack.services[n] for n in names})
            servers = harness.ServerSampler(database)
            released = time.time()
            stack.hold_queue("agents.default", hold=False)
            target = done_before + k
            stack.wait_until(
                "drain",
                lambda target=target: stack.count_calls(tenant.id, terminal=True) >= target,
                timeout=120 + k / 10,
                interval=0.2,
                watch=tuple(names),
            )
            usage = sampler.stop()
            server_usage = servers.stop()
            stack.stop(*names)
            done_before = stack.count_calls(tenant.id, terminal=True)
            calls = stack.call_times(tenant.id, since=released - 0.5)
            ends = sorted(c[2] for c in calls if c[2] is not None)
            elapsed = ends[-1] - released
            # The middle 80 % of completions: the rate without start and tail effects.
            lo, hi = ends[len(ends) // 10], ends[(len(ends) * 9) // 10]
            steady = (len(ends) * 0.8) / (hi - lo) if hi > lo else None
            out[str(workers)] = {
                "workers": workers,
                "calls": len(ends),
                "elapsed_s": round(elapsed, 3),
                "calls_per_s": round(len(ends) / elapsed, 1),
                "steady_calls_per_s": None if steady is None else round(steady, 1),
                "processes": usage,
                "servers": server_usage,
                "worker_cpu_cores_total": round(sum(u["cpu_cores"] for u in usage.values()), 2),
            }
            f = out[str(workers)]
            log(
                f"(e) podium: {f['calls_per_s']} calls/s with {workers} worker(s) "
                f"(workers {f['worker_cpu_cores_total']} cores, "
                f"postgres {server_usage.get('postgresql_cpu_cores')}, "
                f"redis {server_usage.get('redis_cpu_cores')}, "
                f"machine {server_usage.get('machine_busy_cores')})"
            )
        return out
    finally:
        stack.close()


def run(
    session: BenchSession, mode: Mode, baselines: Baselines, counts: list[int] | None = None
) -> dict[str, Any]:
    started = time.monotonic()
    counts = counts or [1, 2, 4]
    k = mode.pick(300, 2000)
    k_bare = mode.pick(2000, 10000)
    figures: dict[str, Any] = {}
    base: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    bare = baseline_celery.Baseline(session, "redis")
    try:
        for n in counts:
            log(f"(e) bare Celery: {n} worker(s)")
            base[str(n)] = bare.scaled_drain(n, k_bare)
            log(f"(e) bare Celery: {base[str(n)]['drain_per_s']} tasks/s with {n} worker(s)")
    finally:
        bare.close()
    figures.update(podium_drains(session, counts, k))
    one = figures[str(counts[0])]["calls_per_s"]
    bare_one = base[str(counts[0])]["drain_per_s"]
    for n in counts:
        f, b = figures[str(n)], base[str(n)]
        ratios[str(n)] = {
            "calls_per_s_vs_bare_same_workers": ratio(f["calls_per_s"], b["drain_per_s"]),
            "speedup": ratio(f["calls_per_s"], one),
            "scaling_efficiency": ratio(f["calls_per_s"], one * n / counts[0]),
            "bare_speedup": ratio(b["drain_per_s"], bare_one),
        }
    return harness.scenario_result(
        NAME,
        TITLE,
        settings={
            "calls_per_point": k,
            "bare_tasks_per_point": k_bare,
            "worker_counts": counts,
            "worker": "threads pool, default concurrency, zero-latency simulated LLM",
            "drain_env": DRAIN_ENV,
        },
        baseline=base,
        figures=figures,
        ratios=ratios,
        targets=[],
        notes=[
            "Recorded as measured on this machine: workers, PostgreSQL, Redis and the bench "
            "share its cores, so the curve flattens once they are all busy.",
        ],
        started=started,
    )


def main() -> int:
    from bench.run import emit

    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--full", action="store_true")
    parser.add_argument(
        "--output", type=Path, help="write the result there instead of bench/results/latest.json"
    )
    parser.add_argument("--workers", action="append", type=int)
    args = parser.parse_args()
    mode = Mode(full=args.full)
    with BenchSession() as session:
        result = run(session, mode, Baselines(session, mode), args.workers)
    emit([result], mode, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
