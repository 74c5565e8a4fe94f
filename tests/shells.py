"""Driving the magics of an in-process shell from tests: run a cell on the ranks, pull a value."""

from __future__ import annotations

from typing import Any


def on_ranks(shell, code: str) -> None:
    """Run `code` on every rank (`%%dip`), showing rank 0's output."""
    shell.run_cell_magic("dip", "", code)


def pull(shell, name: str, rank: int = 0) -> Any:
    """Rank `rank`'s value of `name` (`%dip --pull`)."""
    shell.run_line_magic("dip", f"--pull {name} --rank {rank}")
    return shell.user_ns[name]
