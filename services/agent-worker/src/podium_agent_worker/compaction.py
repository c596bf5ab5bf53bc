"""Thread compaction: when a thread outgrows an agent's context budget, its older part is
summarised into one ``summary`` event and the newest messages are kept verbatim.

Planning and summarising are pure (no store access) so they are tested on their own; the
executor loads the entries, calls these, and appends the summary event.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from podium.llm.base import ChatMessage, ChatRequest, LLMProvider, ProviderError, Usage

# podium.store.EventKind values (not imported: this module stays free of the store).
SUMMARY_KIND = "summary"
TOOL_RESPONSE_KIND = "tool_response"
# Each message's share of the summariser's prompt is capped, so a long legacy thread
# cannot produce an unbounded (and costly) summarisation request.
MAX_PROMPT_CHARS = 48_000
_MIN_MESSAGE_CHARS = 200
# Room kept for the "(N older messages omitted)" line of an extractive summary.
_OMITTED_RESERVE = 40

_HEADER = re.compile(r"^Summary of messages #(\d+)-#(\d+):")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")

_INSTRUCTIONS = (
    "You compress the older part of a conversation so later agents can continue it "
    "without the original messages. Write a faithful summary: who asked what, what was "
    "answered and decided, facts and numbers given, commitments made, and questions still "
    "open. Keep names of people and agents. Do not add anything that is not in the "
    "messages and do not answer open questions. Be concise; plain sentences or short "
    "bullets. An earlier summary, if present, must be folded in."
)


def estimate_tokens(text: str) -> int:
    """An estimate, not a count: about 4 characters per token for English text with the
    common BPE tokenizers. Good enough to decide when to compact; never 0 so that empty
    messages still cost something."""
    return max(1, math.ceil(len(text) / 4))


@dataclass
class Entry:
    seq: int
    kind: str  # EventKind value
    role: str
    agent: str | None
    content: str


def plan_compaction(
    entries: Sequence[Entry], budget_tokens: int, keep_recent_tokens: int
) -> tuple[list[Entry], list[Entry]] | None:
    """Split ``entries`` (oldest first, possibly led by an earlier summary) into
    ``(to_summarize, to_keep)``, or None when they fit ``budget_tokens``.

    ``to_keep`` is the longest suffix within ``keep_recent_tokens`` but at least the last
    entry; everything before it, an earlier summary included, is summarised (summaries roll
    up). The kept part never starts with a tool response, whose request would be summarised
    away. None as well when nothing new would be summarised (only an earlier summary).
    """
    if budget_tokens < 1 or keep_recent_tokens < 0:
        raise ValueError("budget_tokens must be >= 1 and keep_recent_tokens >= 0")
    items = list(entries)
    if sum(estimate_tokens(e.content) for e in items) <= budget_tokens:
        return None
    start = len(items) - 1  # the last entry is always kept
    kept_tokens = estimate_tokens(items[start].content)
    while start > 0:
        cost = estimate_tokens(items[start - 1].content)
        if kept_tokens + cost > keep_recent_tokens:
            break
        start -= 1
        kept_tokens += cost
    while start < len(items) - 1 and items[start].kind == TOOL_RESPONSE_KIND:
        start += 1
    to_summarize, to_keep = items[:start], items[start:]
    if not to_summarize or all(e.kind == SUMMARY_KIND for e in to_summarize):
        return None
    return to_summarize, to_keep


def covered_range(entries: Sequence[Entry]) -> tuple[int, int]:
    """The first and last message seq the entries stand for; an earlier summary stands for
    the range in its header, not for its own seq."""
    seqs: list[int] = []
    for entry in entries:
        found = _HEADER.match(entry.content) if entry.kind == SUMMARY_KIND else None
        if found:
            seqs.extend((int(found.group(1)), int(found.group(2))))
        else:
            seqs.append(entry.seq)
    return min(seqs), max(seqs)


def summarize(
    provider: LLMProvider, model: str, entries: Sequence[Entry], max_tokens: int = 400
) -> tuple[str, Usage]:
    """A summary of ``entries`` starting "Summary of messages #<first>-#<last>:", and the
    usage it cost. If the model fails or says nothing, an extractive summary (first
    sentence of each message) is returned instead: compaction must never fail a call.
    The usage is then zero after a ProviderError, and what the empty answer was billed
    otherwise (it was spent, so cost accounting must see it)."""
    if not entries:
        raise ValueError("nothing to summarize")
    first, last = covered_range(entries)
    header = f"Summary of messages #{first}-#{last}:"
    request = ChatRequest(
        model=model,
        messages=[
            ChatMessage(role="system", content=_INSTRUCTIONS),
            ChatMessage(role="user", content=_transcript(entries)),
        ],
        temperature=0.0,
        max_tokens=max_tokens,
        metadata={"purpose": "compaction"},
    )
    try:
        result = provider.complete(request)
    except ProviderError:
        return f"{header}\n{extractive_summary(entries, max_tokens * 4)}", Usage()
    text = result.content.strip()
    if not text:
        return f"{header}\n{extractive_summary(entries, max_tokens * 4)}", result.usage
    return f"{header}\n{text}", result.usage


def _label(entry: Entry) -> str:
    if entry.kind == SUMMARY_KIND:
        return "earlier summary"
    return f"{entry.role}/{entry.agent}" if entry.agent else entry.role


def _transcript(entries: Sequence[Entry]) -> str:
    per_message = max(_MIN_MESSAGE_CHARS, MAX_PROMPT_CHARS // len(entries))
    lines = ["Conversation part to summarise:"]
    for entry in entries:
        lines.append(f"#{entry.seq} {_label(entry)}: {_shorten(entry.content, per_message)}")
    return "\n".join(lines)


def extractive_summary(entries: Sequence[Entry], max_chars: int) -> str:
    """No model needed: an earlier summary's body (it holds the older history), then the
    first sentence of each message, all within about ``max_chars``. When the messages do
    not fit, the newest are kept and the oldest are counted as omitted."""
    earlier = [e for e in entries if e.kind == SUMMARY_KIND]
    others = [e for e in entries if e.kind != SUMMARY_KIND]
    head: list[str] = []
    room = max_chars
    for entry in earlier:
        # An earlier summary may take half of what is left; the messages share the rest.
        body = _HEADER.sub("", entry.content, count=1)
        line = f"- earlier: {_shorten(body, room // 2 if others else room)}"
        head.append(line)
        room -= len(line) + 1
    share = max(40, room // max(1, len(others)))
    lines = [
        f"- #{e.seq} {_label(e)}: {_shorten(_first_sentence(e.content), share)}" for e in others
    ]
    total = sum(len(line) + 1 for line in lines)
    dropped = 0
    while len(lines) > 1 and total + _OMITTED_RESERVE > room:
        total -= len(lines.pop(0)) + 1
        dropped += 1
    if dropped:
        lines.insert(0, f"- ({dropped} older messages omitted)")
    return _shorten_lines("\n".join(head + lines), max_chars)


def _first_sentence(text: str) -> str:
    stripped = text.strip()
    return _SENTENCE_END.split(stripped, maxsplit=1)[0] if stripped else "(empty)"


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 1)].rstrip() + "…"


def _shorten_lines(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"
