"""Fixtures shared by the tests that start real ranks."""

from __future__ import annotations

import os
import uuid

import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell

from ddipp.magics import AutodipTransformer, DipMagics
from ddipp.notebooks import KernelSession
from ddipp.session import DipSession
from tests.processes import TAG_VARIABLE, descendants_alive, files_left, wait_until_gone

# The helpers there assert what tests share (a contract, what is left): with pytest's messages.
pytest.register_assert_rewrite("tests.hosts")

# How long what a test started may take to end once it is stopped (a bound against a hang).
LEFTOVER_S = 15.0


@pytest.fixture
def notebook():
    """An IPython shell with ddipp's magics and autodip on a fresh session, as `%load_ext ddipp`
    sets them up; nothing may outlive it."""
    shell = InteractiveShell.instance()
    session = DipSession()
    transformer = AutodipTransformer(session)
    shell.register_magics(DipMagics(shell, session, transformer))
    shell.input_transformers_cleanup.append(transformer)
    yield shell, session
    shell.input_transformers_cleanup.remove(transformer)
    session.shutdown()
    assert descendants_alive() == []


@pytest.fixture
def launching_notebook(monkeypatch):
    """An IPython shell with ddipp's magics, for groups ddipp starts on other hosts: nothing it
    started may outlive it, here (found by a tag in the environment: a controller's children
    that outlive it are no longer its descendants) or in the hosts (their fixtures check them)."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VARIABLE, tag)
    shell = InteractiveShell.instance()
    session = DipSession()
    shell.register_magics(DipMagics(shell, session))
    yield shell, session
    session.shutdown()
    assert session.cluster is None or session.cluster.pids() == frozenset()
    assert [p for p in wait_until_gone(tag, LEFTOVER_S) if p.pid in _local_pids()] == []


def _local_pids() -> set[int]:
    """Processes of this machine's PID namespace (those of simulated hosts are the hosts' to check)."""
    own = os.readlink("/proc/self/ns/pid")
    pids = set()
    for pid in psutil.pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == own:
                pids.add(pid)
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def fastai_ranks():
    """2 CPU ranks with the app of the installed fastai, shared by a module's tests; nothing may
    outlive them."""
    shell = InteractiveShell.instance()
    session = DipSession()
    shell.register_magics(DipMagics(shell, session))
    shell.run_line_magic("makedip", "-n 2")
    yield shell
    session.shutdown()
    assert descendants_alive() == []


@pytest.fixture
def kernel(tmp_path):
    """A real `python3` kernel and the tag its processes carry; nothing may outlive it."""
    tag = uuid.uuid4().hex
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, **{TAG_VARIABLE: tag, "IPYTHONDIR": str(tmp_path / "ipython")}, TMPDIR=str(temp))
    session = KernelSession(env)
    yield session, tag
    try:
        session.close()
    finally:
        assert wait_until_gone(tag, 10) == []
    assert files_left(temp, tmp_path / "ipython") == []


@pytest.fixture
def simulated_hosts():
    """Two simulated hosts (tests/hosts.py); every namespace, link and process is gone after."""
    yield from _simulated_hosts(2)


@pytest.fixture
def ssh_hosts(simulated_hosts, tmp_path):
    """The simulated hosts with sshd each, and an ipyparallel config file to reach them; nothing
    started in them after sshd is left."""
    from tests.hosts import SshAccess, missing_sshd

    reason = missing_sshd()
    if reason is not None:
        pytest.skip(reason)
    access = SshAccess(simulated_hosts)
    # What runs in the hosts before ddipp starts anything there (each host's sshd).
    before = {host.name: {p.pid for p in host.processes()} for host in simulated_hosts.hosts}
    access.config = access.config_file(str(tmp_path / "ipcluster_config.py"))
    yield simulated_hosts, access
    for host in simulated_hosts.hosts:
        assert [p for p in host.processes() if p.pid not in before[host.name]] == []


@pytest.fixture
def slurm_hosts():
    """Slurm on three simulated hosts: slurmctld on the last, slurmd on the first two (the
    nodes); every daemon, namespace, link and process is gone after."""
    from tests.hosts import SlurmCluster, missing_slurm

    reason = missing_slurm()
    if reason is not None:
        pytest.skip(reason)
    for hosts in _simulated_hosts(3):
        slurm = SlurmCluster(hosts, hosts.hosts[2], hosts.hosts[:2])
        try:
            yield hosts, slurm
        finally:
            slurm.close()


def _simulated_hosts(count: int):
    from tests.hosts import SimulatedHosts, missing_requirement

    reason = missing_requirement()
    if reason is not None:
        pytest.skip(reason)
    hosts = SimulatedHosts(count)
    try:
        yield hosts
    finally:
        hosts.close()
    assert hosts.leftovers() == []
    assert descendants_alive() == []


@pytest.fixture
def controller(simulated_hosts):
    """An ipyparallel controller listening on the hosts' bridge; engines are started by hand."""
    from tests.hosts import start_controller, stop_controller

    cluster = start_controller(simulated_hosts.bridge_address)
    try:
        yield cluster
    finally:
        assert stop_controller(cluster) == []
