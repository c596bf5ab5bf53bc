"""(a) Overhead per agent call, zero-latency simulated LLM, on Redis and on RabbitMQ.

    uv run --frozen python -m bench.scenario_overhead [--full] [--broker redis|rabbitmq]

Two measurements per broker, each on a fresh database:

1. **Calls/s** (compared with bare Celery's no-op drain rate): K direct runs are admitted
   and two orchestrators queue their K agent calls while no agent-worker runs; gateway and
   orchestrators are then stopped, and one agent-worker (default pool and concurrency)
   drains the queue alone. Rate = K / (last call finished - first call started), from the
   ``agent_calls`` table: the same definition as the bare drain.
2. **Latency** (compared with bare Celery's round trip x hops): the whole stack runs, and N
   direct runs arrive at a low fixed rate (open loop, no queueing). From ``agent_calls``:
   call latency = finished_at - created_at, one broker hop (the orchestrator's dispatch; the
   call's commit plays the part of the bare reply). From ``runs``: run latency = finished_at
   - created_at, three hops (gateway -> orchestrator -> agent-worker -> orchestrator).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.baselines import Baselines
from bench.harness import BenchSession, Mode, PodiumStack, log, ratio, summary_ms

NAME = "overhead"
TITLE = "(a) Overhead per agent call (zero-latency simulated LLM)"
CALL_HOPS = 1
RUN_HOPS = 3
DRAIN_ENV = {
    # Every call is queued while no worker has announced its capacity (fair dispatcher).
    "PODIUM_DISPATCH_WINDOW": "1000000",
    # Queued calls are not re-sent by the reaper while the bench holds them.
    "PODIUM_REAPER_STALL_S": "600",
}


def drain(session: BenchSession, broker: str, n: int) -> dict[str, Any]:
    stack = PodiumStack(session, label=f"a-{broker}-drain", broker=broker, env=DRAIN_ENV)
    try:
        # Two orchestrators queue the calls faster; they are stopped before the drain.
        stack.start_dispatchers()
        tenant = stack.create_tenant("overhead")
        log(f"(a) {broker}: queueing {n} agent calls (no worker running)")
        queued, took = harness.dispatch_direct_calls(stack, tenant, n)
        log(f"(a) {broker}: {queued} calls queued in {took:.1f}s; one agent-worker drains them")
        stack.stop_dispatchers()
        worker = stack.start_worker(wait=False)
        sampler = harness.Sampler({"agent-worker": worker})
        stack.wait_until(
            "drain",
            lambda: stack.count_calls(tenant.id, terminal=True) >= n,
            timeout=120 + n / 20,
            watch=("agent-worker",),
        )
        usage = sampler.stop()
        calls = stack.call_times(tenant.id)
        stack.stop("agent-worker")
        starts = [c[1] for c in calls if c[1] is not None]
        ends = [c[2] for c in calls if c[2] is not None]
        elapsed = max(ends) - min(starts)
        statuses: dict[str, int] = {}
        for c in calls:
            statuses[c[3]] = statuses.get(c[3], 0) + 1
        return {
            "calls": len(ends),
            "statuses": statuses,
            "elapsed_s": round(elapsed, 3),
            "calls_per_s": round(len(ends) / elapsed, 1),
            "worker": usage["agent-worker"],
            "settings": stack.settings,
        }
    finally:
        stack.close()


def latency(session: BenchSession, broker: str, n: int, rate: float) -> dict[str, Any]:
    stack = PodiumStack(session, label=f"a-{broker}-latency", broker=broker)
    try:
        stack.start_all()
        tenant = stack.create_tenant("latency")
        threads = harness.create_threads(stack.url, tenant.key, n + 20)
        log(f"(a) {broker}: warm-up")
        harness.post_runs(stack.url, tenant.key, threads[:20], rate=rate)
        stack.wait_until(
            "warm-up runs",
            lambda: stack.count_runs(tenant.id) >= 20,
            timeout=120,
            watch=tuple(stack.services),
        )
        since = time.time()
        log(f"(a) {broker}: {n} runs at {rate:g} runs/s")
        sampler = harness.Sampler(dict(stack.services))
        load = harness.post_runs(stack.url, tenant.key, threads[20:], rate=rate)
        stack.wait_until(
            "runs",
            lambda: stack.count_runs(tenant.id) >= n + 20,
            timeout=120 + n / 10,
            watch=tuple(stack.services),
        )
        usage = sampler.stop()
        calls = [c for c in stack.call_times(tenant.id) if c[0] >= since and c[2] is not None]
        runs = [r for r in stack.run_times(tenant.id) if r[0] >= since and r[1] is not None]
        return {
            "runs": len(runs),
            "rate_runs_per_s": rate,
            "run_statuses": {s: sum(1 for r in runs if r[2] == s) for s in {r[2] for r in runs}},
            "call_latency": summary_ms([c[2] - c[0] for c in calls if c[2] is not None]),
            "call_queue_wait": summary_ms([c[1] - c[0] for c in calls if c[1] is not None]),
            "call_execution": summary_ms(
                [c[2] - c[1] for c in calls if c[1] is not None and c[2] is not None]
            ),
            "run_latency": summary_ms([r[1] - r[0] for r in runs if r[1] is not None]),
            "post_latency": summary_ms([p.latency_s for p in load.posts]),
            "processes": usage,
        }
    finally:
        stack.close()


def run(session: BenchSession, mode: Mode, baselines: Baselines, brokers: list[str]) -> dict:
    started = time.monotonic()
    n_drain = mode.pick(300, 3000)
    n_latency = mode.pick(100, 500)
    rate = 20.0
    figures: dict[str, Any] = {}
    base: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    notes: list[str] = []
    for broker in brokers:
        if broker == "rabbitmq" and not harness.rabbit_available():
            notes.append("RabbitMQ not reachable: its half of the scenario was skipped")
            continue
        b = baselines.broker(broker)
        base[broker] = b
        try:
            d = drain(session, broker, n_drain)
            lat = latency(session, broker, n_latency, rate)
        except Exception as exc:
            # One broker failing must not lose the other's figures.
            log(f"(a) {broker} failed: {exc!r}")
            figures[broker] = {"error": repr(exc)[-2000:]}
            targets.append(harness.target(f"{broker} half ran", None, ">=", 1))
            continue
        figures[broker] = {"drain": d, "latency": lat}
        rtt50, rtt99 = b["round_trip"]["p50_ms"], b["round_trip"]["p99_ms"]
        r = {
            "calls_per_s_vs_bare_drain": ratio(d["calls_per_s"], b["drain"]["drain_per_s"]),
            "call_p50_vs_rtt_x_hops": ratio(lat["call_latency"].get("p50_ms"), rtt50 * CALL_HOPS),
            "call_p99_vs_rtt_x_hops": ratio(lat["call_latency"].get("p99_ms"), rtt99 * CALL_HOPS),
            "run_p50_vs_rtt_x_hops": ratio(lat["run_latency"].get("p50_ms"), rtt50 * RUN_HOPS),
            "run_p99_vs_rtt_x_hops": ratio(lat["run_latency"].get("p99_ms"), rtt99 * RUN_HOPS),
        }
        ratios[broker] = r
        targets.append(
            harness.target(
                f"calls/s vs bare no-op drain ({broker})",
                r["calls_per_s_vs_bare_drain"],
                ">=",
                0.4,
                "x",
            )
        )
        targets.append(
            harness.target(
                f"call p50 vs bare round trip x {CALL_HOPS} hop ({broker})",
                r["call_p50_vs_rtt_x_hops"],
                "<=",
                2.0,
                "x",
            )
        )
        log(
            f"(a) {broker}: {d['calls_per_s']:.0f} calls/s "
            f"({r['calls_per_s_vs_bare_drain']}x bare), call p50 "
            f"{lat['call_latency'].get('p50_ms')} ms ({r['call_p50_vs_rtt_x_hops']}x rtt)"
        )
    if "drain" in figures.get("redis", {}) and "drain" in figures.get("rabbitmq", {}):
        red, rab = figures["redis"], figures["rabbitmq"]
        figures["rabbitmq_vs_redis"] = {
            "calls_per_s": ratio(rab["drain"]["calls_per_s"], red["drain"]["calls_per_s"]),
            "call_p50": ratio(
                rab["latency"]["call_latency"].get("p50_ms"),
                red["latency"]["call_latency"].get("p50_ms"),
            ),
            "bare_drain": ratio(
                base["rabbitmq"]["drain"]["drain_per_s"], base["redis"]["drain"]["drain_per_s"]
            ),
        }
    return harness.scenario_result(
        NAME,
        TITLE,
        settings={
            "calls_drained": n_drain,
            "latency_runs": n_latency,
            "latency_rate_runs_per_s": rate,
            "call_hops": CALL_HOPS,
            "run_hops": RUN_HOPS,
            "simulated_latency_ms": 0,
            "worker": "one agent-worker, default pool (threads) and concurrency",
            "drain_env": DRAIN_ENV,
        },
        baseline=base,
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
    parser.add_argument(
        "--output", type=Path, help="write the result there instead of bench/results/latest.json"
    )
    parser.add_argument("--broker", action="append", choices=("redis", "rabbitmq"))
    args = parser.parse_args()
    mode = Mode(full=args.full)
    with BenchSession() as session:
        result = run(session, mode, Baselines(session, mode), args.broker or ["redis", "rabbitmq"])
    emit([result], mode, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
