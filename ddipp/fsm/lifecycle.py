"""The group lifecycle machine: the transition table driven by `transitions`."""

from __future__ import annotations

from collections.abc import Callable

from transitions import Machine

from ..errors import InvalidSequence
from .table import (
    STATE_MEANING,
    TRANSITIONS,
    TRIGGER_MAGICS,
    State,
    Trigger,
    allowed_user_triggers,
)

INVALID_SEQUENCE = "{magic}: {meaning} (state: {state}). {advice}"
_ALLOWED = frozenset((row.source, row.trigger) for row in TRANSITIONS)


class GroupLifecycle:
    """Holds the group's state; every change goes through a trigger of the table.

    `listeners` are called after every change of state with (source, dest, trigger): the
    session hangs its verbose report, autodip and app clean-up off them.
    """

    state: State

    def __init__(self) -> None:
        self.listeners: list[Callable[[State, State, Trigger], None]] = []
        self.reason: str = ""
        self._machine = Machine(
            model=self,
            states=State,
            transitions=[
                {
                    "trigger": row.trigger.value,
                    "source": row.source,
                    "dest": row.dest,
                }
                for row in TRANSITIONS
            ],
            initial=State.IDLE,
            auto_transitions=False,
            send_event=True,
            after_state_change=self._notify,
        )

    def allows(self, trigger: Trigger) -> bool:
        """Whether `trigger` may fire in the current state (a table lookup: it is on every path)."""
        return (self.state, trigger) in _ALLOWED

    def require(self, trigger: Trigger, magic: str) -> None:
        """Raise `InvalidSequence` naming the state and the alternatives unless allowed."""
        if self.allows(trigger):
            return
        raise InvalidSequence(explain_rejection(self.state, magic, self.reason))

    def fire(self, trigger: Trigger, reason: str = "") -> None:
        """Fire `trigger`; `reason` is kept for the failed state's messages."""
        self.require(trigger, trigger.value)  # the machine would refuse too, but less clearly
        if trigger is Trigger.GROUP_BROKEN:
            self.reason = reason
        elif trigger in (Trigger.DRAINED, Trigger.LAUNCH_FAILED, Trigger.PATCH_FAILED):
            self.reason = ""
        self.trigger(trigger.value)

    def _notify(self, event) -> None:
        if event.transition.dest is None:
            return
        source = State[event.transition.source]
        for listener in list(self.listeners):
            listener(source, self.state, Trigger(event.event.name))


def explain_rejection(state: State, magic: str, reason: str = "") -> str:
    """The message for `magic` rejected in `state`: what is going on, and what can be done."""
    meaning = STATE_MEANING[state]
    if reason:
        meaning = f"{meaning}: {reason}"
    options = [TRIGGER_MAGICS[t] for t in allowed_user_triggers(state) if t is not Trigger.STATUS]
    if options:
        advice = "You can use " + "; or ".join(options) + "."
    else:
        advice = "Wait for it to finish, or check with %dipstatus."
    return INVALID_SEQUENCE.format(magic=magic, meaning=meaning, state=state.value, advice=advice)
