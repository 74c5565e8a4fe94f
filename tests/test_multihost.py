"""`%makedip --attach` on engines started by hand on two simulated hosts (namespaces, as root)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ddipp.errors import GroupFailed, InvalidSequence, RankError
from ddipp.fsm import State
from tests.hosts import client_file, engine_file

pytestmark = pytest.mark.multihost

CONTRACT = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE")
CONTRACT += ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")
# On rank 0: the addresses that listen on MASTER_PORT (the rendezvous store it serves).
LISTENING = (
    "import psutil\n"
    "port = int(os.environ['MASTER_PORT'])\n"
    "listening = sorted({c.laddr.ip for c in psutil.net_connections('tcp') if c.status == 'LISTEN' "
    "and c.laddr.port == port})\n"
)
REGISTER_S = 60.0


def start_engines(hosts, controller, per_host: int):
    """`per_host` engines on each simulated host, registered; a client to count them.

    One at a time, host after host, so that engine ids alternate between hosts (as they come
    when hosts start together): ranks must still be contiguous per host.
    """
    import ipyparallel as ipp

    client = ipp.Client(client_file(controller))
    for _ in range(per_host):
        for host in hosts.hosts:
            host.start_engines(1, engine_file(controller), os.environ)
            client.wait_for_engines(len(client.ids) + 1, timeout=REGISTER_S, interactive=False)
    return client


@pytest.fixture
def interruptible():
    """SIGINT raises KeyboardInterrupt in this process, as in a kernel, also where pytest was
    started with SIGINT ignored (a background job of a non-interactive shell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def attached_notebook(simulated_hosts, controller):
    """An IPython shell with ddipp's magics; the engines it attaches to are the test's to stop."""
    from IPython.core.interactiveshell import InteractiveShell

    from ddipp.magics import DipMagics
    from ddipp.session import DipSession

    shell = InteractiveShell.instance()
    session = DipSession()
    shell.register_magics(DipMagics(shell, session))
    yield shell, session
    session.shutdown()
    for host in simulated_hosts.hosts:
        assert host.stop_engines() == []


@pytest.mark.parametrize("per_host", [1, 2])
def test_a_group_forms_across_hosts_with_torchruns_contract_per_host(
    simulated_hosts, controller, attached_notebook, per_host, capsys
):
    shell, session = attached_notebook
    start_engines(simulated_hosts, controller, per_host)
    began = time.perf_counter()
    shell.run_line_magic("makedip", f"--attach {client_file(controller)} -a torch")
    formed = time.perf_counter() - began
    world = 2 * per_host
    assert session.spec.world_size == world
    shell.user_ns["names"] = CONTRACT
    shell.run_line_magic("dip", "--push names")
    capsys.readouterr()
    shell.run_cell_magic(
        "dip",
        "",
        "import os, socket\n"
        "t = torch.tensor([float(dist.get_rank() + 1)])\n"
        "dist.all_reduce(t)\n"
        "total = t.item()\n"
        "seen = dict({n: os.environ.get(n) for n in names}, host=socket.gethostname())\n"
        "print('total', total)\n" + LISTENING,
    )
    assert capsys.readouterr().out == f"total {world * (world + 1) / 2}\n"
    seen = []
    for rank in range(world):
        shell.run_line_magic("dip", f"--pull seen total --rank {rank}")
        assert shell.user_ns["total"] == world * (world + 1) / 2
        seen.append(shell.user_ns["seen"])
    hosts = [entry["host"] for entry in seen]
    order = list(dict.fromkeys(hosts))
    assert sorted(order) == sorted(host.name for host in simulated_hosts.hosts)
    address = {host.name: host.address for host in simulated_hosts.hosts}
    for rank, entry in enumerate(seen):
        host = order.index(entry["host"])
        assert entry | {"host": None} == {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank - host * per_host),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(per_host),
            "GROUP_RANK": str(host),
            "GROUP_WORLD_SIZE": "2",
            "MASTER_ADDR": address[order[0]],
            "MASTER_PORT": seen[0]["MASTER_PORT"],
            "GLOO_SOCKET_IFNAME": entry["GLOO_SOCKET_IFNAME"],
            "host": None,
        }
        assert entry["GLOO_SOCKET_IFNAME"].startswith("dvi")
    assert [info.host for info in session.cluster.ranks] == hosts
    shell.run_line_magic("dip", "--pull listening")
    assert shell.user_ns["listening"] == [address[order[0]]]  # rank 0's address only
    print(f"group of {world} formed across 2 hosts in {formed:.2f} s")


