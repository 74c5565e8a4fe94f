"""Render the transition table as the docs' state diagram: `python -m ddipp.fsm.diagram`."""

from __future__ import annotations

from .table import STATE_MEANING, TRANSITIONS, TRIGGER_MAGICS, State, allowed_user_triggers

HEADER = """# Group lifecycle

Generated from `ddipp/fsm/table.py` by `python -m ddipp.fsm.diagram > docs/states.md`;
a test fails when this page and the table disagree.
"""


def mermaid() -> str:
    """A mermaid `stateDiagram-v2` of every transition that changes state."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for row in TRANSITIONS:
        if row.dest is not None:
            lines.append(f"    {row.source.value} --> {row.dest.value}: {row.trigger.value}")
    return "\n".join(lines)


def page() -> str:
    """The whole `docs/states.md` page: diagram, then what each state allows."""
    rows = ["| state | meaning | magics allowed |", "| --- | --- | --- |"]
    for state in State:
        magics = "; ".join(TRIGGER_MAGICS[t] for t in allowed_user_triggers(state))
        rows.append(f"| `{state.value}` | {STATE_MEANING[state]} | {magics} |")
    return "\n".join([HEADER, "```mermaid", mermaid(), "```", "", *rows, ""])


if __name__ == "__main__":
    print(page(), end="")
