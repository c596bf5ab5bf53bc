"""Send N runs concurrently to a running gateway and check every one end to end.

    uv run python bench/concurrent_runs.py --url http://127.0.0.1:8000 --admin-key KEY -n 100

Checks, through the HTTP API only: every run reaches `completed`, each has exactly one agent
message and one decision with a rationale, and the learner wrote a post-mortem for each.
Exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import time
import uuid

from podium.client import PodiumClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("-n", "--runs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    with PodiumClient(args.url, args.admin_key) as admin:
        tenant = admin.create_tenant(f"load-{uuid.uuid4().hex[:6]}")
        key = admin.create_key(tenant["id"])["key"]
    client = PodiumClient(args.url, key, timeout=60)
    threads = [client.create_thread(f"load {i}")["id"] for i in range(args.runs)]

    def submit(thread_id: str) -> tuple[str, float]:
        started = time.perf_counter()
        run = client.create_run(thread_id, f"load test prompt on {thread_id}")
        return str(run["id"]), (time.perf_counter() - started) * 1000

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        submitted = list(pool.map(submit, threads))
    admit_s = time.perf_counter() - t0
    run_ids = [r for r, _ in submitted]
    post_ms = sorted(ms for _, ms in submitted)
    print(
        f"submitted {len(run_ids)} runs concurrently in {admit_s:.2f}s "
        f"(POST p50 {statistics.median(post_ms):.0f} ms, max {post_ms[-1]:.0f} ms)"
    )

    deadline = time.monotonic() + args.timeout
    pending = set(run_ids)
    statuses: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for run_id in list(pending):
            status = client.get_run(run_id)["status"]
            if status in ("completed", "failed", "cancelled"):
                statuses[run_id] = status
                pending.discard(run_id)
        time.sleep(0.2)
    done_s = time.perf_counter() - t0
    completed = sum(1 for s in statuses.values() if s == "completed")
    print(
        f"completed: {completed}/{len(run_ids)} in {done_s:.2f}s; "
        f"other terminal: {len(statuses) - completed}; still pending: {len(pending)}"
    )

    bad: list[str] = []
    postmortems = 0
    pm_deadline = time.monotonic() + 60
    for run_id, thread_id in zip(run_ids, threads, strict=True):
        answers = [m for m in client.messages(thread_id)["data"] if m["kind"] == "agent_message"]
        orch = client.orchestration(run_id)
        while orch["postmortem"] is None and time.monotonic() < pm_deadline:
            time.sleep(0.2)
            orch = client.orchestration(run_id)
        decisions = [d for d in orch["decisions"] if d["rationale"].strip()]
        postmortems += orch["postmortem"] is not None
        if len(answers) != 1 or len(orch["decisions"]) != 1 or len(decisions) != 1:
            bad.append(f"{run_id}: {len(answers)} answers, {len(orch['decisions'])} decisions")
    print(
        f"runs with exactly one agent message and one decision with a rationale: "
        f"{len(run_ids) - len(bad)}/{len(run_ids)}"
    )
    print(f"post-mortems held by the learner: {postmortems}/{len(run_ids)}")
    for line in bad[:10]:
        print("  problem:", line)
    client.close()
    ok = completed == len(run_ids) and not bad and postmortems == len(run_ids)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
