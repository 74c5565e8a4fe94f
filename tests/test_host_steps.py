"""Host steps on real CPU ranks: shell escapes and `rank0_first` blocks run once per host."""

from __future__ import annotations

import time

import pytest

from ddipp.errors import GroupFailed, RankError
from ddipp.fsm import State

pytestmark = pytest.mark.slow

# Far above what each step takes; there only so that a regression fails rather than hangs.
HANG_GUARD_S = 30


def test_shell_escapes_under_autodip_run_once_per_host_and_every_rank_gets_the_exit_code(notebook, tmp_path):
    shell, _ = notebook
    log = tmp_path / "ran.log"
    shell.run_line_magic("makedip", "-n 2 -a torch")
    shell.run_line_magic("autodip", "on")
    for code in (f"!echo first >> {log}\n!echo second >> {log}", f"!echo third >> {log}\n!exit 3"):
        outcome = shell.run_cell(code, store_history=False)
        assert outcome.success, outcome.error_in_exec
    shell.run_line_magic("autodip", "off")
    assert log.read_text().split() == ["first", "second", "third"]
    shell.run_line_magic("dip", "--pull _exit_code --rank 1")
    assert shell.user_ns["_exit_code"] == 3


def test_a_step_longer_than_the_collective_timeout_lets_the_others_wait_for_its_files(notebook, tmp_path):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch -t 5")
    began = time.monotonic()
    shell.run_cell_magic(
        "dip",
        f"--timeout {HANG_GUARD_S}",
        "import time\nfrom pathlib import Path\n"
        f"archive = Path({str(tmp_path)!r}) / 'archive'\n"
        "with rank0_first():\n"
        "    if not archive.exists():\n"
        "        time.sleep(8)  # a download longer than -t\n"
        "        archive.write_text(f'written by rank {dist.get_rank()}')\n"
        "found = archive.read_text()\n",
    )
    assert time.monotonic() - began >= 8
    shell.run_line_magic("dip", "--pull found --rank 1")
    assert shell.user_ns["found"] == "written by rank 0"
    assert session.state is State.PATCHED


def test_a_host_step_that_fails_on_the_first_rank_fails_the_others_at_once(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    began = time.monotonic()
    with pytest.raises(RankError) as raised:
        shell.run_cell_magic(
            "dip",
            f"--timeout {HANG_GUARD_S}",
            "@rank0_first\ndef download():\n    raise OSError('disk full')\ndownload()\n",
        )
    assert time.monotonic() - began < 5
    failures = {ranks: (ename, evalue) for ranks, ename, evalue, _ in raised.value.failures}
    assert failures == {
        (0,): ("OSError", "disk full"),
        (1,): (
            "HostStepFailed",
            "rank 0, which runs this step for its host, failed in it: OSError: disk full",
        ),
    }
    assert session.state is State.PATCHED


def test_a_host_step_whose_first_rank_dies_fails_the_others_instead_of_waiting(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    began = time.monotonic()
    with pytest.raises(GroupFailed, match=r"rank 0 \(pid \d+\) died: signal SIGKILL"):
        shell.run_cell_magic(
            "dip",
            f"--timeout {HANG_GUARD_S}",
            "import os, signal\nwith rank0_first():\n    if dist.get_rank() == 0:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n",
        )
    assert time.monotonic() - began < HANG_GUARD_S / 2  # not the cell's timeout
    assert session.state is State.FAILED
