"""`%makedip --engines mpi`: engines started by Open MPI's mpiexec with ipyparallel's MPI
launcher, on simulated hosts reached over ssh (namespaces, as root; Open MPI and OpenSSH from
`make`)."""

from __future__ import annotations

import time

import pytest

from ddipp.errors import LaunchFailed
from ddipp.fsm import State
from tests.hosts import assert_two_ranks_on_each_host, mpi_config_file, what_ranks_see
from tests.test_ssh_hosts import CONTRACT, GONE_S, LONG_T

pytestmark = pytest.mark.multihost


@pytest.fixture
def mpi_hosts(ssh_hosts):
    """The simulated hosts with sshd; after the test, what mpiexec started in them is given
    GONE_S to end (ipyparallel's nanny of an engine outlives it by about 3 s) before ssh_hosts
    checks that nothing is left."""
    from tests.hosts import missing_mpiexec

    reason = missing_mpiexec()
    if reason is not None:
        pytest.skip(reason)
    hosts, _ = ssh_hosts
    before = {h.name: {p.pid for p in h.processes()} for h in hosts.hosts}
    yield ssh_hosts
    wait_until_ended(hosts, before)


def wait_until_ended(hosts, before) -> float:
    """Seconds until every process started in `hosts` since `before` has ended (GONE_S at most)."""
    began = time.monotonic()
    while [p for h in hosts.hosts for p in h.processes() if p.pid not in before[h.name]]:
        if time.monotonic() - began > GONE_S:
            break
        time.sleep(0.1)
    return time.monotonic() - began


def test_engines_mpi_forms_a_group_across_hosts_in_mpi_rank_order_and_kill_ends_every_engine(
    mpi_hosts, launching_notebook, tmp_path, capsys
):
    hosts, access = mpi_hosts
    shell, session = launching_notebook
    before = {h.name: {p.pid for p in h.processes()} for h in hosts.hosts}
    second, first = hosts.hosts  # mpiexec places ranks 0 and 1 on the host it is given first
    config = mpi_config_file(str(tmp_path / "ipcluster_config.py"), hosts, access, [(first, 2), (second, 2)])
    shell.run_line_magic("makedip", f"--engines mpi -n 4 --config {config} -a torch")
    assert session.state is State.PATCHED
    seen = what_ranks_see(shell, (*CONTRACT, "OMPI_COMM_WORLD_RANK"), 4)
    assert_two_ranks_on_each_host(seen, first, second)
    assert [entry["OMPI_COMM_WORLD_RANK"] for entry in seen] == ["0", "1", "2", "3"]
    capsys.readouterr()
    shell.run_line_magic("dipstatus", "")
    status = capsys.readouterr().out
    assert f"engines on {first.name}: 2, started by ddipp with ipyparallel's mpi launcher" in status
    began = time.monotonic()
    shell.run_line_magic("makedip", "--kill")
    assert session.state is State.IDLE
    seconds = time.monotonic() - began
    print(f"--kill took {seconds:.1f} s; every process on both hosts had ended", end=" ")
    print(f"{seconds + wait_until_ended(hosts, before):.1f} s after it began")
    # The fixtures check that nothing is left on either host, nor here (mpiexec).


def test_an_mpiexec_that_ends_before_the_engines_register_fails_the_start_then(
    mpi_hosts, launching_notebook, tmp_path
):
    hosts, access = mpi_hosts
    shell, session = launching_notebook
    config = mpi_config_file(str(tmp_path / "ipcluster_config.py"), hosts, access, [(hosts.hosts[0], 2)])
    with open(config, "a") as file:  # an engine program that exits at once, on each rank
        file.write("c.MPIEngineSetLauncher.engine_cmd = ['python3', '-c', 'raise SystemExit(3)']\n")
    began = time.monotonic()
    with pytest.raises(LaunchFailed) as failed:
        shell.run_line_magic("makedip", f"--engines mpi -n 2 --config {config} -a none -t {LONG_T}")
    seconds = time.monotonic() - began
    message = str(failed.value)
    ended = "--engines: 0 of the 2 engine(s) asked for registered, and mpiexec has ended (exit code 3)\n"
    assert message.startswith(ended), message
    assert "Exit code:    3" in message  # mpiexec's own words, from its output
    assert seconds < LONG_T / 2
    assert session.state is State.IDLE
    print(f"the start failed {seconds:.1f} s after it began (-t {LONG_T})")


def test_a_kernel_killed_during_a_cell_leaves_no_engine_on_any_host_and_no_mpiexec_here(mpi_hosts, tmp_path):
    from tests.hosts import kill_kernel_during_a_cell

    hosts, access = mpi_hosts
    placed = [(host, 1) for host in hosts.hosts]
    config = mpi_config_file(str(tmp_path / "ipcluster_config.py"), hosts, access, placed)
    seconds = kill_kernel_during_a_cell(f"--engines mpi -n 2 --config {config} -a none", hosts.hosts, GONE_S)
    print(f"every engine on both hosts, and mpiexec here, ended {seconds:.1f} s after the kernel's SIGKILL")
