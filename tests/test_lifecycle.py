"""The lifecycle table and machine: transitions, rejections, and the generated docs page."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddipp.errors import InvalidSequence
from ddipp.fsm import TRANSITIONS, GroupLifecycle, State, Trigger, explain_rejection, next_state
from ddipp.fsm.diagram import page
from ddipp.fsm.table import USER_TRIGGERS, allowed_user_triggers

DOCS = Path(__file__).resolve().parent.parent / "docs"


def reachable_from(start: State) -> set[State]:
    """Every state the table can lead to from `start` (itself included)."""
    reached, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for row in TRANSITIONS:
            if row.source is state and row.dest is not None and row.dest not in reached:
                reached.add(row.dest)
                frontier.append(row.dest)
    return reached


def test_every_state_is_reachable_from_idle():
    assert reachable_from(State.IDLE) == set(State)


def test_every_state_can_get_back_to_idle():
    for start in State:
        assert State.IDLE in reachable_from(start), start


def test_the_machine_follows_the_table_for_every_state_and_trigger():
    for trigger in Trigger:
        for state in State:
            machine = GroupLifecycle()
            machine._machine.set_state(state)
            expected = next_state(state, trigger)
            assert machine.allows(trigger) == (expected is not None)
            if expected is None:
                with pytest.raises(InvalidSequence):
                    machine.fire(trigger)
                assert machine.state is state
            else:
                machine.fire(trigger)
                assert machine.state is expected


def test_a_cell_without_a_group_is_rejected_with_the_way_to_start_one():
    machine = GroupLifecycle()
    with pytest.raises(InvalidSequence) as raised:
        machine.require(Trigger.RUN, "%%dip")
    message = str(raised.value)
    assert message.startswith("%%dip: no DDP group is running (state: idle).")
    assert "%makedip -n 2" in message and "%makedip -g all" in message


def test_starting_twice_points_at_restart_and_kill():
    message = explain_rejection(State.PATCHED, "%makedip")
    assert "state: patched" in message
    assert "%makedip --restart" in message and "%makedip --kill" in message


def test_a_failed_group_names_its_reason_in_rejections():
    message = explain_rejection(State.FAILED, "%%dip", reason="rank 1 (pid 42) died: signal SIGKILL")
    assert "rank 1 (pid 42) died: signal SIGKILL" in message
    assert "%makedip --restart" in message


def test_status_is_allowed_everywhere_and_changes_nothing():
    for state in State:
        assert next_state(state, Trigger.STATUS) is state
        assert Trigger.STATUS in allowed_user_triggers(state)


def test_listeners_hear_every_change_of_state_but_not_status():
    machine = GroupLifecycle()
    heard = []
    machine.listeners.append(lambda source, dest, trigger: heard.append((source, dest, trigger)))
    machine.fire(Trigger.START)
    machine.fire(Trigger.STATUS)
    machine.fire(Trigger.LAUNCH_FAILED)
    assert heard == [
        (State.IDLE, State.LAUNCHING, Trigger.START),
        (State.LAUNCHING, State.IDLE, Trigger.LAUNCH_FAILED),
    ]


def test_user_triggers_are_in_the_table():
    in_table = {row.trigger for row in TRANSITIONS}
    assert set(USER_TRIGGERS) <= in_table


def test_the_docs_state_page_is_generated_from_the_table():
    assert (DOCS / "states.md").read_text() == page(), (
        "docs/states.md is stale: run python -m ddipp.fsm.diagram > docs/states.md"
    )