def test_a_rank_killed_on_another_host_fails_the_cell_and_restart_reforms_on_the_rest(
    simulated_hosts, controller, attached_notebook, capsys
):
    shell, session = attached_notebook
    client = start_engines(simulated_hosts, controller, 2)
    shell.run_line_magic("makedip", f"--attach {client_file(controller)} -a torch -t 30")
    victim = session.cluster.ranks[3]
    host = next(h for h in simulated_hosts.hosts if h.name == victim.host)
    killed = time.perf_counter()
    host.run(["kill", "-9", str(victim.pid)])
    while victim.engine_id in client.ids and time.perf_counter() - killed < 10:
        time.sleep(0.005)
    unregistered = time.perf_counter() - killed
    expected = rf"rank 3 \(pid {victim.pid} on {victim.host}\) died: its engine is no longer registered"
    # The notebook's own client may hear of the unregistration a moment after the test's: the
    # death is then noticed by the cell itself rather than before it; either way it is named.
    with pytest.raises((InvalidSequence, GroupFailed), match=expected):
        shell.run_cell_magic("dip", "", "print('never')")
    assert session.state is State.FAILED
    shell.run_line_magic("makedip", "--restart")
    assert session.state is State.PATCHED
    assert session.spec.world_size == 3
    assert victim.engine_id not in [info.engine_id for info in session.cluster.ranks]
    capsys.readouterr()
    shell.run_cell_magic("dip", "", "t = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())")
    assert capsys.readouterr().out == "3.0\n"
    print(f"the killed engine was unregistered {unregistered * 1000:.0f} ms after SIGKILL")


def test_kill_detaches_and_leaves_the_engines_running(simulated_hosts, controller, attached_notebook, capsys):
    shell, session = attached_notebook
    client = start_engines(simulated_hosts, controller, 1)
    engines = sorted(client.ids)
    # The cluster file, this time, rather than the client connection file.
    shell.run_line_magic("makedip", f"--attach {controller.cluster_file} -a torch")
    capsys.readouterr()
    shell.run_line_magic("dipstatus", "")
    status = capsys.readouterr().out
    assert "attached from" in status and "not started by ddipp" in status
    for info in session.cluster.ranks:
        assert f"  {info.host}  " in status and f"{info.pid}" in status
    shell.run_line_magic("makedip", "--kill")
    assert session.state is State.IDLE
    time.sleep(1.0)  # an engine that was being stopped would have unregistered by now
    assert sorted(client.ids) == engines
    assert client[engines].apply_sync(lambda: "still here") == ["still here"] * len(engines)
    for host in simulated_hosts.hosts:
        assert host.processes() != []


def test_an_interrupt_stops_a_long_cell_on_the_ranks_of_every_host(
    simulated_hosts, controller, attached_notebook, capsys, interruptible
):
    shell, session = attached_notebook
    start_engines(simulated_hosts, controller, 1)
    shell.run_line_magic("makedip", f"--attach {client_file(controller)} -a none")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    began = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("dip", "", "import time\ntime.sleep(60)")
    assert time.perf_counter() - began < 10
    assert session.state is State.PATCHED
    capsys.readouterr()
    shell.run_cell_magic("dip", "", "print('still here')")
    assert capsys.readouterr().out == "still here\n"


def test_a_rank_that_raises_on_one_host_releases_a_peer_waiting_in_a_collective_on_another(
    simulated_hosts, controller, attached_notebook, capsys
):
    shell, session = attached_notebook
    start_engines(simulated_hosts, controller, 1)
    shell.run_line_magic("makedip", f"--attach {client_file(controller)} -a torch -t 60")
    assert len({info.host for info in session.cluster.ranks}) == 2
    # A DDP model holds the backend: leaving the group alone would not close gloo's connections.
    shell.run_cell_magic(
        "dip", "", "model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))\n"
    )
    began = time.monotonic()
    with pytest.raises(RankError, match="rank 1: ValueError: rank one fails"):
        shell.run_cell_magic(
            "dip",
            "",
            "if dist.get_rank() == 1:\n    raise ValueError('rank one fails')\n"
            "dist.all_reduce(torch.ones(1))\n",
        )
    assert time.monotonic() - began < 15  # the collective timeout is 60 s
    assert "formed again" in capsys.readouterr().out
    shell.run_cell_magic("dip", "", "t = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())")
    assert capsys.readouterr().out == "2.0\n"
