"""Groups on other hosts that fail before any engine runs: bad connection files (--attach),
hosts ssh cannot resolve and bad launcher config files (--hosts), a controller that other hosts
could not reach (--engines); the wait for engines that cannot come any more."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from ddipp import launchers
from ddipp.errors import LaunchFailed
from ddipp.fsm import State
from ddipp.session import DipSession
from ddipp.spec import plan_group


@pytest.mark.parametrize("content", [None, "not json", '{"key": "no controller here"}'])
def test_attaching_to_a_file_that_is_not_a_connection_file_fails_and_stays_idle(tmp_path, content):
    path = tmp_path / "connection.json"
    if content is not None:
        path.write_text(content)
    spec, _ = plan_group(attach=str(path), app="none")
    session = DipSession(say=lambda text: None)
    with pytest.raises(LaunchFailed, match="not an ipyparallel cluster file or client connection file"):
        session.start(spec)
    assert session.state is State.IDLE
    assert session.cluster is None


@pytest.mark.parametrize(
    ("hosts", "config", "message"),
    [
        ("nosuchhost.invalid:1", None, r"--hosts: ssh cannot resolve 'nosuchhost.invalid'"),
        ("localhost:1", "missing_config.py", r"--config missing_config.py: not an ipyparallel config file"),
        ("localhost:1", "broken_config.py", r"--config broken_config.py: not an ipyparallel config file"),
        (
            "localhost:1",
            "remote_controller.py",
            r"controller_launcher_class is not taken: ddipp runs the controller",
        ),
    ],
)
def test_hosts_that_cannot_be_started_fail_before_anything_runs_and_stay_idle(
    tmp_path, monkeypatch, hosts, config, message
):
    if shutil.which("ssh") is None:
        pytest.skip("needs OpenSSH's client (ssh): `make test` installs it when run as root")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_config.py").write_text("c.SSHEngineSetLauncher.ssh_args = [\n")
    (tmp_path / "remote_controller.py").write_text("c.Cluster.controller_launcher_class = 'ssh'\n")
    spec, _ = plan_group(hosts=hosts, config=config, app="none")
    session = DipSession(say=lambda text: None)
    with pytest.raises(LaunchFailed, match=message):
        session.start(spec)
    assert session.state is State.IDLE
    assert session.cluster is None or session.cluster.pids() == frozenset()


def test_engines_without_an_address_other_hosts_reach_fails_before_anything_runs(monkeypatch):
    # This machine's name resolves to loopback (Debian's 127.0.1.1 line) and no controller_ip is set.
    monkeypatch.setattr("socket.gethostbyname", lambda name: "127.0.1.1")
    spec, _ = plan_group(engines="slurm", n="2", app="none")
    session = DipSession(say=lambda text: None)
    with pytest.raises(LaunchFailed, match=r"resolves to 127.0.1.1, .*c.Cluster.controller_ip = "):
        session.start(spec)
    assert session.state is State.IDLE
    assert session.cluster is None or session.cluster.pids() == frozenset()


class Registering:
    """A client whose engines never register: each wait ends at its timeout, or as `error` says."""

    ids: list[int] = []

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def wait_for_engines(self, n, timeout, interactive):
        if self.error is not None:
            raise self.error
        time.sleep(timeout)
        raise TimeoutError


def waiting_batch_ranks(monkeypatch, states: list[str]) -> launchers.BatchRanks:
    """Ranks of a Slurm job whose state squeue gives as `states`, one per question."""
    ranks = launchers.BatchRanks()
    ranks._spec, _ = plan_group(engines="slurm", n="2", app="none")
    ranks._cluster = SimpleNamespace(engines={"job": SimpleNamespace(job_id="7")})
    monkeypatch.setattr(launchers, "_job_state", lambda launcher, job: states.pop(0) if states else "RUNNING")
    monkeypatch.setattr(launchers, "ENDED_CHECK_S", 0.01)
    monkeypatch.setattr(launchers, "JOB_CHECK_S", 0.0)
    return ranks


def test_registration_stops_waiting_once_the_job_has_ended_not_at_the_timeout(monkeypatch):
    states = ["PENDING (Resources)", "squeue failed: timed out", "RUNNING (None)", "FAILED (NonZeroExitCode)"]
    ranks = waiting_batch_ranks(monkeypatch, states)
    ended = r"^--engines: 0 of the 2 engine\(s\) asked for registered, and their job has ended$"
    with pytest.raises(LaunchFailed, match=ended):
        ranks._wait_for_engines(Registering(), 2, timeout=60)
    assert states == []  # every state asked for; squeue failing is not an end


def test_registration_waits_out_the_timeout_while_the_job_may_still_start(monkeypatch):
    ranks = waiting_batch_ranks(monkeypatch, [])
    with pytest.raises(TimeoutError):
        ranks._wait_for_engines(Registering(), 2, timeout=0.2)


def test_engines_ipyparallel_saw_end_fail_the_registration_saying_so(monkeypatch):
    from ipyparallel.error import EngineError

    ranks = waiting_batch_ranks(monkeypatch, [])
    with pytest.raises(LaunchFailed, match="and ipyparallel says: Engine set stopped"):
        ranks._wait_for_engines(Registering(EngineError("Engine set stopped: {}")), 2, timeout=60)


def test_registration_stops_waiting_once_mpiexec_has_ended_saying_how_it_ended(monkeypatch):
    ranks = waiting_batch_ranks(monkeypatch, [])
    ranks._spec, _ = plan_group(engines="mpi", n="2", app="none")
    started = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    mpiexec = psutil.Process(started.pid)
    mpiexec.wait()  # reaped by psutil, which keeps the status, as ipyparallel's watching thread does
    started.wait()
    engine_set = SimpleNamespace(process=mpiexec, mpi_cmd=["mpiexec", "-v"])
    ranks._cluster = SimpleNamespace(engines={"mpi": engine_set})
    message = (
        r"^--engines: 0 of the 2 engine\(s\) asked for registered, and mpiexec has ended \(exit code 3\)$"
    )
    with pytest.raises(LaunchFailed, match=message):
        ranks._wait_for_engines(Registering(), 2, timeout=60)


def test_the_state_of_a_slurm_job_is_squeues_or_why_squeue_could_not_say(tmp_path, monkeypatch):
    squeue = tmp_path / "squeue"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for script, state in (
        ("echo 'FAILED (NonZeroExitCode)'", "FAILED (NonZeroExitCode)"),
        ("echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1",
         "squeue failed: slurm_load_jobs error: Unable to contact slurm controller"),
    ):  # fmt: skip
        squeue.write_text(f"#!/bin/sh\n{script}\n")
        squeue.chmod(0o755)
        assert launchers._job_state("slurm", "7") == state
