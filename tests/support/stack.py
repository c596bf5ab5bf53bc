"""The real services as subprocesses, for integration tests: gateway, orchestrator,
agent-worker and learner, against the machine's Redis and a throwaway PostgreSQL database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SERVICES = {
    "gateway": "podium_gateway",
    "orchestrator": "podium_orchestrator",
    "agent-worker": "podium_agent_worker",
    "learner": "podium_learner",
}


# Kept in the services' environment, so the suite's guards (podium.store.guards) run in every
# process a test starts; see tests/conftest.py.
GUARD_VARS = ("PODIUM_GUARD_REPORT", "PODIUM_STRICT_GUARDS")


def base_env(**overrides: str) -> dict[str, str]:
    """The environment of a service a test starts: this one without PODIUM_ settings (the
    guards' excepted), plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_") or k in GUARD_VARS}
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PODIUM_HTTP_PORT']}"

    def podium(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from podium.cli.main import cli; cli()", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self, *names: str) -> None:
        for name in names or tuple(SERVICES):
            env = dict(self.env)
            if name != "gateway":
                port = self.metrics_ports.setdefault(name, free_port())
                env["PODIUM_METRICS_PORT"] = str(port)
            log = (self.workdir / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", SERVICES[name]],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.wait_ready(*names)

    def wait_ready(self, *names: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for name in names or tuple(SERVICES):
            url = (
                f"{self.url}/readyz"
                if name == "gateway"
                else f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
            )
            while True:
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout}s:\n{self.log(name)}")
                time.sleep(0.2)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, *names: str, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        for name in names or tuple(self.procs):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def wait_for_run(client: Any, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        if run["status"] in ("completed", "failed", "cancelled"):
            return dict(run)
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")
        time.sleep(0.05)
