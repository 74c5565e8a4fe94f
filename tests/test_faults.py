"""Fault injection: dead ranks, interrupts, hangs, failed starts, a killed kernel, exposure.

Every test bounds its own wall time only to fail instead of hanging; the figures to report
come from `python -m bench faults`.
"""

from __future__ import annotations

import glob
import os
import signal
import stat
import time

import psutil
import pytest

from ddipp.errors import GroupFailed, InvalidSequence, LaunchFailed, RankError
from ddipp.fsm import State
from tests.processes import descendants_alive, sigkill_and_wait, wait_until_gone

# Far above what each step takes; there only so that a regression fails rather than hangs.
HANG_GUARD_S = 20


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "ended"),
    [("os.kill(os.getpid(), signal.SIGKILL)", "signal SIGKILL"), ("os._exit(3)", "exit code 3")],
)
def test_a_rank_that_dies_mid_cell_fails_the_cell_naming_it_and_releases_its_peers(notebook, how, ended):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    victim = session.cluster.ranks[1].pid
    began = time.monotonic()
    code = f"import os, signal\nif dist.get_rank() == 1:\n    {how}\nt = torch.ones(1)\ndist.all_reduce(t)\n"
    with pytest.raises(GroupFailed, match=rf"rank 1 \(pid {victim}\) died: {ended}"):
        shell.run_cell_magic("dip", "", code)
    assert time.monotonic() - began < HANG_GUARD_S
    assert session.state is State.FAILED
    status = session.status()
    assert status.dead == {1} and f"died: {ended}" in status.reason
    assert "no" in status.render().splitlines()[-1]
    shell.run_line_magic("makedip", "--restart")
    shell.run_cell_magic("dip", "--quiet", "dist.barrier()")
    assert [info.rank for info in session.cluster.ranks] == [0, 1]


@pytest.mark.slow
def test_a_rank_that_dies_between_cells_is_noticed_at_the_next_magic(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a none")
    victim = session.cluster.ranks[0].pid
    sigkill_and_wait(victim)
    with pytest.raises(InvalidSequence, match=rf"rank 0 \(pid {victim}\) died"):
        shell.run_line_magic("dip", "--pull anything")
    assert session.state is State.FAILED


@pytest.mark.slow
def test_a_collective_one_rank_never_joins_fails_after_the_groups_timeout(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch -t 10")
    with pytest.raises(RankError, match="rank 0"):
        shell.run_cell_magic("dip", "", "if dist.get_rank() == 0:\n    dist.all_reduce(torch.ones(1))\n")
    shell.run_cell_magic("dip", "", "t = torch.ones(1)\ndist.all_reduce(t)\nassert t.item() == 2.0\n")
    assert session.state is State.PATCHED


@pytest.mark.slow
def test_a_rank_that_fails_at_start_up_leaves_nothing_running(notebook, monkeypatch):
    shell, session = notebook
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    with pytest.raises(LaunchFailed, match="rank 0 did not join the process group"):
        shell.run_line_magic("makedip", "-n 2 -a torch")
    assert session.state is State.IDLE and descendants_alive() == []


@pytest.mark.slow
def test_an_app_that_fails_to_set_up_leaves_nothing_running(notebook, monkeypatch):
    from ddipp import apps

    monkeypatch.setitem(
        apps.APPS, "torch", apps.App("torch", "broken", rank_imports="import no_such_module\n")
    )
    shell, session = notebook
    with pytest.raises(LaunchFailed, match="no_such_module"):
        shell.run_line_magic("makedip", "-n 2 -a torch")
    assert session.state is State.IDLE and descendants_alive() == []


@pytest.mark.slow
def test_the_group_listens_on_loopback_only_and_its_files_are_private(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    listening = []
    for pid in session.cluster.pids():
        for connection in psutil.Process(pid).net_connections(kind="inet"):
            if connection.status == psutil.CONN_LISTEN:
                listening.append(connection.laddr.ip)
    assert listening and set(listening) <= {"127.0.0.1", "::1"}, listening
    security = os.path.join(os.environ["IPYTHONDIR"], "profile_default", "security")
    files = glob.glob(os.path.join(security, "*.json"))
    assert files
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path


@pytest.mark.notebook
def test_an_interrupt_stops_a_long_cell_on_every_rank(kernel):
    session, _ = kernel
    assert session.run("%load_ext ddipp\n%makedip -n 2 -a none").status == "ok"
    cell = session.run("%%dip\nimport time\ntime.sleep(60)", interrupt_after=1.0, timeout=HANG_GUARD_S)
    assert cell.status == "error" and cell.reply["content"]["ename"] == "KeyboardInterrupt"
    assert cell.finished_at - cell.sent_at < HANG_GUARD_S
    after = session.run("%%dip\nprint('still here')")
    assert after.status == "ok" and after.text() == "still here\n"


@pytest.mark.notebook
def test_an_interrupt_releases_a_rank_blocked_in_a_collective(kernel):
    session, _ = kernel
    assert session.run("%load_ext ddipp\n%makedip -n 2 -a torch").status == "ok"
    code = (
        "%%dip\nimport time\nif dist.get_rank() == 0:\n    dist.all_reduce(torch.ones(1))\n"
        "else:\n    time.sleep(60)"
    )
    cell = session.run(code, interrupt_after=1.0, timeout=HANG_GUARD_S)
    assert cell.status == "error" and cell.reply["content"]["ename"] == "KeyboardInterrupt"
    assert "formed again" in cell.text()
    after = session.run("%%dip\nt = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())")
    assert after.status == "ok" and after.text() == "2.0\n"


@pytest.mark.notebook
def test_nothing_outlives_a_kernel_killed_with_sigkill(kernel):
    session, tag = kernel
    assert session.run("%load_ext ddipp\n%makedip -n 2 -a torch").status == "ok"
    assert len(psutil.Process(session.pid).children(recursive=True)) >= 4
    os.kill(session.pid, signal.SIGKILL)
    left = wait_until_gone(tag, 10)
    assert left == [], [(p.pid, p.cmdline()) for p in left]


@pytest.mark.notebook
def test_unload_ext_stops_the_group_and_removes_the_magics(kernel):
    session, _ = kernel
    assert session.run("%load_ext ddipp\n%makedip -n 2 -a none\n%autodip on").status == "ok"
    unload = session.run("%unload_ext ddipp")
    assert unload.status == "ok" and "autodip is off" in unload.text()
    check = session.run(
        "import psutil\n"
        "left = [p for p in psutil.Process().children(recursive=True) if p.status() != 'zombie']\n"
        "print(len(left))\nx = 1\nprint(x)"
    )
    assert check.text() == "0\n1\n", check.text()
    assert session.run("%dipstatus").status == "error"
