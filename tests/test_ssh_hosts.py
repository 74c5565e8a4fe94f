"""`%makedip --hosts`: engines started over ssh (ipyparallel's SSH launcher) on simulated hosts,
each with its own sshd (namespaces, as root; OpenSSH from `make`)."""

from __future__ import annotations

import os
import subprocess
import time

import psutil
import pytest

from ddipp.errors import GroupFailed, LaunchFailed
from ddipp.fsm import State
from tests.hosts import engine_connection, what_ranks_see

pytestmark = pytest.mark.multihost

# Bounds a test waits for; each is a guard against a hang, well above what is measured.
GONE_S = 15.0  # engines end within ENGINE_HEARTBEAT_MISSES x ~1 s of their controller
# -t for starts whose engines end at once: they fail when the engines have ended, long before.
LONG_T = 120
CELL_S = 30.0
CONTRACT = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
)


def hosts_flag(hosts, access, counts) -> str:
    return ",".join(f"{access.aliases[h.name]}:{n}" for h, n in zip(hosts.hosts, counts, strict=True))


def new_engines(hosts, before) -> dict[str, list[psutil.Process]]:
    """Per host, the processes started there since `before` (pids per host)."""
    return {h.name: [p for p in h.processes() if p.pid not in before[h.name]] for h in hosts.hosts}


def test_hosts_starts_engines_over_ssh_in_host_order_and_kill_leaves_nothing_on_any_host(
    ssh_hosts, launching_notebook, capsys
):
    hosts, access = ssh_hosts
    shell, session = launching_notebook
    before = {h.name: {p.pid for p in h.processes()} for h in hosts.hosts}
    # The second host first, with two ranks: rank 0 and LOCAL_RANK follow --hosts, not ids.
    ordered = [hosts.hosts[1], hosts.hosts[0]]
    flag = ",".join(f"{access.aliases[h.name]}:{n}" for h, n in zip(ordered, (2, 1), strict=True))
    shell.run_line_magic("makedip", f"--hosts {flag} --config {access.config} -a torch")
    assert session.state is State.PATCHED
    started = new_engines(hosts, before)
    assert all(started[h.name] for h in hosts.hosts)
    # Every engine is told to end soon after its controller.
    (engines,) = session.cluster._cluster.engines.values()
    assert all(
        e.engine_args[-1:] == ["--IPEngine.max_heartbeat_misses=3"] for e in engines.launchers.values()
    )
    seen = what_ranks_see(shell, CONTRACT, 3)
    names = [h.name for h in ordered]
    assert [entry["host"] for entry in seen] == [names[0], names[0], names[1]]
    assert [entry["total"] for entry in seen] == [6.0] * 3
    assert [
        (entry["RANK"], entry["LOCAL_RANK"], entry["LOCAL_WORLD_SIZE"], entry["GROUP_RANK"]) for entry in seen
    ] == [
        ("0", "0", "2", "0"),
        ("1", "1", "2", "0"),
        ("2", "0", "1", "1"),
    ]
    assert {entry["MASTER_ADDR"] for entry in seen} == {ordered[0].address}
    # The controller listens on the bridge only; its messages are signed and encrypted.
    connection = engine_connection(session)
    assert connection["interface"] == f"tcp://{hosts.bridge_address}"
    assert connection["curve_serverkey"] and connection["key"] and connection["signature_scheme"]
    capsys.readouterr()
    shell.run_line_magic("dipstatus", "")
    status = capsys.readouterr().out
    for host, count in zip(ordered, (2, 1), strict=True):
        assert f"engines on {access.aliases[host.name]}: {count}, started by ddipp over ssh" in status
    folders = [folder for _, folder in session.cluster._remote_folders]
    home = os.path.expanduser("~")
    assert len(folders) == 2 and all(os.path.isdir(os.path.join(home, folder)) for folder in folders)
    controller = session.cluster.pids()
    assert controller
    shell.run_line_magic("makedip", "--kill")
    assert session.state is State.IDLE
    assert [pid for pid in controller if psutil.pid_exists(pid)] == []
    assert [folder for folder in folders if os.path.exists(os.path.join(home, folder))] == []
    # The fixture checks that nothing ddipp started is left in either host.


def test_a_kernel_killed_during_a_cell_leaves_no_engine_on_any_host(ssh_hosts):
    from tests.hosts import kill_kernel_during_a_cell

    hosts, access = ssh_hosts
    line = f"--hosts {hosts_flag(hosts, access, (1, 1))} --config {access.config} -a none"
    seconds = kill_kernel_during_a_cell(line, hosts.hosts, GONE_S)
    print(f"every engine on both hosts ended {seconds:.1f} s after the kernel's SIGKILL")


