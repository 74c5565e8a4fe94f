"""Ranks on engines that ddipp starts on other hosts, with ipyparallel's own launchers.

`%makedip --hosts node1:2,node2:2` starts a controller here, listening only on the address this
machine reaches the first host from, and the engines over SSH with ipyparallel's
`SSHEngineSetLauncher` (ssh options, keys and the remote python from the user's ssh config and
an ipyparallel config file, `--config FILE`). `%makedip --engines slurm -n 4` starts them with
one of ipyparallel's batch (or MPI) launchers instead, configured by the same file; the
controller then listens on the address this machine's name resolves to. From then on the group
is run as an attached one (`ddipp.hosts`): ranks ordered host by host, liveness from
registration, interrupts through the engines' nannies. What ddipp started it stops at `--kill`,
and it removes what it wrote on every host.

Off this machine ipyparallel's traffic is encrypted (CurveZMQ). Nothing ties an engine on
another host to the notebook kernel's life but its controller, which runs here under
`ddipp.guard`: the engines end themselves after `ENGINE_HEARTBEAT_MISSES` missed heartbeats
(ipyparallel's check, while idle) or as many failed attempts to reach the controller
(`rank.watch_controller`, also during a cell), so a kernel that is killed leaves nothing
behind on any host, within seconds.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import urlparse

import psutil

from . import rank as rank_side
from .cluster import (
    CONTROLLER_ARGS,
    IpyparallelRanks,
    _is_alive,
    _start_controller,
    describe_exit,
    own_logger,
)
from .errors import LaunchFailed
from .hosts import AttachedRanks
from .rank import HOST_INDEX, route_to
from .spec import GroupSpec

# An engine whose controller is gone ends itself after this many missed heartbeats, each
# (the controller's period + 0.5 s) apart: about 3 s here (ipyparallel's default is 50: ~51 s).
ENGINE_HEARTBEAT_MISSES = 3
ENGINE_ARGS = [f"--IPEngine.max_heartbeat_misses={ENGINE_HEARTBEAT_MISSES}"]
# CurveZMQ for every connection to the controller. Enabled alone, ipyparallel drops the
# messages' signing key (and CurveZMQ accepts any client that knows the controller's public
# key): ddipp keeps a key, set with it in a private config file (not on the command line,
# which every user can read).
CONTROLLER_CONFIG = "c.Session.key = {key!r}\nc.IPController.enable_curve = True\n"
# After the user's own ssh options (ssh takes the first value of an option it is given).
CONNECT_S = 10
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_S}"]
SSH_OPTIONS += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]  # a host that dies mid-call
# What ssh resolves a host to (`ssh -G`), and how long that may take.
RESOLVE_S = 10.0

# How long removing a host's folder over ssh may take.
REMOVE_S = 30.0
FOLDER_LEFT = "ddipp: could not remove {folder} on {host} ({error}); remove it by hand"
BAD_CONFIG = "--config {path}: not an ipyparallel config file ({error})"
UNRESOLVED = "--hosts: ssh cannot resolve {host!r} ({error}); check the name or your ssh config"
NOT_STARTED = "--hosts: the engines did not start over ssh on {hosts}: {error}"
NOT_SUBMITTED = (
    "--engines {name}: ipyparallel's {name} launcher could not start the engines: {error} "
    "(the job's options come from --config: its batch template, queue, account)"
)
NO_CONTROLLER_ADDRESS = (
    "--engines {name}: this machine's name {host!r} resolves to {address}, which other hosts cannot "
    "reach; give the controller an address they reach in --config: c.Cluster.controller_ip = '...'"
)
COMMAND_FAILED = "{command} failed: {said}"
CONTROLLER_ELSEWHERE = (
    "--config {path}: c.Cluster.controller_launcher_class is not taken: ddipp runs the controller "
    "on this machine, tied to the notebook's kernel; remove that line"
)
# How long a batch system's command (sbatch, scancel) may take: they answer in about a second,
# or retry for minutes when the batch system's controller cannot be reached.
BATCH_COMMAND_S = 60.0
COMMAND_SLOW = "{command} did not answer within {seconds:g} s: is the batch system's controller up?"
NOT_STOPPED = (
    "ddipp: {flag}: the launcher could not stop every engine ({error}); any still running end by "
    "themselves within seconds, the controller being gone"
)
JOB_NOT_CANCELLED = "; the job may still be queued: cancel it with your batch system"
NO_COMMAND = "{command} is not found here: run the notebook where the batch system's commands work"
# How much of a batch job's output a failed start shows.
OUTPUT_LINES = 20
HOST_OUTPUT = "\nan engine's output on {host}, last lines:\n{tail}"
JOB_STATE = "; their job {job}: {state}"
STILL_PENDING = " (waiting for nodes: raise -t, or ask for nodes the cluster has)"
# While engines register: how often ddipp asks whether the launcher's engines have ended.
ENDED_CHECK_S = 1.0
ENGINES_ENDED = "{flag}: {found} of the {wanted} engine(s) asked for registered, and {why}"
HOST_ENDED = "the engine(s) on {hosts} ended before the group formed"
ENGINE_SET_ENDED = "ipyparallel says: {error}"
JOB_ENDED = "their job has ended"
LAUNCHER_ENDED = "{command} has ended ({how})"
# Open MPI gives the processes it starts on other hosts only the variables named with -x (MPICH's
# mpiexec passes every variable): how to tell it from its --version.
OPEN_MPI_VERSION = ("Open MPI", "OpenRTE")
# Slurm job states after which no engine of the job comes (squeue's long names).
JOB_FINAL = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
}  # fmt: skip
# How often squeue is asked while a job's engines register (a job may wait in the queue long).
JOB_CHECK_S = 5.0
JOB_OUTPUT = "\nthe engines' output ({path}), last lines:\n{tail}"


def load_config(path: str | None):
    """The traitlets config in `path` (a `.py` or `.json` ipyparallel config file), or an empty one."""
    from traitlets.config import Config
    from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

    if path is None:
        return Config()
    folder, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
    loader_class = JSONFileConfigLoader if name.endswith(".json") else PyFileConfigLoader
    try:
        config = loader_class(name, path=folder).load_config()
    except Exception as error:
        raise LaunchFailed(BAD_CONFIG.format(path=path, error=error)) from error
    if "controller_launcher_class" in config.Cluster:
        raise LaunchFailed(CONTROLLER_ELSEWHERE.format(path=path))
    return config


def ssh_address(host: str, ssh_args: list[str]) -> str:
    """The address ssh connects to for `host` (its config's `HostName`, aliases resolved)."""
    import socket

    destination = host.rpartition("@")[2]
    try:
        found = subprocess.run(
            ["ssh", "-G", *ssh_args, destination],
            capture_output=True,
            text=True,
            timeout=RESOLVE_S,
            check=True,
        ).stdout
        name = next(line.split()[1] for line in found.splitlines() if line.startswith("hostname "))
        return socket.getaddrinfo(name, None, socket.AF_INET)[0][4][0]
    except Exception as error:
        detail = getattr(error, "stderr", "") or error
        raise LaunchFailed(UNRESOLVED.format(host=host, error=str(detail).strip())) from None


def _indexed_launchers(created: list):
    """ipyparallel's SSH engine launchers, each engine told which `--hosts` entry it is on, each
    engine's launcher noted in `created` (ipyparallel forgets those whose engine has ended)."""
    from ipyparallel.cluster.launcher import SSHEngineLauncher, SSHEngineSetLauncher
    from traitlets import Unicode

    class IndexedSSHEngineLauncher(SSHEngineLauncher):
        host_index = Unicode("", config=True, help="the engine's host among --hosts (ddipp)")
        ended = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

        def get_env(self):
            return dict(super().get_env(), **{HOST_INDEX: self.host_index})

        def wait_one(self, timeout):
            # (ipyparallel's waiting thread: it returns once the engine has ended on its host)
            exit_code = super().wait_one(timeout)
            self.ended = True
            return exit_code

    class IndexedSSHEngineSetLauncher(SSHEngineSetLauncher):
        launcher_class = IndexedSSHEngineLauncher

    return IndexedSSHEngineSetLauncher


def remote_folder(profile_dir: str, cluster_id: str, index: int) -> str:
    """Where host `index` keeps this group's files: a folder of its own (hosts may share a home),
    relative to the remote home when the local one holds it (as ipyparallel's default)."""
    folder = os.path.join(profile_dir, "ddipp-hosts", f"{cluster_id}-host{index}")
    home = os.path.expanduser("~")
    return os.path.relpath(folder, home) if folder.startswith(home + os.sep) else folder


class LaunchedRanks(AttachedRanks):
    """A group on engines that ddipp starts with one of ipyparallel's launchers; stopped at the end.

    Subclasses configure the launcher (`_configure`); the controller, its keys, the engines'
    registration and their tie to the controller are the same for every launcher.
    """

    flag = ""  # the %makedip flag that asks for these ranks, for messages
    not_stopped_advice = ""  # what to do when the launcher could not stop the engines
    # Whether the engines get their connection details (keys included) in their environment,
    # which only an encrypted channel may carry; else they read the connection file.
    connection_in_environment = True

    def _configure(self, spec: GroupSpec, config, cluster_id: str, profile_dir: str) -> tuple[type, str]:
        """Set `config` up for the launcher; return its class and the controller's address."""
        raise NotImplementedError

    def _launch(self, spec: GroupSpec) -> None:
        import ipyparallel as ipp

        config = load_config(spec.config)
        cluster_id = f"ddipp-{uuid.uuid4().hex[:10]}"
        profile_dir = ipp.Cluster(log=own_logger(), load_profile=False).profile_dir
        self._rendezvous_dir = tempfile.mkdtemp(prefix="ddipp-controller-")  # 0700, removed at stop
        launcher_class, controller_ip = self._configure(spec, config, cluster_id, profile_dir)
        private = os.path.join(self._rendezvous_dir, "controller.py")
        with open(os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(CONTROLLER_CONFIG.format(key=uuid.uuid4().hex.encode()))
        cluster = self._cluster = ipp.Cluster(
            n=spec.world_size,
            cluster_id=cluster_id,
            profile_dir=profile_dir,
            controller_ip=controller_ip,
            controller_args=[*CONTROLLER_ARGS, f"--config={private}"],
            engine_launcher_class=launcher_class,
            delay=0,
            engine_timeout=math.ceil(spec.timeout),
            log=own_logger(),
            shutdown_atexit=False,
            load_profile=False,
            send_engines_connection_env=self.connection_in_environment,
            config=config,
        )
        _start_controller(cluster, self._rendezvous_dir)
        self._adopt(cluster.controller.process.pid)
        _wait_for(cluster.controller.connection_files["client"], spec.timeout)
        os.remove(private)  # read by now: the key lives on in the 0600 connection files only
        try:
            cluster.start_engines_sync()
        except Exception as error:
            raise LaunchFailed(self._not_started(spec, error)) from error
        finally:
            self._engines_started()
        if os.path.exists(cluster.cluster_file):
            os.chmod(cluster.cluster_file, 0o600)  # it names the connection files and the launcher's options
        client = cluster.connect_client_sync()
        try:
            self._adopt_engines(client, spec.world_size, spec.timeout, self.flag)
        except LaunchFailed as error:
            raise LaunchFailed(f"{error}{self._engines_output()}") from None
        registration = urlparse(client._config["registration"])
        self._view.apply_sync(
            rank_side.watch_controller, registration.hostname, registration.port, ENGINE_HEARTBEAT_MISSES
        )

    def _not_started(self, spec: GroupSpec, error: Exception) -> str:
        """What to say when the launcher failed to start the engines."""
        raise NotImplementedError

    def _wait_for_engines(self, client, wanted: int, timeout: float) -> None:
        """As for attached engines, but a start whose engines have ended fails then, not at -t."""
        from ipyparallel.error import EngineError

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return super()._wait_for_engines(client, wanted, max(min(ENDED_CHECK_S, left), 0))
            except TimeoutError:
                if left <= ENDED_CHECK_S:
                    raise
                why = self._engines_ended()
            except EngineError as error:  # ipyparallel saw an engine, or all of them, end
                why = self._engines_ended() or ENGINE_SET_ENDED.format(error=error)
            if why:
                found = len(client.ids)
                raise LaunchFailed(ENGINES_ENDED.format(flag=self.flag, found=found, wanted=wanted, why=why))

    def _engines_ended(self) -> str:
        """Why not every engine asked for can still register ('' while they can, or if unknown)."""
        return ""

    def _as_chosen_on_host(self, engine: dict) -> dict:
        # A launcher may pass the engines this kernel's whole environment (sbatch does by
        # default, mpiexec to the ranks on its own host, MPICH's to all): a value equal to this
        # kernel's is not the host's choice.
        chosen = {
            name: value for name, value in engine["environment"].items() if os.environ.get(name) != value
        }
        return dict(engine, environment=chosen)

    def _engines_started(self) -> None:
        """Note what the launcher left on other hosts (called whether it succeeded or not)."""

    def _engines_output(self) -> str:
        """What the engines wrote where the launcher keeps it, for a start that failed ('' if none)."""
        return ""

    # What ddipp started here (the controller), as for a group on this machine.
    pids = IpyparallelRanks.pids

    def _stop_failed(self, error: Exception) -> None:
        # Engines on other hosts are not ours to end by pid: say what may still run.
        print(NOT_STOPPED.format(flag=self.flag, error=error) + self.not_stopped_advice, file=sys.stderr)

    def stop(self) -> None:
        """Leave the group, stop the engines (through the launcher) and the controller."""
        super().stop()  # leaves the group and disconnects
        self._stop_local()  # ipyparallel stops the engines, then the controller


class SshRanks(LaunchedRanks):
    """A group on engines that ddipp starts over SSH, one set per host; stopped at the end."""

    flag = "--hosts"

    def __init__(self) -> None:
        super().__init__()
        self._remote_folders: list[tuple[object, str]] = []
        self._launched: list = []  # every engine launcher of this start, ended or not
        self._engine_launchers: list = []

    def _configure(self, spec: GroupSpec, config, cluster_id: str, profile_dir: str) -> tuple[type, str]:
        launcher = config.SSHEngineSetLauncher
        if "remote_python" not in launcher:  # the same environment, as on a shared filesystem
            launcher.remote_python = sys.executable
        # A notebook cannot answer a password prompt, and an unreachable host must not hang it.
        for name in ("ssh_args", "scp_args"):
            launcher[name] = [*launcher.get(name, []), *SSH_OPTIONS]
        addresses = [ssh_address(host, launcher.ssh_args) for host, _ in spec.hosts]
        launcher.engines = {
            host: {"n": count, "host_index": str(index), "to_send": [],
                   "remote_profile_dir": remote_folder(profile_dir, cluster_id, index)}
            for index, (host, count) in enumerate(spec.hosts)
        }  # fmt: skip
        controller_ip = config.Cluster.get("controller_ip") or route_to(addresses[0])[0]
        return _as_ddipp_runs(_indexed_launchers(self._launched), self._rendezvous_dir), controller_ip

    def _not_started(self, spec: GroupSpec, error: Exception) -> str:
        return NOT_STARTED.format(hosts=", ".join(host for host, _ in spec.hosts), error=error)

    def _engines_started(self) -> None:
        """Per folder written on a host, a launcher that reaches it (to remove it at the end)."""
        folders = {}
        for launcher in self._launched:
            folders.setdefault(launcher.remote_profile_dir, launcher)
        self._remote_folders = [(launcher, folder) for folder, launcher in folders.items()]
        self._engine_launchers, self._launched = self._launched, []

    def _engines_ended(self) -> str:
        ended = {launcher.location: None for launcher in self._engine_launchers if launcher.ended}
        return HOST_ENDED.format(hosts=", ".join(ended)) if ended else ""

    def _engines_output(self) -> str:
        """Per host, the last lines its first engine wrote (fetched over ssh)."""
        report = ""
        for launcher, _ in self._remote_folders:
            try:
                lines = (launcher.get_output() or "").splitlines()[-OUTPUT_LINES:]
            except Exception as error:  # the host cannot be reached: say so, as the output would
                lines = [f"(not fetched: {error})"]
            if lines:
                report += HOST_OUTPUT.format(host=launcher.location, tail="\n".join(lines))
        return report

    def stop(self) -> None:
        """Leave the group, stop the engines on every host and the controller, remove the files."""
        super().stop()
        for launcher, folder in self._remote_folders:
            try:
                launcher.ssh_sender.check_output_python_code(
                    f"import shutil; shutil.rmtree({folder!r}, ignore_errors=True)", timeout=REMOVE_S
                )
            except Exception as error:  # an unreachable host: its folder names a controller that is gone
                print(FOLDER_LEFT.format(host=launcher.location, folder=folder, error=error), file=sys.stderr)
        self._remote_folders = []


class BatchRanks(LaunchedRanks):
    """A group on engines that ddipp starts with ipyparallel's launcher for a batch system (or
    MPI): `-n N` engines in one job, wherever the batch system places them."""

    flag = "--engines"
    # A batch system copies a job's environment to its nodes, mpiexec its variables to other
    # hosts, in the clear: the engines read the (0600) connection file on the shared filesystem.
    connection_in_environment = False

    def __init__(self) -> None:
        super().__init__()
        self._job_checked = 0.0  # when squeue was last asked while the engines register

    def _configure(self, spec: GroupSpec, config, cluster_id: str, profile_dir: str) -> tuple[type, str]:
        from ipyparallel.cluster.launcher import find_launcher_class

        launcher_class = _as_ddipp_runs(find_launcher_class(spec.engines, "engine"), self._rendezvous_dir)
        controller_ip = config.Cluster.get("controller_ip") or this_host_address(spec.engines)
        return launcher_class, controller_ip

    def _not_started(self, spec: GroupSpec, error: Exception) -> str:
        return NOT_SUBMITTED.format(name=spec.engines, error=str(error).strip())

    @property
    def not_stopped_advice(self) -> str:
        # mpiexec runs here, adopted (`_engines_started`): it is ended by pid in any case.
        return "" if self._spec is not None and self._spec.engines == "mpi" else JOB_NOT_CANCELLED

    def _launcher_processes(self) -> list[tuple[object, psutil.Process]]:
        """Each engine set whose launcher runs a process here (mpiexec), with that process; a
        batch system's engine set has none (its submit command has ended)."""
        found = [
            (engine_set, getattr(engine_set, "process", None))
            for engine_set in self._cluster.engines.values()
        ]
        return [(engine_set, process) for engine_set, process in found if process is not None]

    def _engines_started(self) -> None:
        # Ended by pid at stop, with what it started here, if the launcher could not stop it.
        for _, process in self._launcher_processes():
            self._adopt(process.pid)

    def _engines_ended(self) -> str:
        # mpiexec's end is read here: ipyparallel's own watch of it reports on its event loop,
        # which does not run while ddipp waits.
        for engine_set, process in self._launcher_processes():
            if not _is_alive(process):
                how = describe_exit(IpyparallelRanks._exit_status(process))
                return LAUNCHER_ENDED.format(command=engine_set.mpi_cmd[0], how=how)
        now = time.monotonic()
        if now - self._job_checked < JOB_CHECK_S:
            return ""
        self._job_checked = now
        states = [_job_state(self._spec.engines, job) for job in self._job_ids()]
        return JOB_ENDED if any(state.split(" ", 1)[0] in JOB_FINAL for state in states) else ""

    def _job_ids(self) -> list[str]:
        jobs = (getattr(engine_set, "job_id", "") for engine_set in self._cluster.engines.values())
        return [job for job in jobs if job]

    def _engines_output(self) -> str:
        report = ""
        for job in self._job_ids():
            state = _job_state(self._spec.engines, job) or f"ask {self._spec.engines} for its state"
            report += JOB_STATE.format(job=job, state=state)
            report += STILL_PENDING if state.startswith("PENDING") else ""
        for engine_set in self._cluster.engines.values():
            path = getattr(engine_set, "output_file", "")
            if path and os.path.exists(path):
                with open(path, errors="replace") as file:
                    tail = "".join(file.readlines()[-OUTPUT_LINES:])
                report += JOB_OUTPUT.format(path=path, tail=tail.rstrip())
        return report


def _job_state(launcher: str, job: str) -> str:
    """What the batch system says of `job` (Slurm: its state and reason, also once it has ended,
    while slurmctld remembers it; else why squeue could not say), or '' for other batch systems."""
    if launcher != "slurm":
        return ""
    try:
        listed = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--jobs={job}", "--format=%T (%r)"],
            capture_output=True,
            text=True,
            timeout=RESOLVE_S,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"squeue failed: {error}"
    return listed.stdout.strip() or f"squeue failed: {listed.stderr.strip() or 'it listed nothing'}"


def _as_ddipp_runs(launcher_class: type, folder: str) -> type:
    """ipyparallel's `launcher_class`, configured as the user's config file says, and then: its
    engines told to end soon after their controller (ENGINE_ARGS after the user's, set on the
    launcher so that the user's, on whatever class of theirs, stay), and, for a batch system, the
    job script written in `folder` unless the config names a file (ipyparallel writes it in the
    kernel's working folder: the notebook's), what the submit or cancel command printed kept when
    it fails (ipyparallel leaves it on the kernel's stderr, which a notebook never shows), such a
    command given BATCH_COMMAND_S, and no cancel command run for a job that was never submitted;
    for mpiexec, engines without ipengine's --mpi, and Open MPI told to pass them ipyparallel's
    variables on other hosts too."""
    from ipyparallel.cluster.launcher import BatchSystemLauncher, MPIEngineSetLauncher

    batch = issubclass(launcher_class, BatchSystemLauncher)
    mpi = issubclass(launcher_class, MPIEngineSetLauncher)

    class Launcher(launcher_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.engine_args = [*self.engine_args, *ENGINE_ARGS]
            if (
                batch
                and self.batch_file_name == launcher_class.class_traits()["batch_file_name"].default_value
            ):
                self.batch_file = os.path.join(folder, self.batch_file_name)

        if batch:

            def _run_command(self, command, **kwargs):
                try:
                    return super()._run_command(
                        command, stderr=subprocess.PIPE, timeout=BATCH_COMMAND_S, **kwargs
                    )
                except subprocess.TimeoutExpired:  # (the command is killed)
                    raise LaunchFailed(
                        COMMAND_SLOW.format(command=command[0], seconds=BATCH_COMMAND_S)
                    ) from None
                except subprocess.CalledProcessError as error:
                    said = (error.stderr or b"").decode("utf8", "replace").strip()
                    said = said or f"exit status {error.returncode}"
                    raise LaunchFailed(COMMAND_FAILED.format(command=command[0], said=said)) from None
                except FileNotFoundError:
                    raise LaunchFailed(NO_COMMAND.format(command=command[0])) from None

            def stop(self):
                if not self.job_id:
                    return None  # refused: an empty job id could mean every job to some batch systems
                return super().stop()

        if mpi:

            @property
            def program(self):
                # Without ipengine's --mpi: it would need mpi4py only to take MPI's rank as the
                # engine's id; ddipp orders ranks by MPI's rank itself (`hosts.order_hosts`).
                return self.engine_cmd

            def find_args(self):
                args = super().find_args()
                if not _is_open_mpi(tuple(self.mpi_cmd)):
                    return args
                at = len(self.mpi_cmd)
                exported = [part for name in self.get_env() for part in ("-x", name)]
                return [*args[:at], *exported, *args[at:]]

    Launcher.__name__ = Launcher.__qualname__ = launcher_class.__name__
    return Launcher


@functools.lru_cache
def _is_open_mpi(mpi_cmd: tuple[str, ...]) -> bool:
    """Whether `mpi_cmd` (mpiexec) is Open MPI's."""
    try:
        said = subprocess.run([*mpi_cmd, "--version"], capture_output=True, text=True, timeout=RESOLVE_S)
    except (OSError, subprocess.TimeoutExpired):
        return False  # ipyparallel's start then says what is wrong with the command
    return any(name in said.stdout + said.stderr for name in OPEN_MPI_VERSION)


def this_host_address(name: str) -> str:
    """The address this machine's name resolves to, if other hosts can reach it."""
    import socket

    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError as error:
        address = f"nothing ({error})"
    else:
        if not address.startswith("127."):
            return address
    raise LaunchFailed(NO_CONTROLLER_ADDRESS.format(name=name, host=host, address=address))


def _wait_for(path: str, timeout: float) -> None:
    """Until `path` exists (the controller writes its connection files once it listens)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise LaunchFailed(f"the controller did not start within {timeout:g} s")
        time.sleep(0.02)
