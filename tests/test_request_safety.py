"""Every request ends in a state the user can leave, errors mean what they say, nothing is lost.

Real ranks: in-process shells (`notebook` fixture, slow tier) and real kernels (notebook tier).
Bounds on time are there only to tell a hang from a prompt failure.
"""

from __future__ import annotations

import re
import socket
import sys
import time

import pytest

from ddipp.errors import PullError, PushError, RankError
from ddipp.fsm import State

HANG_GUARD_S = 20


def children_alive(session) -> str:
    """What the kernel reports of its own live descendants (run inside the kernel)."""
    cell = session.run(
        "import psutil\n"
        "print(len([p for p in psutil.Process().children(recursive=True) if p.status() != 'zombie']))"
    )
    return cell.text().strip()


# --- 1. no stuck states -------------------------------------------------------------------


@pytest.mark.notebook
def test_a_second_interrupt_during_the_grace_still_leaves_a_usable_group(kernel):
    kernel, _ = kernel
    assert kernel.run("%load_ext ddipp\n%makedip -n 2 -a torch").status == "ok"
    code = (
        "%%dip\nimport time\nif dist.get_rank() == 0:\n    dist.all_reduce(torch.ones(1))\n"
        "else:\n    time.sleep(60)"
    )
    cell = kernel.run(code, interrupt_after=(2.0, 2.2, 2.4), timeout=HANG_GUARD_S)
    assert cell.status == "error" and cell.reply["content"]["ename"] == "KeyboardInterrupt"
    after = kernel.run("%%dip\nt = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())")
    assert after.status == "ok" and after.text().endswith("2.0\n"), after.text()
    assert kernel.run("%makedip --kill").status == "ok"


@pytest.mark.notebook
def test_an_interrupt_during_kill_still_ends_idle_with_nothing_left(kernel):
    kernel, _ = kernel
    assert kernel.run("%load_ext ddipp\n%makedip -n 2 -a torch").status == "ok"
    kernel.run("%makedip --kill", interrupt_after=0.3, timeout=HANG_GUARD_S)
    assert "state idle" in kernel.run("%dipstatus").shown_text()
    assert children_alive(kernel) == "0"


@pytest.mark.slow
def test_a_submit_that_raises_leaves_a_state_that_kill_can_leave(notebook, monkeypatch):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a none")

    def broken_submit(*args, **kwargs):
        raise OSError("the controller went away")

    monkeypatch.setattr(session.cluster, "submit", broken_submit)
    with pytest.raises(OSError):
        shell.run_cell_magic("dip", "", "1")
    assert session.state is State.FAILED and "went away" in session.lifecycle.reason
    shell.run_line_magic("makedip", "--kill")
    assert session.state is State.IDLE


# --- 4. a push the ranks cannot load --------------------------------------------------------


