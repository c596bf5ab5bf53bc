"""``search_thread``: find earlier messages of the conversation.

The search itself is ``ctx.search`` (the executor's, over the thread's events); this tool
only formats the hits for the model."""

from __future__ import annotations

from typing import Any

from podium.tools_catalog import BUILTIN_TOOLS
from podium_agent_worker.tools.base import ToolContext

DEFAULT_LIMIT = 5


def format_hits(query: str, hits: list[dict[str, Any]]) -> str:
    if not hits:
        return f"no messages match {query!r}"
    lines = [f"{len(hits)} message(s) match {query!r}, newest first:"]
    for hit in hits:
        who = hit.get("role", "?")
        if hit.get("agent"):
            who = f"{who}/{hit['agent']}"
        lines.append(f"#{hit.get('seq', '?')} {who}: {hit.get('snippet', '')}")
    return "\n".join(lines)


class SearchThreadTool:
    spec = BUILTIN_TOOLS["search_thread"]

    def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        query = str(arguments["query"]).strip()
        limit = int(arguments.get("limit", DEFAULT_LIMIT))
        return format_hits(query, ctx.search(query, limit))
