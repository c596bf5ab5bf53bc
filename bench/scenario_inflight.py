"""(b) In-flight concurrency of one agent-worker process: simulated latency 1 s, streaming.

    uv run --frozen python -m bench.scenario_inflight [--full] [--pool threads --pool gevent]

For each concurrency c, on a fresh database and Redis prefix, the calls the level needs are
queued first (parallel_team runs whose team has 25 members, merged by concatenation, so one
orchestrator step queues 25 calls; two orchestrators; no worker running). Gateway and
orchestrators are then stopped, and for each pool (threads, gevent) one agent-worker with
c slots consumes the queue for one latency plus a window and is stopped (warm shutdown);
the queue never runs dry meanwhile. (A fresh stack per level: a stopped worker's capacity
announcement outlives it for 30 s, and the fair dispatcher would hold new calls back.)

Efficiency = completions per second in the steady window (from one latency after the
worker's first call started, to its stop) / (c / latency). RSS is the peak VmRSS of the
worker's process group during the segment. Every agent call streams (token deltas batched
into the run's Redis stream) and checks for cancellation, as in production.

The baseline is bare Celery with the same pool and c, each task a ``time.sleep(latency)``.
gevent needs the ``gevent`` package: without it the gevent half is reported as not installed
(the bench never installs packages). Celery's gevent pool also needs monkey-patching before
anything is imported: ``bench/gevent_worker.py`` does that for the agent-worker.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from bench import harness
from bench.baselines import Baselines
from bench.harness import BenchSession, Mode, PodiumStack, log, ratio

NAME = "inflight"
TITLE = "(b) In-flight concurrency of one worker process (latency 1 s, streaming)"
LATENCY_S = 1.0
TEAM = ["assistant", "researcher", "coder", "critic", "planner"] * 5
TARGET_C = 400
TARGET_EFFICIENCY = 0.9
TARGET_RSS_MB = 150.0


def gevent_installed() -> bool:
    return importlib.util.find_spec("gevent") is not None


def team_patterns(session: BenchSession) -> str:
    """The shipped patterns file with a 25-member parallel team merged by concatenation."""
    raw = yaml.safe_load((files("podium") / "patterns.yaml").read_text())
    options = raw["patterns"]["parallel_team"].setdefault("options", {})
    options["default_team"] = TEAM
    options["merge"] = "concat"
    path = session.workdir / "patterns-team25.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def queue_calls(stack: PodiumStack, tenant: harness.Tenant, need: int) -> None:
    """Queue ``need`` calls: admit enough 25-member parallel_team runs, wait until their
    calls are all on the queue (two orchestrators, no worker)."""
    runs = math.ceil(need / len(TEAM))
    t = time.monotonic()
    threads = harness.create_threads(stack.url, tenant.key, runs)
    load = harness.post_runs(
        stack.url, tenant.key, threads, body={"input": "bench team", "pattern": "parallel_team"}
    )
    bad = {k: v for k, v in load.statuses().items() if k != "202"}
    if bad:
        raise RuntimeError(f"run admission refused some runs: {bad}")
    harness.wait_queued(stack, tenant, runs * len(TEAM))
    log(f"(b) queued {runs * len(TEAM)} calls in {time.monotonic() - t:.1f}s")


def pending_calls(stack: PodiumStack, tenant: harness.Tenant) -> int:
    return int(
        stack.scalar(
            "SELECT count(*) FROM agent_calls WHERE tenant_id = :t AND status = 'pending'",
            t=tenant.id,
        )
    )


def segment(
    stack: PodiumStack, tenant: harness.Tenant, pool: str, c: int, window_s: float
) -> dict[str, Any]:
    """One worker with c slots consumes the queue for one latency plus ``window_s``."""
    launched = time.time()
    worker = stack.start_worker(f"worker-{pool}-{c}", pool=pool, concurrency=c, wait=False)
    sampler = harness.Sampler({"worker": worker}, interval=0.2)
    first: float | None = None

    def started() -> bool:
        nonlocal first
        value = stack.scalar(
            "SELECT extract(epoch from min(started_at)) FROM agent_calls "
            "WHERE tenant_id = :t AND started_at >= to_timestamp(:s)",
            t=tenant.id,
            s=launched,
        )
        first = None if value is None else float(value)
        return first is not None

    stack.wait_until(
        f"worker {pool} c={c} to start", started, timeout=90, interval=0.1, watch=(worker.name,)
    )
    if first is None:
        raise RuntimeError(f"worker {pool} c={c} never started a call:\n{worker.log_tail()}")
    stop_at = first + LATENCY_S + window_s
    time.sleep(max(0.0, stop_at - time.time()))
    stop_at = time.time()
    # Calls not yet claimed (queued, or prefetched by the worker): work it still had.
    unclaimed = pending_calls(stack, tenant)
    usage = sampler.stop()
    t = time.monotonic()
    stack.stop(worker.name, timeout=60)
    shutdown_s = time.monotonic() - t
    calls = stack.call_times(tenant.id, since=launched)
    intervals = [(s, e) for _, s, e, _ in calls if s is not None and e is not None]
    statuses: dict[str, int] = {}
    for call in calls:
        statuses[call[3]] = statuses.get(call[3], 0) + 1
    figures: dict[str, Any] = dict(
        harness.inflight_efficiency(intervals, c, LATENCY_S, stop_at=stop_at)
    )
    figures.update(
        peak_rss_mb=usage["worker"]["peak_rss_mb"],
        cpu_cores=usage["worker"]["cpu_cores"],
        unclaimed_at_stop=unclaimed,
        claimed=len(calls),
        statuses=statuses,
        warm_shutdown_s=round(shutdown_s, 1),
        startup_s=round(first - launched, 2),
    )
    if unclaimed == 0:
        figures["warning"] = "the queue ran dry during the window"
    return figures


def run(
    session: BenchSession,
    mode: Mode,
    baselines: Baselines,
    pools: list[str] | None = None,
    levels: list[int] | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    levels = levels or [50, 200, 400, 1000]
    # The steady window is a whole number of latencies from half a latency after the first
    # start: 1.5 s after one latency gives 2 latencies (quick), 4 s gives 4 (full).
    window_s = mode.pick(1.5, 4.0)
    bare_rounds = mode.pick(3, 6)
    pools = pools or ["threads", "gevent"]
    notes: list[str] = []
    runnable = [p for p in pools if p != "gevent" or gevent_installed()]
    if "gevent" in pools and "gevent" not in runnable:
        notes.append(
            "gevent: not installed (add it to the agent-worker's dependencies to measure it)"
        )
    env = {
        "PODIUM_DISPATCH_WINDOW": "1000000",
        "PODIUM_REAPER_STALL_S": "600",
        "PODIUM_PATTERNS_FILE": team_patterns(session),
    }
    figures: dict[str, Any] = {p: {} for p in pools}
    base: dict[str, Any] = {p: {} for p in pools}
    ratios: dict[str, Any] = {p: {} for p in pools}
    best_rate = 0.0
    settings: dict[str, str] = {}
    for c in levels:
        # What a segment claims: ~ its slots (bounded by what the workers so far showed
        # they can start) over one latency, the window and the shutdown; plus c more so
        # every slot can hold a message. Only that is queued: queueing is the slow part.
        slots = c if best_rate == 0 else min(c, max(50, int(3 * best_rate * LATENCY_S)))
        per_pool = int(slots * (2 + window_s / LATENCY_S) * 1.2) + 20
        stack = PodiumStack(session, label=f"b-{c}", latency_ms=LATENCY_S * 1000, env=env)
        try:
            stack.start_dispatchers()
            tenant = stack.create_tenant("inflight")
            queue_calls(stack, tenant, c + per_pool * len(runnable))
            stack.stop_dispatchers()
            for pool in pools:
                if pool not in runnable:
                    figures[pool][str(c)] = {"status": "not installed"}
                    continue
                log(f"(b) {pool} c={c}: one worker, window {window_s:g}s")
                seg = segment(stack, tenant, pool, c, window_s)
                figures[pool][str(c)] = seg
                best_rate = max(best_rate, float(seg.get("achieved_per_s") or 0))
                log(
                    f"(b) {pool} c={c}: efficiency {seg['efficiency']}, "
                    f"RSS {seg['peak_rss_mb']:.0f} MB, CPU {seg['cpu_cores']} cores"
                    + (f" ({seg['warning']})" if "warning" in seg else "")
                )
                bare = baselines.inflight(pool, c, LATENCY_S, bare_rounds)
                base[pool][str(c)] = bare
                ratios[pool][str(c)] = {
                    "efficiency_vs_bare": ratio(seg["efficiency"], bare["efficiency"]),
                    "rss_vs_bare": ratio(seg["peak_rss_mb"], bare["peak_rss_mb"]),
                }
            settings = stack.settings
        finally:
            stack.close()
    targets: list[dict[str, Any]] = []
    candidates: dict[str, float] = {}
    for pool in runnable:
        seg = figures[pool].get(str(TARGET_C))
        if not seg:
            continue
        targets.append(
            harness.target(
                f"efficiency at c={TARGET_C} ({pool})", seg["efficiency"], ">=", TARGET_EFFICIENCY
            )
        )
        targets.append(
            harness.target(
                f"worker RSS at c={TARGET_C} ({pool})",
                seg["peak_rss_mb"],
                "<=",
                TARGET_RSS_MB,
                " MB",
            )
        )
        if seg["peak_rss_mb"] <= TARGET_RSS_MB and not math.isnan(seg["efficiency"]):
            candidates[pool] = seg["efficiency"]
    winner = max(candidates, key=lambda p: candidates[p]) if candidates else None
    figures["winner"] = winner
    if winner and len(runnable) < 2:
        notes.append(f"{winner} is the only pool measured: it wins by default")
    return harness.scenario_result(
        NAME,
        TITLE,
        settings={
            "latency_s": LATENCY_S,
            "levels": levels,
            "pools": pools,
            "window_s": window_s,
            "bare_rounds": bare_rounds,
            "team_size": len(TEAM),
            "stack": settings,
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
    parser.add_argument("--pool", action="append", choices=("threads", "gevent"))
    parser.add_argument("--level", action="append", type=int)
    args = parser.parse_args()
    mode = Mode(full=args.full)
    with BenchSession() as session:
        result = run(session, mode, Baselines(session, mode), args.pool, args.level)
    emit([result], mode, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
