"""Groups on other hosts that fail before any engine runs: bad connection files (--attach),
hosts ssh cannot resolve and bad launcher config files (--hosts), a controller that other hosts
could not reach (--engines)."""

from __future__ import annotations

import shutil

import pytest

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
    ],
)
def test_hosts_that_cannot_be_started_fail_before_anything_runs_and_stay_idle(
    tmp_path, monkeypatch, hosts, config, message
):
    if shutil.which("ssh") is None:
        pytest.skip("needs OpenSSH's client (ssh): `make test` installs it when run as root")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_config.py").write_text("c.SSHEngineSetLauncher.ssh_args = [\n")
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