@pytest.mark.slow
def test_a_push_the_ranks_cannot_load_pushes_nothing_and_keeps_the_group(notebook, tmp_path, monkeypatch):
    shell, session = notebook
    (tmp_path / "notebook_only.py").write_text("class Point:\n    x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the notebook can import it, the ranks cannot
    import notebook_only

    shell.run_line_magic("makedip", "-n 2 -a none")
    shell.user_ns.update(good=1, point=notebook_only.Point())
    with pytest.raises(PushError, match=r"'point' cannot be loaded on rank 0 \(ModuleNotFoundError"):
        shell.run_line_magic("dip", "--push good point")
    assert session.state is State.PATCHED
    for rank in (0, 1):
        with pytest.raises(PullError, match="not defined"):
            shell.run_line_magic("dip", f"--pull good --rank {rank}")
    shell.run_line_magic("dip", "--push good")
    shell.run_line_magic("dip", "--pull good --rank 1")
    sys.modules.pop("notebook_only", None)


# --- 5. a user's error is the user's -------------------------------------------------------


@pytest.mark.slow
def test_a_users_timeout_error_does_not_re_form_the_group(notebook, capsys):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    shell.run_cell_magic("dip", "--quiet", "side = dist.new_group()")
    with pytest.raises(RankError, match="TimeoutError: timed out waiting for the server"):
        shell.run_cell_magic("dip", "", "raise TimeoutError('timed out waiting for the server')")
    assert "formed again" not in capsys.readouterr().out
    # A group made before the error still works: the process group was left alone.
    shell.run_cell_magic("dip", "", "t = torch.ones(1)\ndist.all_reduce(t, group=side)\nprint(t.item())")
    assert capsys.readouterr().out == "2.0\n"


# --- 6. a failed rank while a DDP model is alive -------------------------------------------


@pytest.mark.slow
def test_a_failed_rank_frees_its_peers_while_a_ddp_model_is_alive(notebook, capsys):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch -t 60")
    shell.run_cell_magic(
        "dip",
        "",
        "model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))\n"
        "model(torch.ones(2, 3)).sum().backward()\n",
    )
    began = time.monotonic()
    with pytest.raises(RankError, match="rank 1: ValueError: rank one fails"):
        shell.run_cell_magic(
            "dip",
            "",
            "if dist.get_rank() == 1:\n    raise ValueError('rank one fails')\n"
            "dist.all_reduce(torch.ones(1))\n",
        )
    assert time.monotonic() - began < HANG_GUARD_S  # the collective timeout is 60 s
    assert "formed again" in capsys.readouterr().out
    # The model was built on the old group: its next use fails at once and says what to do.
    began = time.monotonic()
    with pytest.raises(RankError):
        shell.run_cell_magic("dip", "", "model(torch.ones(2, 3)).sum().backward()\n")
    assert time.monotonic() - began < HANG_GUARD_S
    out = capsys.readouterr().out
    assert "wrap the model in DistributedDataParallel again" in out
    assert "formed again on every rank" not in out  # no second re-form
    shell.run_cell_magic(
        "dip",
        "",
        "model = torch.nn.parallel.DistributedDataParallel(model.module)\n"
        "model(torch.ones(2, 3)).sum().backward()\nprint('trained again')",
    )
    assert capsys.readouterr().out == "trained again\n"
    assert session.state is State.PATCHED


# --- 7. no output is lost --------------------------------------------------------------------


@pytest.mark.notebook
def test_output_written_between_cells_appears_in_the_next_cell(kernel):
    kernel, _ = kernel
    assert kernel.run("%load_ext ddipp\n%makedip -n 2 -a none").status == "ok"
    started = kernel.run(
        "%%dip\nimport threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(1.0), print('written late', flush=True))).start()"
    )
    assert started.status == "ok" and "written late" not in started.text()
    time.sleep(2.5)
    after = kernel.run("%%dip\nprint('next cell')")
    assert after.status == "ok"
    assert "written after its cell had ended" in after.text() and "written late" in after.text()
    assert "next cell" in after.text()


# --- 10. nothing listens for the rendezvous --------------------------------------------------


@pytest.mark.slow
def test_nothing_listens_for_the_rendezvous_once_the_group_has_formed(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    for formation in range(2):  # as formed at start, and formed again after a rank failed
        shell.run_cell_magic("dip", "--quiet", "import os\nport = int(os.environ['MASTER_PORT'])")
        shell.run_line_magic("dip", "--pull port")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", shell.user_ns["port"])).close()
        if formation == 0:
            with pytest.raises(RankError):
                shell.run_cell_magic(
                    "dip", "--quiet", "if dist.get_rank() == 1:\n    raise ValueError\ndist.barrier()\n"
                )


# --- 11. tracebacks name the notebook's cell ----------------------------------------------------


@pytest.mark.notebook
def test_rank_tracebacks_name_the_notebooks_cell(kernel):
    kernel, _ = kernel
    assert kernel.run("%load_ext ddipp\n%makedip -n 2 -a none").status == "ok"
    for _ in range(3):
        kernel.run("x = 1")
    cell = kernel.run("%%dip\n1 / 0")
    assert cell.status == "error"
    number = cell.reply["content"]["execution_count"]
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(cell.reply["content"]["traceback"]))
    assert f"Cell In[{number}], line 1" in traceback, traceback