def test_a_partitioned_host_fails_the_cell_before_the_collective_timeout_and_restart_works(
    ssh_hosts, launching_notebook, capsys
):
    hosts, access = ssh_hosts
    shell, session = launching_notebook
    shell.run_line_magic(
        "makedip", f"--hosts {hosts_flag(hosts, access, (1, 1))} --config {access.config} -a torch -t 60"
    )
    lost = hosts.hosts[1]
    link = hosts.link_of(lost)
    began = time.monotonic()
    try:
        subprocess.run(["ip", "link", "set", link, "down"], check=True)
        with pytest.raises(GroupFailed, match=f"rank 1 .* on {lost.name}"):
            shell.run_cell_magic(
                "dip",
                "",
                "import time\nfor _ in range(600):\n    dist.all_reduce(torch.ones(1))\n    time.sleep(0.1)",
            )
        noticed = time.monotonic() - began
        assert noticed < CELL_S  # the collective timeout is 60 s
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
    assert session.state is State.FAILED
    shell.run_line_magic("makedip", "--restart")
    capsys.readouterr()
    shell.run_cell_magic("dip", "", "t = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())")
    assert capsys.readouterr().out == "2.0\n"
    print(f"the partition failed the cell after {noticed:.1f} s")


def test_gpu_ranks_on_hosts_without_gpus_fail_naming_the_host_and_what_its_engines_see(
    ssh_hosts, launching_notebook
):
    hosts, access = ssh_hosts
    shell, session = launching_notebook
    with pytest.raises(LaunchFailed) as raised:
        shell.run_line_magic(
            "makedip", f"--hosts {hosts_flag(hosts, access, (2, 1))} --config {access.config} -g all -a none"
        )
    # The GPUs are counted on the host, by its engines: the notebook's machine has none either.
    first = hosts.hosts[0].name
    assert str(raised.value).startswith(
        f"-g: {first} runs 2 GPU rank(s), on its GPU(s) 0,1, but its engines see 0 GPU(s) "
        "(no NVIDIA driver, no CUDA_VISIBLE_DEVICES)"
    )
    assert session.state is State.IDLE


def test_engines_that_fail_on_their_hosts_fail_the_start_with_what_they_wrote(ssh_hosts, launching_notebook):
    hosts, access = ssh_hosts
    shell, session = launching_notebook
    before = host_folders()  # those a killed kernel left (a test above)
    # ssh works, the engines start and exit at once: a value their option does not take.
    with open(access.config, "a") as file:
        file.write("c.SSHEngineSetLauncher.engine_args = ['--IPEngine.timeout=soon']\n")
    began = time.monotonic()
    with pytest.raises(LaunchFailed) as raised:
        shell.run_line_magic(
            "makedip",
            f"--hosts {hosts_flag(hosts, access, (1, 1))} --config {access.config} -a none -t {LONG_T}",
        )
    seconds = time.monotonic() - began
    message = str(raised.value)
    # Failed once the engines had ended, not at -t.
    assert "--hosts: 0 of the 2 engine(s) asked for registered, and the engine(s) on " in message
    assert "ended before the group formed" in message
    assert seconds < LONG_T / 2
    for host in hosts.hosts:
        assert f"an engine's output on {access.aliases[host.name]}, last lines:" in message
    assert "soon" in message
    assert session.state is State.IDLE
    # Each host's folder is removed, though ipyparallel has forgotten the engines that ended.
    assert host_folders() == before
    print(f"the start failed {seconds:.1f} s after it began (-t {LONG_T})")


def host_folders() -> set[str]:
    """The hosts' folders of ddipp's groups under the profile (the hosts share this filesystem)."""
    import ipyparallel as ipp

    folder = os.path.join(ipp.Cluster(load_profile=False).profile_dir, "ddipp-hosts")
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def test_in_a_notebook_kernel_engines_that_end_on_their_hosts_fail_the_start_then(
    ssh_hosts, kernel, tmp_path
):
    # In a kernel, ipyparallel runs its launchers on an event loop of its own that notices the
    # engines end and tells the client so (EngineError): the start fails the same way.
    hosts, access = ssh_hosts
    session, _ = kernel
    config = tmp_path / "engines_that_exit.py"
    with open(access.config) as file:
        config.write_text(
            file.read() + "\nc.SSHEngineSetLauncher.engine_args = ['--IPEngine.timeout=soon']\n"
        )
    flags = f"--hosts {hosts_flag(hosts, access, (1, 1))} --config {config} -a none -t {LONG_T}"
    cell = session.run(f"%load_ext ddipp\n%makedip {flags}")
    seconds = cell.finished_at - cell.sent_at
    assert (cell.status, cell.reply["content"]["ename"]) == ("error", "LaunchFailed")
    message = cell.reply["content"]["evalue"]
    assert "--hosts: 0 of the 2 engine(s) asked for registered, and the engine(s) on " in message
    assert "ended before the group formed" in message and "soon" in message
    assert seconds < LONG_T / 2
    assert session.run("print(get_ipython()._ddipp_session[0].state.name)").text() == "IDLE\n"
    print(f"in a kernel, the start failed {seconds:.1f} s after it began (-t {LONG_T})")
