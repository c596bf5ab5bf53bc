"""The run lifecycle: the one owner of the state of runs, agent calls and threads
(docs/architecture.md, "The run lifecycle").

Routes, the orchestrator's step, the agent worker and the reaper change that state only by
calling a transition here. Each transition is one short transaction, guarded by the current
status or version, that stages the messages it causes in the outbox; none calls an LLM. A
transition that finds the state moved on answers with a defined result (``Conflict``,
``NotFound``, or a no-op), never an exception of the store. ``podium.store.guards`` refuses
writes to these tables from anywhere else, and tests/unit/test_single_writer.py checks the
code for them.
"""

from podium.lifecycle import calls, runs, threads
from podium.lifecycle.errors import Conflict, NotFound, TransitionError
from podium.lifecycle.plan import (
    ContextChange,
    NewCall,
    Question,
    RunEnd,
    StepPlan,
    SubThread,
    ThreadMessage,
)
from podium.lifecycle.snapshot import (
    CallView,
    ContextState,
    RunSnapshot,
    RunState,
    load_snapshot,
)

__all__ = [
    "CallView",
    "Conflict",
    "ContextChange",
    "ContextState",
    "NewCall",
    "NotFound",
    "Question",
    "RunEnd",
    "RunSnapshot",
    "RunState",
    "StepPlan",
    "SubThread",
    "ThreadMessage",
    "TransitionError",
    "calls",
    "load_snapshot",
    "runs",
    "threads",
]
