"""Which cells autodip sends to the ranks: a pure function of the cell's text."""

from __future__ import annotations

import re
from enum import Enum

LOCAL_MARKER = "#dip_locally"
_LOCAL_MARKER = re.compile(r"^#\s*dip_locally(?!\w)")
DDIPP_MAGICS = frozenset({"dip", "makedip", "autodip", "dipstatus"})
_MAGIC_NAME = re.compile(r"^%{1,2}([A-Za-z_][\w]*)")
# `%unload_ext ddipp` (and load/reload) concern the notebook's ddipp, not the ranks'.
_DDIPP_EXTENSION = re.compile(r"^%(?:load|unload|reload)_ext\s+ddipp\s*(?:#.*)?$")


class Route(str, Enum):
    """Where a cell goes while autodip is on."""

    REMOTE = "remote"  # to every rank, as if the first line were `%%dip <flags>`
    LOCAL = "local"  # `#dip_locally`, or nothing to run
    DDIPP = "ddipp"  # a ddipp magic, handled in the notebook by ddipp itself


def route_cell(lines: list[str]) -> Route:
    """Classify a cell given as lines (as IPython's input transformers see it)."""
    code = [line.strip() for line in lines if line.strip()]
    if not code:
        return Route.LOCAL
    first = code[0]
    if _LOCAL_MARKER.match(first):
        return Route.LOCAL
    magic = _MAGIC_NAME.match(first)
    if (magic is not None and magic.group(1) in DDIPP_MAGICS) or _DDIPP_EXTENSION.match(first):
        return Route.DDIPP
    if all(line.startswith("#") for line in code):
        return Route.LOCAL
    return Route.REMOTE
