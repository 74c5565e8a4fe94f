"""Rank 0's output reaches a notebook client while the cell is still running."""

from __future__ import annotations

import os
import uuid

import pytest

from ddipp.notebooks import KernelSession
from tests.processes import TAG_VARIABLE, wait_until_gone

pytestmark = pytest.mark.notebook


def test_a_long_cells_first_output_arrives_before_the_cell_finishes(tmp_path):
    tag = uuid.uuid4().hex
    env = dict(os.environ, **{TAG_VARIABLE: tag, "IPYTHONDIR": str(tmp_path)})
    with KernelSession(env) as kernel:
        assert kernel.run("%load_ext ddipp\n%makedip -n 2 -a none").status == "ok"
        cell = kernel.run("%%dip\nimport time\nprint('first')\ntime.sleep(2)\nprint('last')")
        assert cell.status == "ok"
        first, last = cell.first_arrival("first"), cell.first_arrival("last")
        assert first is not None and last is not None, cell.text()
        # 'first' was written 2 s before 'last' and before the end: it must not wait for them.
        assert last - first > 1.0
        assert cell.finished_at - first > 1.0
        assert cell.text() == "first\nlast\n"
    assert wait_until_gone(tag, 10) == []
