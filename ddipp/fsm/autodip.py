"""Autodip's own small machine: `off` and `on`, as data beside the group's."""

from __future__ import annotations

from enum import Enum

from transitions import Machine

from .table import Trigger as GroupTrigger


class AutodipState(str, Enum):
    OFF = "off"
    ON = "on"


class AutodipTrigger(str, Enum):
    TURN_ON = "turn_on"  # %autodip on [flags]; needs a running group (checked by the session)
    TURN_OFF = "turn_off"  # %autodip off
    GROUP_GONE = "group_gone"  # the group was killed, failed or the extension unloaded


A, T = AutodipState, AutodipTrigger

AUTODIP_TRANSITIONS: tuple[tuple[AutodipTrigger, AutodipState, AutodipState | None], ...] = (
    (T.TURN_ON, A.OFF, A.ON),
    (T.TURN_ON, A.ON, None),  # new flags, still on
    (T.TURN_OFF, A.ON, A.OFF),
    (T.TURN_OFF, A.OFF, None),
    (T.GROUP_GONE, A.ON, A.OFF),
    (T.GROUP_GONE, A.OFF, None),
)

# Group triggers after which autodip cannot stay on. `restart` is not one: it keeps autodip,
# unless the new group then fails to start.
GROUP_TRIGGERS_THAT_END_AUTODIP: frozenset[GroupTrigger] = frozenset(
    {GroupTrigger.KILL, GroupTrigger.GROUP_BROKEN, GroupTrigger.LAUNCH_FAILED, GroupTrigger.PATCH_FAILED}
)


class Autodip:
    """The autodip mode and the `%%dip` flags it applies to every plain cell."""

    state: AutodipState

    def __init__(self) -> None:
        self.flags: str = ""
        self._machine = Machine(
            model=self,
            states=AutodipState,
            transitions=[
                {"trigger": trigger.value, "source": source, "dest": dest}
                for trigger, source, dest in AUTODIP_TRANSITIONS
            ],
            initial=AutodipState.OFF,
            auto_transitions=False,
        )

    @property
    def is_on(self) -> bool:
        return self.state is AutodipState.ON

    def enable(self, flags: str) -> None:
        self.trigger(AutodipTrigger.TURN_ON.value)
        self.flags = flags

    def disable(self) -> bool:
        """Turn off; True if it was on."""
        was_on = self.is_on
        self.trigger(AutodipTrigger.TURN_OFF.value)
        self.flags = ""
        return was_on

    def end_with_group(self) -> bool:
        """The group is gone: off. True if it was on."""
        was_on = self.is_on
        self.trigger(AutodipTrigger.GROUP_GONE.value)
        self.flags = ""
        return was_on

    def describe(self) -> str:
        if not self.is_on:
            return "autodip is off"
        return f"autodip is on: cells run as %%dip {self.flags}".rstrip()
