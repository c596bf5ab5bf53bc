"""Transitions of a run, in one namespace: admit (with answer and interrupt), cancel, resume,
apply an orchestrator step, record superseded decisions, and nudge runs the reaper found
stalled. Each is one short transaction guarded by the run's status or version, staging the
messages it causes in the outbox; none calls an LLM or waits on anything but the store."""

from podium.lifecycle.admission import Admitted, RunRequest, admit, cancel, resume
from podium.lifecycle.repair import notify_learner, nudge, record_superseded
from podium.lifecycle.step import StepApplied, apply_step

__all__ = [
    "Admitted",
    "RunRequest",
    "StepApplied",
    "admit",
    "apply_step",
    "cancel",
    "notify_learner",
    "nudge",
    "record_superseded",
    "resume",
]
