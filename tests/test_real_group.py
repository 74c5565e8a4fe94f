"""The magics on real CPU ranks (gloo), driven through an in-process IPython shell."""

from __future__ import annotations

import os
import threading

import pytest

from ddipp.errors import CellTimeout, InvalidSequence, LaunchFailed, PullError, PushError, RankError
from ddipp.fsm import State
from tests.processes import descendants_alive, sigkill_and_wait

pytestmark = pytest.mark.slow


def test_push_all_reduce_and_pull_round_trip_on_two_ranks(notebook, capsys):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    shell.user_ns.update(xs=[1, 2, 3], tag="t")
    shell.run_line_magic("dip", "--push xs tag")
    result = shell.run_cell_magic(
        "dip",
        "",
        "t = torch.tensor([float(sum(xs) * (dist.get_rank() + 1))])\n"
        "dist.all_reduce(t)\n"
        "total = t.item()\n"
        "print('total', total, tag, dist.get_rank(), dist.get_world_size())\n"
        "dist.get_rank() * 10\n",
    )
    assert capsys.readouterr().out == "total 18.0 t 0 2\n"
    assert repr(result) == "0"
    shell.run_line_magic("dip", "--pull total --rank 1")
    assert shell.user_ns["total"] == 18.0
    assert session.state is State.PATCHED


def test_see_all_labels_each_rank(notebook, capsys):
    shell, _ = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    shell.run_cell_magic(
        "dip", "--see all", "import time; time.sleep(0.05 * dist.get_rank()); print('r', dist.get_rank())"
    )
    assert capsys.readouterr().out == "[rank 0]\nr 0\n[rank 1]\nr 1\n"


def test_an_error_on_one_rank_fails_the_cell_and_names_the_rank(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    with pytest.raises(RankError) as raised:
        shell.run_cell_magic("dip", "", "if dist.get_rank() == 1:\n    raise ValueError('only on one')\n")
    assert [failure[0] for failure in raised.value.failures] == [(1,)]
    assert "rank 1: ValueError: only on one" in str(raised.value)
    assert session.state is State.PATCHED


def test_a_push_with_one_unsendable_name_pushes_none(notebook):
    shell, _ = notebook
    shell.run_line_magic("makedip", "-n 2 -a none")
    shell.user_ns.update(good=1, lock=threading.Lock())
    with pytest.raises(PushError, match="'lock' cannot be sent"):
        shell.run_line_magic("dip", "--push good lock")
    with pytest.raises(PullError, match="not defined on rank 0"):
        shell.run_line_magic("dip", "--pull good")


def test_a_killed_rank_fails_the_group_and_restart_rebuilds_it(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    victim = session.cluster.ranks[1].pid
    sigkill_and_wait(victim)
    with pytest.raises(InvalidSequence, match=rf"rank 1 \(pid {victim}\) died: signal SIGKILL"):
        shell.run_cell_magic("dip", "", "print('never')")
    assert session.state is State.FAILED
    shell.run_line_magic("makedip", "--restart")
    assert session.state is State.PATCHED
    assert [info.device for info in session.cluster.ranks] == ["cpu", "cpu"]
    assert victim not in {info.pid for info in session.cluster.ranks}
    shell.run_cell_magic("dip", "--quiet", "dist.barrier()")


def test_a_start_that_times_out_is_rolled_back_to_idle_with_nothing_running(notebook):
    shell, session = notebook
    with pytest.raises(LaunchFailed, match="raise it with %makedip -t SECONDS"):
        shell.run_line_magic("makedip", "-n 2 -a torch -t 0.01")
    assert session.state is State.IDLE
    assert descendants_alive() == []
    with pytest.raises(InvalidSequence, match="no DDP group is running"):
        shell.run_cell_magic("dip", "", "1")


def test_kill_ends_every_process_and_returns_to_idle(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    assert len(session.cluster.pids()) >= 3
    shell.run_line_magic("makedip", "--kill")
    assert session.state is State.IDLE
    assert descendants_alive() == []


def test_a_cell_past_its_timeout_fails_the_group(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a none")
    with pytest.raises(CellTimeout, match="past --timeout 0.5 s"):
        shell.run_cell_magic("dip", "--timeout 0.5", "import time; time.sleep(30)")
    assert session.state is State.FAILED


def test_every_rank_gets_torchruns_environment(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE")
    names += ("MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
    shell.user_ns["names"] = names
    shell.run_line_magic("dip", "--push names")
    shell.run_cell_magic(
        "dip",
        "--quiet",
        "import os\ncontract = {name: os.environ.get(name) for name in names}\nranked = dist.get_rank()",
    )
    seen = []
    for rank in (0, 1):
        shell.run_line_magic("dip", f"--pull contract ranked --rank {rank}")
        seen.append(shell.user_ns["contract"])
        assert shell.user_ns["ranked"] == rank
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    port = seen[0]["MASTER_PORT"]
    assert port.isdigit() and port != "29500"
    assert seen == [
        dict(zip(names, (str(rank), str(rank), "2", "2", "0", "1", "127.0.0.1", port, threads), strict=True))
        for rank in (0, 1)
    ]
    assert session.state is State.PATCHED


def test_a_pulled_device_tensor_arrives_on_the_cpu_wherever_it_is_nested(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a torch")
    shell.run_cell_magic(
        "dip",
        "--quiet",
        "from tests.devices import on_fake_gpu\n"
        "state = {'w': on_fake_gpu([float(dist.get_rank())]), 'more': [(on_fake_gpu([2.0]),)]}\n",
    )
    shell.run_line_magic("dip", "--pull state --rank 1")
    state = shell.user_ns["state"]
    import torch

    assert type(state["w"]) is torch.Tensor and state["w"].device.type == "cpu"
    assert state["w"].tolist() == [1.0] and state["more"][0][0].tolist() == [2.0]
    assert session.state is State.PATCHED


def test_a_value_the_notebook_cannot_load_is_a_pull_error_and_the_group_carries_on(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-n 2 -a none")
    shell.run_cell_magic(
        "dip",
        "--quiet",
        "class Unloadable:\n    def __reduce__(self):\n        return (open, ('/nonexistent/ddipp',))\n"
        "x = Unloadable()\n",
    )
    with pytest.raises(PullError, match="cannot be loaded in the notebook: .*No such file"):
        shell.run_line_magic("dip", "--pull x")
    assert session.state is State.PATCHED
    shell.run_cell_magic("dip", "--quiet", "y = 1")
