"""State machines of ddipp: the DDP group's lifecycle (and its table, as data)."""

from .lifecycle import GroupLifecycle, explain_rejection
from .table import STATES_WITH_PROCESSES, TRANSITIONS, State, Trigger, next_state

__all__ = [
    "GroupLifecycle",
    "STATES_WITH_PROCESSES",
    "State",
    "TRANSITIONS",
    "Trigger",
    "explain_rejection",
    "next_state",
]
