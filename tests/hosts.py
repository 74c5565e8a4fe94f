"""Simulated hosts on this machine: each its own network, UTS and PID namespaces (needs root, or
root in a user namespace: ROOTLESS).

A host is a network namespace joined to a bridge in the root namespace by a veth pair, in which
`unshare` starts a small pid-1 reaper with its own host name, `/etc/hosts` and `/run`; commands
run inside it through `nsenter`. Every name carries a random suffix, and `close` removes every
namespace, link and process (ending pid 1 of a PID namespace ends everything in it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.processes import files_left

TOOLS = ("ip", "unshare", "nsenter")
# Without root: the tier in a user namespace of its own, root there (with its own loopback).
ROOTLESS = "unshare --user --map-root-user --net --mount sh -c 'ip link set lo up && " + (
    "python -m pytest --run-multihost'"
)
NEEDS_ROOT = (
    "simulated hosts need network, UTS and PID namespaces (root, or root in a user namespace) and "
    "{tools}: run the tier as root (sudo -E python -m pytest --run-multihost) or in a user namespace "
    "of its own (" + ROOTLESS + ")"
)
NO_NETNS_FOLDER = (
    "in a user namespace, simulated hosts need a mount namespace of their own for /run/netns "
    "({error}): run the tier as " + ROOTLESS
)
# Network namespaces are named by files here (`ip netns`).
NETNS_FOLDER = "/run/netns"
READY_S = 10.0
STOP_S = 5.0
# The controller's heartbeat period bounds how fast engines register (~4 s at the default).
CONTROLLER_ARGS = ["--HeartMonitor.period=500"]
# Debian's `127.0.1.1 <hostname>` line: gloo would listen on 127.0.1.1 unless told the interface.
HOSTS_FILE = "127.0.0.1 localhost\n127.0.1.1 {name}\n{peers}"
# pid 1 of a host: names the host, mounts its own /etc/hosts and /run, then reaps orphans.
REAPER = """
import os, socket, subprocess, sys, time
socket.sethostname(sys.argv[1])
subprocess.run(["mount", "--bind", sys.argv[2], "/etc/hosts"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
print("ready", flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.1)
"""


SSHD = "/usr/sbin/sshd"
NO_SSHD = (
    "the SSH tests need OpenSSH's server ({sshd}) and client (ssh, ssh-keygen): "
    "`make test` installs them when run as root (apt-get install openssh-server openssh-client)"
)
SSHD_IN_USER_NAMESPACE = (
    "sshd cannot serve in a user namespace (its privilege separation calls setgroups, which the "
    "namespace denies): run the SSH tests as root"
)
# One sshd per host, on its own address: key-only, for this run's key, no PAM.
SSHD_CONFIG = """
ListenAddress {address}
HostKey {host_key}
AuthorizedKeysFile {authorized}
PidFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
"""


SSH_HOST = "Host {alias}\n    HostName {address}\n"
SSH_DEFAULTS = """Host *
    User root
    IdentityFile {key}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    StrictHostKeyChecking accept-new
    LogLevel ERROR
"""


def missing_requirement() -> str | None:
    """Why simulated hosts cannot be built here, or None. In a user namespace, `ip netns` gets a
    folder of this mount namespace's own (the machine's belongs to its real root)."""
    if os.geteuid() != 0 or any(shutil.which(tool) is None for tool in TOOLS):
        return NEEDS_ROOT.format(tools=", ".join(TOOLS))
    if in_user_namespace() and not os.access(NETNS_FOLDER, os.W_OK):
        try:
            os.makedirs(NETNS_FOLDER, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "netns", NETNS_FOLDER], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as error:
            return NO_NETNS_FOLDER.format(error=getattr(error, "stderr", b"").decode().strip() or error)
    return None


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace of its own (root there, not on the machine)."""
    with open("/proc/self/uid_map") as file:
        return file.read().split() != ["0", "0", "4294967295"]


def missing_sshd() -> str | None:
    """Why sshd cannot run in the simulated hosts here, or None."""
    if not os.path.exists(SSHD) or any(shutil.which(tool) is None for tool in ("ssh", "ssh-keygen")):
        return NO_SSHD.format(sshd=SSHD)
    if in_user_namespace():
        return SSHD_IN_USER_NAMESPACE
    return None


@dataclass
class Host:
    """One simulated host: its name, address and the pid (in the root namespace) of its pid 1."""

    name: str
    address: str
    namespace: str
    init: subprocess.Popen
    init_pid: int

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` to run inside this host."""
        return ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-n", "-p", "--", *argv]

    def run(self, argv: Sequence[str]) -> str:
        """Run `argv` inside this host and return its stdout."""
        return subprocess.run(self.command(argv), check=True, capture_output=True, text=True).stdout

    def start(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        """Start `argv` inside this host, in the background."""
        return subprocess.Popen(
            self.command(argv), env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def processes(self) -> list[psutil.Process]:
        """The live processes inside this host (in its PID namespace), pid 1 (the reaper) aside."""
        namespace = _pid_namespace(self.init_pid)
        return [
            process
            for process in psutil.process_iter()
            if process.pid != self.init_pid and _pid_namespace(process.pid) == namespace and _alive(process)
        ]

    def start_engines(self, count: int, engine_file: str, env: Mapping[str, str]) -> None:
        """Start `count` ipyparallel engines here, by hand, for the controller of `engine_file`."""
        for _ in range(count):
            self.start([sys.executable, "-m", "ipyparallel.engine", f"--file={engine_file}"], env)

    def start_sshd(self, folder: str, authorized: str) -> None:
        """An SSH server on this host's address that accepts the key in `authorized`."""
        host_key = os.path.join(folder, f"host-key-{self.name}")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
        config = os.path.join(folder, f"sshd-{self.name}.conf")
        with open(config, "w") as file:
            file.write(SSHD_CONFIG.format(address=self.address, host_key=host_key, authorized=authorized))
        self.run(["mkdir", "-p", "/run/sshd"])  # its privilege separation folder, in this host's /run
        self.start([SSHD, "-D", "-e", "-f", config], os.environ)
        deadline = time.monotonic() + READY_S
        while 22 not in _listening_ports(self):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start on {self.name}")
            time.sleep(0.05)

    def stop_engines(self, keep: Collection[int] = ()) -> list[psutil.Process]:
        """End every process inside this host but those in `keep` (pids: its sshd); those that
        outlived SIGTERM and then SIGKILL."""
        processes = [process for process in self.processes() if process.pid not in keep]
        for process in processes:
            _signal(process, 15)
        _, lingering = psutil.wait_procs(processes, timeout=STOP_S)
        for process in lingering:
            _signal(process, 9)
        return [p for p in psutil.wait_procs(lingering, timeout=STOP_S)[1] if _alive(p)]


class SimulatedHosts:
    """`count` hosts on a bridge of their own in 10.231.N.0/24 (N free, chosen at random)."""

    def __init__(self, count: int) -> None:
        self.suffix = uuid.uuid4().hex[:6]
        self.bridge = f"dbr{self.suffix}"
        self.subnet = _free_subnet()
        self.bridge_address = f"10.231.{self.subnet}.1"
        self.hosts: list[Host] = []
        self._links: list[str] = []
        self._namespaces: list[str] = []
        self._folder = tempfile.mkdtemp(prefix="ddipp-hosts-")
        try:
            self._build(count)
        except BaseException:
            self.close()
            raise

    def _build(self, count: int) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        names = [f"host{index}-{self.suffix}" for index in range(count)]
        addresses = [f"10.231.{self.subnet}.{11 + index}" for index in range(count)]
        peers = "".join(f"{address} {name}\n" for name, address in zip(names, addresses, strict=True))
        for name, address in zip(names, addresses, strict=True):
            self.hosts.append(self._build_host(name, address, peers))

    def _build_host(self, name: str, address: str, peers: str) -> Host:
        index = len(self.hosts)
        namespace, outside, inside = (f"d{kind}{self.suffix}{index}" for kind in ("ns", "vo", "vi"))
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self._links.append(outside)
        _ip("link", "set", outside, "master", self.bridge, "up")
        _ip("link", "set", inside, "netns", namespace)
        inner = ("netns", "exec", namespace, "ip")
        _ip(*inner, "link", "set", "lo", "up")
        _ip(*inner, "addr", "add", f"{address}/24", "dev", inside)
        _ip(*inner, "link", "set", inside, "up")
        hosts_file = os.path.join(self._folder, f"hosts-{name}")
        with open(hosts_file, "w") as file:
            file.write(HOSTS_FILE.format(name=name, peers=peers))
        init = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "unshare", "--uts", "--pid", "--fork", "--mount-proc"]
            + [sys.executable, "-c", REAPER, name, hosts_file],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # unshare's complaints when its child is SIGKILLed at close
            text=True,
        )
        if init.stdout.readline().strip() != "ready":
            init.kill()
            raise RuntimeError(f"simulated host {name} did not start (exit {init.wait()})")
        init_pid = _reaper_pid(init.pid)
        return Host(name, address, namespace, init, init_pid)

    def link_of(self, host: Host) -> str:
        """The bridge's end of `host`'s link: setting it down cuts the host off (a partition)."""
        return f"dvo{self.suffix}{self.hosts.index(host)}"

    def close(self) -> None:
        """End every process in the hosts, then remove their namespaces and links."""
        for host in self.hosts:
            try:
                os.kill(host.init_pid, 9)  # the kernel then ends everything in its PID namespace
            except ProcessLookupError:
                pass
            host.init.wait(timeout=READY_S)
            host.init.stdout.close()
        for namespace in self._namespaces:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
        for link in self._links:
            subprocess.run(["ip", "link", "delete", link], capture_output=True)
        shutil.rmtree(self._folder, ignore_errors=True)
        self.hosts, self._namespaces, self._links = [], [], []

    def leftovers(self) -> list[str]:
        """Namespaces and links of these hosts that still exist."""
        listed = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        listed += subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return sorted({word.split("@")[0].rstrip(":") for word in listed.split() if self.suffix in word})


class SshAccess:
    """sshd in every host, a key for this run, and an ssh config naming each host by an alias
    (nothing of the user's own ssh configuration is read or changed)."""

    def __init__(self, hosts: SimulatedHosts) -> None:
        self.folder = hosts._folder
        self.key = os.path.join(self.folder, "client-key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key], check=True)
        authorized = os.path.join(self.folder, "authorized_keys")
        shutil.copy(self.key + ".pub", authorized)
        self.aliases = {host.name: f"node-{host.name}" for host in hosts.hosts}
        self.ssh_config = os.path.join(self.folder, "ssh_config")
        with open(self.ssh_config, "w") as file:
            for host in hosts.hosts:
                file.write(SSH_HOST.format(alias=self.aliases[host.name], address=host.address))
            file.write(
                SSH_DEFAULTS.format(key=self.key, known_hosts=os.path.join(self.folder, "known_hosts"))
            )
        for host in hosts.hosts:
            host.start_sshd(self.folder, authorized)

    def config_file(self, path: str) -> str:
        """An ipyparallel config file (what `%makedip --config` takes) that uses this ssh config."""
        options = ["-F", self.ssh_config]
        with open(path, "w") as file:
            file.write(f"c.SSHEngineSetLauncher.ssh_args = {options!r}\n")
            file.write(f"c.SSHEngineSetLauncher.scp_args = {options!r}\n")
        return path


NO_MPIEXEC = (
    "the MPI tests need Open MPI's mpiexec (its options are in their config): `make test` installs "
    "it when run as root and no mpiexec is there (apt-get install openmpi-bin)"
)


def missing_mpiexec() -> str | None:
    """Why Open MPI's mpiexec cannot start engines here, or None."""
    from ddipp.launchers import _is_open_mpi

    return None if _is_open_mpi(("mpiexec",)) else NO_MPIEXEC


def mpi_config_file(
    path: str, hosts: SimulatedHosts, access: SshAccess, placed: Sequence[tuple[Host, int]]
) -> str:
    """An ipyparallel config file (what `%makedip --config` takes): the controller on the bridge,
    mpiexec placing `placed` ranks on each host in that order, starting them over this run's ssh."""
    subnet = f"10.231.{hosts.subnet}.0/24"
    mpi_args = [
        "--allow-run-as-root",  # the tier runs as root
        "--host", ",".join(f"{access.aliases[host.name]}:{count}" for host, count in placed),
        "--mca", "plm_rsh_agent", f"ssh -F {access.ssh_config}",
        # Open MPI's own connections (mpiexec to each host's daemon) on the bridge only.
        "--mca", "oob_tcp_if_include", subnet,
    ]  # fmt: skip
    with open(path, "w") as file:
        file.write(f"c.Cluster.controller_ip = {hosts.bridge_address!r}\n")
        file.write(f"c.MPILauncher.mpi_args = {mpi_args!r}\n")
    return path


SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged")
NO_SLURM = (
    "the Slurm tests need Slurm and MUNGE ({tools}): `make test` installs them when run as root "
    "(apt-get install slurm-wlm munge)"
)
SLURM_IN_USER_NAMESPACE = (
    "slurmd needs cgroup hierarchies mounted in each host, which a user namespace may not mount: "
    "run the Slurm tests as root"
)
SLURM_READY_S = 30.0
# A cluster of its own: one partition of every node, root runs everything, processes tracked by
# /proc (no cgroup plugin to set up), state and logs in this run's folder.
SLURM_CONF = """ClusterName=ddipp
SlurmctldHost={head}({head_address})
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool-%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
{nodes}
PartitionName=ddipp Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
SLURM_NODE = "NodeName={name} NodeAddr={address} NodeHostname={name} CPUs={cpus} State=UNKNOWN\n"
# slurmd needs the cgroup hierarchies that `ip netns exec` hides (it mounts a fresh /sys): mount
# in a host those this machine has, as it has them.
MOUNT_CGROUPS = "mount -t tmpfs cgroup /sys/fs/cgroup\n"
MOUNT_CGROUP = "mkdir -p {path} && mount -t {kind} -o {options} cgroup {path}\n"


# A job of `per_node` ranks on each of `nodes` nodes, in an ipyparallel config file (ipyparallel's
# default template leaves the placement to Slurm; a user's template says what their cluster needs).
SLURM_TEMPLATE = """#!/bin/sh
#SBATCH --job-name=ipengine-{{cluster_id}}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node={per_node}
#SBATCH --output={{output_file}}
srun {{program_and_args}}
"""
SLURM_CONFIG = (
    "c.Cluster.controller_ip = {address!r}\nc.SlurmEngineSetLauncher.batch_template = {template!r}\n"
)


def slurm_config_file(path: str, controller_ip: str, nodes: int, per_node: int) -> str:
    """An ipyparallel config file (what `%makedip --config` takes): the controller on
    `controller_ip`, the engines in a job of `nodes` x `per_node`."""
    template = SLURM_TEMPLATE.format(nodes=nodes, per_node=per_node)
    with open(path, "w") as file:
        file.write(SLURM_CONFIG.format(address=controller_ip, template=template))
    return path


def missing_slurm() -> str | None:
    """Why Slurm cannot run in the simulated hosts here, or None."""
    if any(shutil.which(tool) is None for tool in SLURM_TOOLS):
        return NO_SLURM.format(tools=", ".join(SLURM_TOOLS))
    if in_user_namespace():
        return SLURM_IN_USER_NAMESPACE
    return None


class SlurmCluster:
    """Slurm on simulated hosts: slurmctld on `head`, slurmd on each of `nodes`, and one munged
    here whose socket (in this run's folder) every host uses. `env` is what a Slurm client
    (sbatch, squeue) needs. `close` ends the daemons; ending the hosts ends what ran in them."""

    def __init__(self, hosts: SimulatedHosts, head: Host, nodes: Sequence[Host]) -> None:
        self.nodes = list(nodes)
        self.folder = os.path.join(hosts._folder, "slurm")
        os.makedirs(os.path.join(self.folder, "state"))
        self._daemons: list[subprocess.Popen] = []
        try:
            self._build(head)
        except BaseException:
            self.close()
            raise

    def _build(self, head: Host) -> None:
        nodes = self.nodes
        key = os.path.join(self.folder, "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as file:
            file.write(os.urandom(1024))
        socket_path = os.path.join(self.folder, "munge.socket")
        munge = ["munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}"]
        for name in ("pid-file", "seed-file", "log-file"):
            munge.append(f"--{name}={os.path.join(self.folder, 'munged.' + name.split('-')[0])}")
        self._start(munge)
        conf = os.path.join(self.folder, "slurm.conf")
        nodes_conf = "".join(
            SLURM_NODE.format(name=node.name, address=node.address, cpus=os.cpu_count() or 1)
            for node in nodes
        )
        with open(conf, "w") as file:
            file.write(
                SLURM_CONF.format(
                    head=head.name,
                    head_address=head.address,
                    munge_socket=socket_path,
                    folder=self.folder,
                    nodes=nodes_conf,
                )
            )
        self.env = {"SLURM_CONF": conf}
        environment = dict(os.environ, **self.env)
        self._start(head.command(["slurmctld", "-D", "-f", conf]), environment)
        for node in nodes:
            os.makedirs(os.path.join(self.folder, f"spool-{node.name}"))
            node.run(["sh", "-c", _cgroup_mounts()])
            self._start(node.command(["slurmd", "-D", "-f", conf, "-N", node.name]), environment)
        self._wait_until_idle(environment)

    def _start(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self._daemons.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    def _wait_until_idle(self, env: Mapping[str, str]) -> None:
        deadline = time.monotonic() + SLURM_READY_S
        while True:
            states = subprocess.run(
                ["sinfo", "--noheader", "--Node", "--format=%N %t"], env=env, capture_output=True, text=True
            ).stdout.split()
            if states.count("idle") == len(self.nodes):
                return
            if time.monotonic() > deadline:
                logs = subprocess.run(
                    f"tail -n 5 {self.folder}/*.log", shell=True, capture_output=True, text=True
                ).stdout
                raise RuntimeError(
                    f"Slurm's nodes did not come up within {SLURM_READY_S:g} s: {states}\n{logs}"
                )
            time.sleep(0.2)

    def jobs(self) -> list[str]:
        """The jobs Slurm knows of that have not ended."""
        listed = subprocess.run(
            ["squeue", "--noheader", "--format=%i %T"], env=dict(os.environ, **self.env), capture_output=True,
            text=True, check=True,
        ).stdout  # fmt: skip
        return listed.split("\n")[:-1]

    def close(self) -> None:
        """End the daemons this started (by pid), the last started first."""
        for daemon in reversed(self._daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        self._daemons = []


def _cgroup_mounts() -> str:
    """A shell script that mounts, under a fresh /sys/fs/cgroup, the cgroup hierarchies of this machine."""
    script = MOUNT_CGROUPS
    with open("/proc/self/mounts") as file:
        for line in file:
            _, path, kind, options, *_ = line.split()
            if kind in ("cgroup", "cgroup2") and path.startswith("/sys/fs/cgroup/"):
                script += MOUNT_CGROUP.format(path=path, kind=kind, options=options)
    return script


# What each rank sees of `names` in its environment, its host, and an all_reduce of every rank's.
SEEN = (
    "import os, socket\nt = torch.tensor([float(dist.get_rank() + 1)])\ndist.all_reduce(t)\n"
    "seen = dict({n: os.environ.get(n) for n in names}, host=socket.gethostname(), total=t.item())\n"
)


def what_ranks_see(shell, names: Sequence[str], world_size: int) -> list[dict]:
    """Per rank of the group in `shell` (app torch): the environment variables `names`, its host
    name (`host`) and the sum of every rank's rank + 1 (`total`, by all_reduce)."""
    shell.user_ns["names"] = tuple(names)
    shell.run_line_magic("dip", "--push names")
    shell.run_cell_magic("dip", "", SEEN)
    seen = []
    for rank in range(world_size):
        shell.run_line_magic("dip", f"--pull seen --rank {rank}")
        seen.append(shell.user_ns["seen"])
    return seen


def assert_two_ranks_on_each_host(seen: Sequence[dict], first: Host, second: Host) -> None:
    """`seen` (`what_ranks_see`, with CONTRACT) is a group of ranks 0 and 1 on `first`, 2 and 3 on
    `second`, with torchrun's contract per host and rank 0's address as MASTER_ADDR."""
    assert [entry["host"] for entry in seen] == [first.name, first.name, second.name, second.name]
    assert [entry["total"] for entry in seen] == [10.0] * 4
    assert [
        (entry["RANK"], entry["LOCAL_RANK"], entry["LOCAL_WORLD_SIZE"], entry["GROUP_RANK"]) for entry in seen
    ] == [("0", "0", "2", "0"), ("1", "1", "2", "0"), ("2", "0", "2", "1"), ("3", "1", "2", "1")]
    assert {entry["MASTER_ADDR"] for entry in seen} == {first.address}


def engine_connection(session) -> dict:
    """The engine connection file of the controller that `session`'s group started."""
    with open(session.cluster._cluster.controller.connection_files["engine"]) as file:
        return json.load(file)


# A notebook kernel stand-in: IPython with ddipp, a group, then a cell that keeps the engines busy.
KERNEL = """
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ddipp")
shell.run_line_magic("makedip", {line!r})
print("ready", flush=True)
shell.run_cell_magic("dip", "", "import time\\ntime.sleep(600)")
"""


def kill_kernel_during_a_cell(makedip: str, hosts: Sequence[Host], gone_s: float) -> float:
    """Start a group with `%makedip makedip` in a kernel stand-in, SIGKILL it during a cell; the
    seconds until every process it started, here and in `hosts`, has ended (at most `gone_s`)."""
    before = {host.name: {p.pid for p in host.processes()} for host in hosts}
    ipython_dir = Path(os.environ["IPYTHONDIR"])
    security = frozenset(path.name for path in (ipython_dir / "profile_default" / "security").glob("*"))
    temp = Path(tempfile.mkdtemp(prefix="kernel-tmp-"))
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL.format(line=makedip)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TMPDIR=str(temp)),
    )
    try:
        assert kernel.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # the cell has reached the engines
        started = {
            host.name: [p for p in host.processes() if p.pid not in before[host.name]] for host in hosts
        }
        assert all(started.values()), started
        here = psutil.Process(kernel.pid).children(recursive=True)
        kernel.kill()
        killed = time.monotonic()
        kernel.wait()
        left = psutil.wait_procs([p for ps in started.values() for p in ps] + here, timeout=gone_s)[1]
        assert [p for p in left if _alive(p)] == []
        seconds = time.monotonic() - killed
        left_behind = files_left(temp, ipython_dir, security)
        assert left_behind == [], left_behind
        return seconds
    finally:
        if kernel.poll() is None:
            kernel.kill()
        kernel.stdout.close()
        shutil.rmtree(temp, ignore_errors=True)


def _listening_ports(host: Host) -> set[int]:
    """TCP ports listening inside `host` (its own network namespace)."""
    lines = host.run(["ss", "-Hltn"]).splitlines()
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in lines}


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def _free_subnet() -> int:
    """A third octet N such that no interface here has an address in 10.231.N.0/24."""
    used = {
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.address.startswith("10.231.")
    }
    free = [n for n in range(100, 250) if not any(a.startswith(f"10.231.{n}.") for a in used)]
    return random.choice(free)


def _reaper_pid(unshare_pid: int) -> int:
    """The pid (in this namespace) of the reaper that `unshare --fork` started."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        for process in psutil.Process(unshare_pid).children(recursive=True):
            if process.name().startswith("python"):
                return process.pid
        time.sleep(0.05)
    raise RuntimeError("the reaper of a simulated host was not found")


def start_controller(address: str):
    """An ipyparallel controller on `address` with no engines (a fresh cluster id), and its cluster."""
    import ipyparallel as ipp

    cluster = ipp.Cluster(
        controller_ip=address,
        n=0,
        cluster_id=f"hosts-{uuid.uuid4().hex[:8]}",
        controller_args=CONTROLLER_ARGS,
        shutdown_atexit=False,
    )
    cluster.start_controller_sync()
    # The controller writes its connection files once it listens, after the start returns.
    deadline = time.monotonic() + READY_S
    while not all(os.path.exists(path(cluster)) for path in (engine_file, client_file)):
        if time.monotonic() > deadline:
            stop_controller(cluster)
            raise RuntimeError("the controller wrote no connection files")
        time.sleep(0.05)
    return cluster


def engine_file(cluster) -> str:
    """The engine connection file of `cluster`'s controller."""
    return os.path.join(cluster.profile_dir, "security", f"ipcontroller-{cluster.cluster_id}-engine.json")


def client_file(cluster) -> str:
    """The client connection file of `cluster`'s controller."""
    return os.path.join(cluster.profile_dir, "security", f"ipcontroller-{cluster.cluster_id}-client.json")


def stop_controller(cluster) -> list[psutil.Process]:
    """Stop the controller and every process it started; those still alive after SIGKILL."""
    family = [psutil.Process(cluster.controller.process.pid)]
    family += family[0].children(recursive=True)
    cluster.stop_cluster_sync()
    _, lingering = psutil.wait_procs(family, timeout=STOP_S)
    for process in lingering:
        _signal(process, 9)
    return [p for p in psutil.wait_procs(lingering, timeout=STOP_S)[1] if _alive(p)]


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _signal(process: psutil.Process, number: int) -> None:
    try:
        process.send_signal(number)
    except psutil.NoSuchProcess:
        pass


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
