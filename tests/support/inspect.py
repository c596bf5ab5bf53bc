"""Reading a finished run back: its calls from the store, its decisions from the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from tests.support.stack import wait_for_run


def calls_of(store: Engine, run_id: str) -> list[dict[str, Any]]:
    with store.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, agent, role, step_index, status, thread_id, parent_call_id, depth,"
                " result, output, provider, input_tokens, output_tokens, cost_usd, error,"
                " tool_steps "
                "FROM agent_calls WHERE run_id = :r ORDER BY created_at, id"
            ),
            {"r": run_id},
        ).mappings()
        return [dict(r) for r in rows]


def finished(
    client: Any, thread_id: str, prompt: str, timeout: float = 60, **kwargs: Any
) -> dict[str, Any]:
    """Submit a run, wait for its end, and return the run with its orchestration."""
    accepted = client.create_run(thread_id, prompt, **kwargs)
    run = wait_for_run(client, accepted["id"], timeout=timeout)
    run["orchestration"] = client.orchestration(accepted["id"])
    return run


def roles(calls: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["role"], c["agent"]) for c in calls]
