"""The group lifecycle as data: states, triggers and the one transition table.

Everything else (the machine, the error messages, the docs' diagram, the fuzzer's model)
is derived from what is written here.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class State(str, Enum):
    """Where the DDP group is in its life."""

    IDLE = "idle"
    LAUNCHING = "launching"
    NCCL_READY = "nccl_ready"
    PATCHED = "patched"
    RUNNING = "running"
    DRAINING = "draining"
    FAILED = "failed"


class Trigger(str, Enum):
    """Events that move the group: user triggers come from magics, the rest report outcomes."""

    # fired by magics
    START = "start"
    RUN = "run"
    KILL = "kill"
    RESTART = "restart"
    STATUS = "status"
    # fired by the session with the outcome of fallible work
    GROUP_FORMED = "group_formed"
    LAUNCH_FAILED = "launch_failed"
    PATCHES_APPLIED = "patches_applied"
    PATCH_FAILED = "patch_failed"
    CELL_DONE = "cell_done"
    GROUP_BROKEN = "group_broken"
    DRAINED = "drained"


class Transition(NamedTuple):
    """One row of the table: `trigger` moves `source` to `dest` (None: stays, internal)."""

    trigger: Trigger
    source: State
    dest: State | None


S, T = State, Trigger

TRANSITIONS: tuple[Transition, ...] = (
    # start-up: processes and rendezvous, then the app's patches
    Transition(T.START, S.IDLE, S.LAUNCHING),
    Transition(T.GROUP_FORMED, S.LAUNCHING, S.NCCL_READY),
    Transition(T.LAUNCH_FAILED, S.LAUNCHING, S.IDLE),
    Transition(T.PATCHES_APPLIED, S.NCCL_READY, S.PATCHED),
    Transition(T.PATCH_FAILED, S.NCCL_READY, S.IDLE),
    # work on the ranks
    Transition(T.RUN, S.PATCHED, S.RUNNING),
    Transition(T.CELL_DONE, S.RUNNING, S.PATCHED),
    Transition(T.GROUP_BROKEN, S.RUNNING, S.FAILED),
    Transition(T.GROUP_BROKEN, S.PATCHED, S.FAILED),
    # tear-down
    # --kill works from every state that has processes: whatever was interrupted, it ends idle
    *(Transition(T.KILL, state, S.DRAINING) for state in (S.LAUNCHING, S.NCCL_READY, S.PATCHED)),
    *(Transition(T.KILL, state, S.DRAINING) for state in (S.RUNNING, S.DRAINING, S.FAILED)),
    Transition(T.RESTART, S.PATCHED, S.DRAINING),
    Transition(T.RESTART, S.FAILED, S.DRAINING),
    Transition(T.DRAINED, S.DRAINING, S.IDLE),
    # inspection is allowed everywhere and changes nothing
    *(Transition(T.STATUS, state, None) for state in State),
)

USER_TRIGGERS: tuple[Trigger, ...] = (T.START, T.RUN, T.KILL, T.RESTART, T.STATUS)

# How a user fires each user trigger: used to say what *can* be done in a state.
TRIGGER_MAGICS: dict[Trigger, str] = {
    T.START: "%makedip -n 2 (CPU ranks) or %makedip -g all (one rank per GPU)",
    T.RUN: "%%dip, %dip --push NAMES, %dip --pull NAMES",
    T.KILL: "%makedip --kill",
    T.RESTART: "%makedip --restart",
    T.STATUS: "%dipstatus",
}

STATE_MEANING: dict[State, str] = {
    S.IDLE: "no DDP group is running",
    S.LAUNCHING: "a DDP group is starting",
    S.NCCL_READY: "the process group is up but the app is not patched yet",
    S.PATCHED: "a DDP group is running and ready for cells",
    S.RUNNING: "the DDP group is busy with another request",
    S.DRAINING: "the DDP group is shutting down",
    S.FAILED: "the DDP group has failed and cannot run cells",
}

# The states in which ddipp owns processes (the ranks and their controller).
STATES_WITH_PROCESSES: frozenset[State] = frozenset(
    {S.LAUNCHING, S.NCCL_READY, S.PATCHED, S.RUNNING, S.DRAINING, S.FAILED}
)
# The states a request passes through; every request ends in a state outside them, whatever
# interrupts it (the session settles an interrupted request by the table's own rows).
TRANSIENT_STATES: frozenset[State] = frozenset({S.LAUNCHING, S.NCCL_READY, S.RUNNING, S.DRAINING})


def next_state(state: State, trigger: Trigger) -> State | None:
    """Where `trigger` leads from `state`: the same state for internal rows, None if not allowed."""
    for row in TRANSITIONS:
        if row.trigger is trigger and row.source is state:
            return state if row.dest is None else row.dest
    return None


def allowed_user_triggers(state: State) -> list[Trigger]:
    """The user triggers that `state` accepts, in table order of `USER_TRIGGERS`."""
    return [t for t in USER_TRIGGERS if next_state(state, t) is not None]
