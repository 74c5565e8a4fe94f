"""`%makedip --engines slurm`: engines started by Slurm with ipyparallel's Slurm launcher, on
simulated hosts (slurmctld on one, slurmd on two; namespaces, as root; Slurm and MUNGE from
`make`)."""

from __future__ import annotations

import os
import re
import threading
import time

import psutil
import pytest

from ddipp.errors import GroupFailed, LaunchFailed
from ddipp.fsm import State
from ddipp.session import DipSession
from ddipp.spec import plan_group
from tests.hosts import assert_two_ranks_on_each_host, engine_connection, slurm_config_file, what_ranks_see
from tests.test_ssh_hosts import CELL_S, CONTRACT, GONE_S, LONG_T

pytestmark = pytest.mark.multihost


@pytest.fixture
def slurm(slurm_hosts, tmp_path, monkeypatch):
    """Slurm's nodes, SLURM_CONF set for its commands, the notebook's folder the test's own;
    nothing started in the nodes or left in Slurm's queue after."""
    hosts, slurm = slurm_hosts
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    monkeypatch.chdir(tmp_path)
    before = {node.name: {p.pid for p in node.processes()} for node in slurm.nodes}  # each slurmd
    yield hosts, slurm
    assert wait_for(lambda: slurm.jobs() == [])
    for node in slurm.nodes:
        assert wait_for(
            lambda node=node: [p for p in node.processes() if p.pid not in before[node.name]] == []
        )


def config_file(path, hosts, nodes: int, per_node: int) -> str:
    """An ipyparallel config file: the controller on the bridge, a job of `nodes` x `per_node`."""
    return slurm_config_file(str(path), hosts.bridge_address, nodes, per_node)


def wait_for(condition, timeout: float = GONE_S) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_engines_slurm_forms_a_group_in_node_order_and_kill_ends_the_job(
    slurm, launching_notebook, tmp_path, capsys
):
    hosts, cluster = slurm
    shell, session = launching_notebook
    config = config_file(tmp_path / "ipcluster_config.py", hosts, nodes=2, per_node=2)
    with open(config, "a") as file:  # the user's engine options, on a class the launcher inherits from
        file.write("c.SlurmLauncher.engine_args = ['--IPEngine.timeout=20']\n")
    shell.run_line_magic("makedip", f"--engines slurm -n 4 --config {config} -a torch")
    assert session.state is State.PATCHED
    assert len(cluster.jobs()) == 1
    (engines,) = session.cluster._cluster.engines.values()
    assert engines.program_args[-2:] == ["--IPEngine.timeout=20", "--IPEngine.max_heartbeat_misses=3"]
    seen = what_ranks_see(shell, (*CONTRACT, "SLURM_NODEID"), 4)
    first, second = cluster.nodes
    # Ranks follow the job's node order (rank 0 on its first node), whatever the registration order.
    assert_two_ranks_on_each_host(seen, first, second)
    assert [entry["SLURM_NODEID"] for entry in seen] == ["0", "0", "1", "1"]
    connection = engine_connection(session)
    assert connection["interface"] == f"tcp://{hosts.bridge_address}"
    assert connection["curve_serverkey"] and connection["key"]
    capsys.readouterr()
    shell.run_line_magic("dipstatus", "")
    status = capsys.readouterr().out
    for node in cluster.nodes:
        assert f"engines on {node.name}: 2, started by ddipp with ipyparallel's slurm launcher" in status
    # The job script is written in ddipp's private folder, not in the notebook's.
    assert os.listdir(tmp_path) == ["ipcluster_config.py"]
    # --restart cancels the job and submits a new one.
    job = cluster.jobs()
    shell.run_line_magic("makedip", "--restart")
    assert len(cluster.jobs()) == 1 and cluster.jobs() != job
    capsys.readouterr()
    shell.run_cell_magic("dip", "", "t = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())")
    assert capsys.readouterr().out == "4.0\n"
    controller = session.cluster.pids()
    shell.run_line_magic("makedip", "--kill")
    assert session.state is State.IDLE
    assert [pid for pid in controller if psutil.pid_exists(pid)] == []
    # The fixture checks that the job is gone from Slurm's queue and its engines from the nodes.


@pytest.mark.parametrize(
    ("option", "message"),
    [
        # Refused at once: sbatch's own words.
        ("#SBATCH --partition=nosuch", r"sbatch failed: sbatch: error: .*[Ii]nvalid partition"),
        # Queued for nodes that do not exist: -t's bound, with the job's state in Slurm's words.
        ("#SBATCH --nodes=3", r"0 of the 2 engine\(s\) .* within 5 s .*; their job \d+: PENDING"),
    ],
)
def test_a_job_slurm_does_not_run_fails_saying_why_and_leaves_nothing(
    slurm, launching_notebook, tmp_path, capsys, option, message
):
    hosts, cluster = slurm
    shell, session = launching_notebook
    path = tmp_path / "ipcluster_config.py"
    config_file(path, hosts, nodes=1, per_node=2)
    path.write_text(path.read_text().replace("#SBATCH --nodes=1", option))
    with pytest.raises(LaunchFailed, match=message):
        shell.run_line_magic("makedip", f"--engines slurm -n 2 --config {path} -a none -t 5")
    assert session.state is State.IDLE
    # No cancel command for a job that was never submitted (scancel '' fails, and some batch
    # systems read an empty id as every job), and no complaint about one.
    assert "could not stop" not in capsys.readouterr().err
    # The fixture checks that no job is left in Slurm's queue, and no process anywhere.


