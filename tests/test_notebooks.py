"""Every notebook in tests/notebooks/ on a real kernel with real CPU ranks, checked cell by cell."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from ddipp.notebooks import cell_text, execute_notebook
from tests.environments import requires_fastai
from tests.processes import TAG_VARIABLE, files_left, tagged_processes, wait_until_gone

NOTEBOOKS = sorted((Path(__file__).parent / "notebooks").glob("*.ipynb"))
# The kernel and everything it started must be gone this long after the kernel shuts down.
CLEAN_UP_S = 10


def _notebook_param(path: Path):
    """A fastai lesson runs in the environment of its fastai major version (make test runs both)."""
    wanted = json.loads(path.read_text())["metadata"].get("ddipp_requires", {}).get("fastai")
    return pytest.param(path, id=path.stem, marks=requires_fastai(wanted) if wanted is not None else ())


@pytest.mark.notebook
@pytest.mark.parametrize("path", [_notebook_param(path) for path in NOTEBOOKS])
def test_notebook(path, tmp_path, monkeypatch):
    tag = uuid.uuid4().hex
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, **{TAG_VARIABLE: tag, "IPYTHONDIR": str(tmp_path / "ipython")}, TMPDIR=str(temp))
    notebook = execute_notebook(path, tmp_path / path.name, env=env)

    check_expectations(notebook, path.name)

    left = wait_until_gone(tag, CLEAN_UP_S)
    assert left == [], [(p.pid, p.cmdline()) for p in left]
    assert files_left(temp, tmp_path / "ipython") == []


def check_expectations(notebook, name: str) -> None:
    """Each cell's outputs against its `ddipp_expect` metadata; at least one cell must have some."""
    checked = 0
    for index, cell in enumerate(notebook.cells):
        expect = cell.get("metadata", {}).get("ddipp_expect")
        if cell.cell_type != "code" or not expect:
            continue
        checked += 1
        where = f"{name} cell {index}: {cell.source.splitlines()[0]!r}"
        errors = [o for o in cell.outputs if o["output_type"] == "error"]
        if "ename" in expect:
            count = expect.get("error_count", 1)
            assert len(errors) == count, f"{where} should show {count} error(s), ending in {expect['ename']}"
            assert errors[-1]["ename"] == expect["ename"], where
            assert expect["evalue_contains"] in errors[-1]["evalue"], (where, errors[-1]["evalue"])
        else:
            assert errors == [], where
        text = cell_text(cell)
        for wanted in expect.get("output_contains", []):
            assert wanted in text, (where, text)
        for unwanted in expect.get("output_lacks", []):
            assert unwanted not in text, (where, text)
        for kind, wanted_parts in expect.get("mime_contains", {}).items():
            found = _outputs_of_kind(cell, kind)
            assert len(found) == 1, (where, kind, f"{len(found)} outputs")
            for wanted in wanted_parts:
                assert wanted in found[0], (where, kind, found[0])
        if "max_seconds" in expect:
            took = _seconds_taken(cell)
            assert took < expect["max_seconds"], (where, f"took {took:.1f} s")
    assert checked, f"{name} has no cell with expectations"


def _outputs_of_kind(cell, kind: str) -> list[str]:
    """Texts of `cell`'s outputs of mime type `kind`, or of output type `execute_result`."""
    if kind == "execute/result":
        return [o["data"]["text/plain"] for o in cell.outputs if o["output_type"] == "execute_result"]
    return [o["data"][kind] for o in cell.outputs if kind in o.get("data", {})]


def _seconds_taken(cell) -> float:
    from datetime import datetime

    timing = cell.metadata["execution"]
    started = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    return (ended - started).total_seconds()


def test_the_tag_finds_a_tagged_child_process(tmp_path):
    """The leftover check itself can fail: a tagged process is found until it ends."""
    import os
    import subprocess
    import sys
    import time

    tag = uuid.uuid4().hex
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], env=dict(os.environ, **{TAG_VARIABLE: tag})
    )
    try:
        # Until the child has exec'd, /proc shows the environment it was forked with.
        deadline = time.monotonic() + 10
        while not tagged_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p.pid for p in tagged_processes(tag)] == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert tagged_processes(tag) == []
