"""Which cells autodip sends to the ranks."""

from __future__ import annotations

import pytest

from ddipp.cells import Route, route_cell


def lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


@pytest.mark.parametrize(
    ("cell", "route"),
    [
        ("x = 1\n", Route.REMOTE),
        ("", Route.LOCAL),
        ("\n\n   \n", Route.LOCAL),
        ("# only a comment\n# and another\n", Route.LOCAL),
        ("#dip_locally\nx = 1\n", Route.LOCAL),
        ("#dip_locally: look at the data here\nx = 1\n", Route.LOCAL),
        ("# dip_locally\nx = 1\n", Route.LOCAL),
        ("\n\n#dip_locally\nx = 1\n", Route.LOCAL),
        ("#dip_locallyish\nx = 1\n", Route.REMOTE),
        ("x = 1\n#dip_locally\n", Route.REMOTE),
        ("# a comment first\nx = 1\n", Route.REMOTE),
        ("%autodip off\n", Route.DDIPP),
        ("%dip --pull x\n", Route.DDIPP),
        ("%%dip --to local\nx = 1\n", Route.DDIPP),
        ("%makedip --kill\n", Route.DDIPP),
        ("%dipstatus\n", Route.DDIPP),
        ("\n%dipstatus\n", Route.DDIPP),
        ("%unload_ext ddipp\n", Route.DDIPP),
        ("%reload_ext ddipp\n", Route.DDIPP),
        ("%load_ext autoreload\n", Route.REMOTE),
        ("%matplotlib inline\n", Route.REMOTE),
        ("%time x = 1\n", Route.REMOTE),
        ("%%capture out\nprint(1)\n", Route.REMOTE),
        ("%diplomacy\n", Route.REMOTE),
        ("!nvidia-smi\n", Route.REMOTE),
        ("def f(:\n", Route.REMOTE),
    ],
)
def test_route(cell, route):
    assert route_cell(lines(cell)) is route