def test_a_job_whose_engines_end_at_once_fails_then_with_their_output(slurm, launching_notebook, tmp_path):
    hosts, cluster = slurm
    shell, session = launching_notebook
    path = config_file(tmp_path / "ipcluster_config.py", hosts, nodes=1, per_node=2)
    with open(path, "a") as file:  # the job runs; its engines exit at once (a value their option refuses)
        file.write("c.SlurmEngineSetLauncher.engine_args = ['--IPEngine.timeout=soon']\n")
    began = time.monotonic()
    with pytest.raises(LaunchFailed) as raised:
        shell.run_line_magic("makedip", f"--engines slurm -n 2 --config {path} -a none -t {LONG_T}")
    seconds = time.monotonic() - began
    message = str(raised.value)
    # Failed once the job had ended, not at -t, with its state and what the engines wrote.
    ended = r"--engines: 0 of the 2 engine\(s\) asked for registered, and their job has ended; "
    assert re.search(ended + r"their job \d+: (FAILED|COMPLETED) ", message), message
    assert "soon" in message
    assert seconds < LONG_T / 2
    assert session.state is State.IDLE
    print(f"the start failed {seconds:.1f} s after it began (-t {LONG_T})")
    # The fixture checks that no job is left in Slurm's queue, and no process anywhere.


def test_a_kernel_killed_during_a_cell_leaves_no_engine_on_any_node(slurm, tmp_path):
    from tests.hosts import kill_kernel_during_a_cell

    hosts, cluster = slurm
    config = config_file(tmp_path / "ipcluster_config.py", hosts, nodes=2, per_node=1)
    seconds = kill_kernel_during_a_cell(
        f"--engines slurm -n 2 --config {config} -a none", cluster.nodes, GONE_S
    )
    print(f"every engine on both nodes ended {seconds:.1f} s after the kernel's SIGKILL")


def test_a_rank_killed_on_a_node_fails_the_cell_naming_it_and_restart_submits_a_new_job(
    slurm, launching_notebook, tmp_path, capsys
):
    hosts, cluster = slurm
    shell, session = launching_notebook
    config = config_file(tmp_path / "ipcluster_config.py", hosts, nodes=2, per_node=1)
    shell.run_line_magic("makedip", f"--engines slurm -n 2 --config {config} -a torch -t 60")
    victim = session.cluster.ranks[1]
    node = next(node for node in cluster.nodes if node.name == victim.host)
    job = cluster.jobs()
    threading.Timer(1.0, node.run, [["kill", "-9", str(victim.pid)]]).start()
    began = time.monotonic()
    with pytest.raises(GroupFailed, match=rf"rank 1 \(pid {victim.pid} on {node.name}\) died"):
        shell.run_cell_magic(
            "dip",
            "",
            "import time\nfor _ in range(600):\n    dist.all_reduce(torch.ones(1))\n    time.sleep(0.1)",
        )
    noticed = time.monotonic() - began - 1.0
    assert noticed < CELL_S  # the collective timeout is 60 s
    assert session.state is State.FAILED
    shell.run_line_magic("makedip", "--restart")
    assert len(cluster.jobs()) == 1 and cluster.jobs() != job
    capsys.readouterr()
    shell.run_cell_magic("dip", "", "t = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())")
    assert capsys.readouterr().out == "2.0\n"
    print(f"the cell failed {noticed:.2f} s after the SIGKILL")


# (Needs no Slurm: a stand-in sbatch. Here, after the attach tests of the tier, because it starts
# a controller in the test process, as the --hosts and --engines tests do.)
def test_a_submit_command_that_does_not_answer_fails_the_start_and_leaves_nothing(tmp_path, monkeypatch):
    # A batch system whose controller is down: its submit command waits (sbatch retries for minutes).
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "sbatch").write_text(f"#!/bin/sh\necho $$ > {tmp_path}/sbatch.pid\nexec sleep 600\n")
    (bin_folder / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("ddipp.launchers.BATCH_COMMAND_S", 2.0)
    (tmp_path / "config.py").write_text("c.Cluster.controller_ip = '127.0.0.1'\n")
    monkeypatch.chdir(tmp_path)
    spec, _ = plan_group(engines="slurm", n="2", config="config.py", app="none")
    session = DipSession(say=lambda text: None)
    with pytest.raises(
        LaunchFailed, match=r"sbatch did not answer within 2 s: is the batch system's controller up\?"
    ):
        session.start(spec)
    assert session.state is State.IDLE
    assert session.cluster is None or session.cluster.pids() == frozenset()
    assert not psutil.pid_exists(int((tmp_path / "sbatch.pid").read_text()))  # killed, not left waiting
