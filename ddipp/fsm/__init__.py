"""State machines of ddipp: the DDP group's lifecycle (and its table, as data)."""

from .autodip import GROUP_TRIGGERS_THAT_END_AUTODIP, Autodip, AutodipState
from .lifecycle import GroupLifecycle, explain_rejection
from .table import STATES_WITH_PROCESSES, TRANSIENT_STATES, TRANSITIONS, State, Trigger, next_state

__all__ = [
    "Autodip",
    "AutodipState",
    "GROUP_TRIGGERS_THAT_END_AUTODIP",
    "GroupLifecycle",
    "STATES_WITH_PROCESSES",
    "State",
    "TRANSIENT_STATES",
    "TRANSITIONS",
    "Trigger",
    "explain_rejection",
    "next_state",
]
