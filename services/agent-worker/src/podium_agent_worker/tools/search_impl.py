"""Searching a thread's messages: pure, so it is tested without a database.

The executor loads ``(seq, role, agent, content)`` rows and calls ``search_events``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

SNIPPET_CHARS = 160
# Characters of context shown before the first match.
_LEAD_CHARS = 60
# "quoted phrases" stay together; other words are matched one by one.
_TERM = re.compile(r'"([^"]+)"|(\S+)')


def query_terms(query: str) -> list[str]:
    terms = []
    for phrase, word in _TERM.findall(query.lower()):
        term = " ".join((phrase or word).split())
        if term and term not in terms:
            terms.append(term)
    return terms


def make_snippet(content: str, terms: Sequence[str], width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of ``content`` around the first match, on one line."""
    flat = " ".join(content.split())
    lowered = flat.lower()
    hits = [i for i in (lowered.find(t) for t in terms) if i >= 0]
    first = min(hits) if hits else 0
    start = max(0, min(first - _LEAD_CHARS, len(flat) - width))
    end = min(len(flat), start + width)
    snippet = flat[start:end]
    return ("…" if start > 0 else "") + snippet + ("…" if end < len(flat) else "")


def search_events(
    events: Sequence[tuple[int, str, str | None, str]], query: str, limit: int
) -> list[dict[str, Any]]:
    """Events containing every query term (case-insensitive substring), newest first.

    Returns at most ``limit`` dicts with seq, role, agent and snippet."""
    terms = query_terms(query)
    if not terms or limit <= 0:
        return []
    hits: list[dict[str, Any]] = []
    for seq, role, agent, content in sorted(events, key=lambda e: e[0], reverse=True):
        # Whitespace is collapsed so a phrase matches across line breaks.
        text = " ".join(content.split()).lower()
        if all(term in text for term in terms):
            hits.append(
                {"seq": seq, "role": role, "agent": agent, "snippet": make_snippet(content, terms)}
            )
            if len(hits) >= limit:
                break
    return hits
