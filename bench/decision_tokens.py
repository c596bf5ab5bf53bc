"""Tokens and latency per orchestration decision, first vs later, as the thread grows.

    uv run python bench/decision_tokens.py

Starts Podium embedded (simulated provider), then for threads with 0, 5, 10 and 20 earlier
exchanges runs a plan_execute request (3 steps → 1 first decision + 2 later decisions) and
prints the decision tokens and latencies. Later decisions see only the delta, so
their input tokens should not grow with the thread.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from podium.client import PodiumClient

HISTORY = (0, 5, 10, 20)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="podium-bench-"))
    port = 18000 + secrets.randbelow(1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env.update(
        PODIUM_DATABASE_URL=f"sqlite:///{work / 'p.db'}",
        PODIUM_ADMIN_KEY="bench-admin-key-0123456789",
        PODIUM_HTTP_PORT=str(port),
        PODIUM_SIMULATED_LATENCY_MS="0",
        PODIUM_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", "from podium.cli.main import cli; cli()", "dev"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with PodiumClient(url, env["PODIUM_ADMIN_KEY"]) as admin:
            tenant = admin.create_tenant("bench")
            key = admin.create_key(tenant["id"])["key"]
        client = PodiumClient(url, key)
        print(f"{'history':>8} {'first in':>9} {'later in':>14} {'first ms':>9} {'later ms':>14}")
        for history in HISTORY:
            thread = client.create_thread()["id"]
            for n in range(history):
                run = client.create_run(thread, f"Background note {n}: " + "lorem ipsum " * 30)
                _wait(client, run["id"])
            run = client.create_run(thread, "Plan the steps to roll out the new queue")
            _wait(client, run["id"])
            first, *later = client.orchestration(run["id"])["decisions"]
            later_in = [d["input_tokens"] for d in later]
            later_ms = [round(d["latency_ms"], 2) for d in later]
            print(
                f"{history:>8} {first['input_tokens']:>9} {later_in!s:>14} "
                f"{first['latency_ms']:>9.2f} {later_ms!s:>14}"
            )
        lat = [d["latency_ms"] for d in client.orchestration(run["id"])["decisions"]]
        print(
            "decision latency (simulated provider, in-process): "
            f"median {statistics.median(lat):.2f} ms"
        )
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return 0


def _wait(client: PodiumClient, run_id: str) -> None:
    for _ in range(600):
        if client.get_run(run_id)["status"] in ("completed", "failed", "cancelled"):
            return
        time.sleep(0.05)
    raise SystemExit(f"run {run_id} did not finish")


if __name__ == "__main__":
    sys.exit(main())
