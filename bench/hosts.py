"""A group across two simulated hosts (the test suite's namespaces; needs root, OpenSSH, and
Slurm and Open MPI for their rows): start-up to a ready group, attached, over ssh, through
Slurm and with mpiexec, against
plain ipyparallel doing the same by hand; and a cell's round trip across hosts, `%%dip` against
`%%px` on the same engines.

One rank per host. The peer of each start-up is what a user would write without ddipp: connect
(or start the engines with ipyparallel's SSH or Slurm launcher, configured alike), then form a
gloo group across the hosts by hand (each engine's address toward the controller, its interface
for gloo, rank 0's address as MASTER_ADDR).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from bench.common import ok
from ddipp.notebooks import KernelSession

HOSTS_REPEATS = 3
DISPATCH_RUNS = 30
REGISTER_S = 60.0
# A gloo group across the engines of `rc`, by hand (rank 0's address; each rank's interface).
BY_HAND = """
import ipyparallel as ipp, time
def where(controller):
    import os, socket, psutil
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((controller, 9))
        address = probe.getsockname()[0]
    names = [n for n, a in psutil.net_if_addrs().items() if any(x.address == address for x in a)]
    with socket.socket() as free:
        free.bind((address, 0))
        return address, names[0], free.getsockname()[1]
def join(rank, world, master, port, interface):
    import os, torch.distributed as dist
    os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME=interface)
    dist.init_process_group("gloo")
    return rank
def group_by_hand(rc, controller):
    rc.wait_for_engines(2, timeout=120, interactive=False)
    ids = sorted(rc.ids)
    places = rc[ids].apply_sync(where, controller)
    master, _, port = places[0]
    pending = [rc[i].apply_async(join, r, len(ids), master, port, places[r][1]) for r, i in enumerate(ids)]
    [p.get(timeout=120) for p in pending]
def start_by_hand(began, controller, **cluster_args):
    cluster = ipp.Cluster(n=2, delay=0, controller_args=["--HeartMonitor.period=500"], **cluster_args)
    rc = cluster.start_and_connect_sync()
    group_by_hand(rc, controller)
    print("STARTUP", time.perf_counter() - began)
    rc.close()
    cluster.stop_cluster_sync()
"""
PLAIN_ATTACH = """
began = time.perf_counter()
rc = ipp.Client({client_file!r})
group_by_hand(rc, {bridge!r})
print("STARTUP", time.perf_counter() - began)
rc[:].apply_sync(lambda: __import__("torch.distributed").distributed.destroy_process_group())
rc.close()
"""
PLAIN_SSH = """
from traitlets.config import Config
import sys
began = time.perf_counter()
config = Config()
config.SSHEngineSetLauncher.ssh_args = ["-F", {ssh_config!r}, "-o", "BatchMode=yes"]
config.SSHEngineSetLauncher.scp_args = ["-F", {ssh_config!r}, "-o", "BatchMode=yes"]
config.SSHEngineSetLauncher.remote_python = sys.executable
config.SSHEngineSetLauncher.engines = {engines!r}
start_by_hand(began, {bridge!r}, controller_ip={bridge!r}, engine_launcher_class="ssh", config=config)
"""
PLAIN_SLURM = """
from traitlets.config.loader import PyFileConfigLoader
import os
began = time.perf_counter()
config = PyFileConfigLoader(os.path.basename({config!r}), path=os.path.dirname({config!r})).load_config()
# ipyparallel writes the job script in the working folder by default: the bench's own, here.
config.SlurmEngineSetLauncher.batch_file_name = os.path.join({folder!r}, "slurm_engine.sbatch")
start_by_hand(began, {bridge!r}, engine_launcher_class="slurm", config=config)
"""
# ipyparallel's MPI launcher by hand, made to work across hosts as a user would: Open MPI told to
# pass the engines ipyparallel's variables, and ipengine's --mpi (which needs mpi4py) left out.
PLAIN_MPI = """
from traitlets.config.loader import PyFileConfigLoader
from ipyparallel.cluster.launcher import MPIEngineSetLauncher
import os
class WithoutMPI4Py(MPIEngineSetLauncher):
    program = property(lambda self: self.engine_cmd)
began = time.perf_counter()
config = PyFileConfigLoader(os.path.basename({config!r}), path=os.path.dirname({config!r})).load_config()
config.MPILauncher.mpi_args = [*config.MPILauncher.mpi_args, "-x", "IPP_CLUSTER_ID", "-x", "IPP_PROFILE_DIR"]
start_by_hand(began, {bridge!r}, engine_launcher_class=WithoutMPI4Py, config=config)
"""
PX = "px_view = get_ipython()._ddipp_session[0].cluster._client[:]\npx_view.block = True\npx_view.activate()"


def missing() -> str | None:
    from tests.hosts import missing_requirement, missing_sshd

    return missing_requirement() or missing_sshd()


def bench_hosts(env: dict) -> dict:
    """Start-up (attach, ssh) against plain ipyparallel, and dispatch against %%px, on 2 hosts."""
    import ipyparallel as ipp

    from tests.hosts import (
        SimulatedHosts,
        SshAccess,
        client_file,
        engine_file,
        missing_mpiexec,
        mpi_config_file,
        start_controller,
        stop_controller,
    )

    reason = missing()
    if reason is not None:
        print(f"hosts: skipped: {reason}")
        return {"skipped": reason}
    hosts = SimulatedHosts(2)
    startup: dict[str, list[float]] = {"attach": [], "attach_plain": [], "ssh": [], "ssh_plain": []}
    startup.update(mpi=[], mpi_plain=[])  # (left out below if Open MPI is missing)
    dispatch: dict[str, list[float]] = {"ddipp": [], "px": []}
    try:
        access = SshAccess(hosts)
        config = access.config_file(os.path.join(tempfile.mkdtemp(), "ipcluster_config.py"))
        flag = ",".join(f"{access.aliases[host.name]}:1" for host in hosts.hosts)
        # A folder of its own per host: the hosts share this machine's filesystem.
        folders = tempfile.mkdtemp()
        engines = {
            access.aliases[host.name]: {"n": 1, "remote_profile_dir": os.path.join(folders, host.name)}
            for host in hosts.hosts
        }
        sshd = {host.name: {process.pid for process in host.processes()} for host in hosts.hosts}
        controller = start_controller(hosts.bridge_address)
        try:
            client = ipp.Client(client_file(controller))
            for host in hosts.hosts:
                host.start_engines(1, engine_file(controller), os.environ)
            client.wait_for_engines(2, timeout=REGISTER_S, interactive=False)
            client.close()
            with KernelSession(env) as kernel:
                ok(kernel.run("%load_ext ddipp\nimport torch\n" + BY_HAND))
                plain = PLAIN_ATTACH.format(client_file=client_file(controller), bridge=hosts.bridge_address)
                _start_both(kernel, f"--attach {client_file(controller)}", plain, startup, "attach")
                ok(kernel.run(f"%makedip --attach {client_file(controller)} -a none"))
                ok(kernel.run(PX))
                cells = {"ddipp": "%%dip\npass", "px": "%%px\npass"}
                for code in cells.values():
                    ok(kernel.run(code))
                for _ in range(DISPATCH_RUNS):
                    for name, code in cells.items():
                        cell = ok(kernel.run(code))
                        dispatch[name].append((cell.finished_at - cell.sent_at) * 1000)
                ok(kernel.run("%makedip --kill"))
                for host in hosts.hosts:
                    host.stop_engines(keep=sshd[host.name])
                plain = PLAIN_SSH.format(
                    ssh_config=access.ssh_config, engines=engines, bridge=hosts.bridge_address
                )
                _start_both(kernel, f"--hosts {flag} --config {config}", plain, startup, "ssh")
                if missing_mpiexec() is None:
                    placed = [(host, 1) for host in hosts.hosts]
                    mpi = mpi_config_file(config.replace(".py", "_mpi.py"), hosts, access, placed)
                    plain = PLAIN_MPI.format(config=mpi, bridge=hosts.bridge_address)
                    _start_both(kernel, f"--engines mpi -n 2 --config {mpi}", plain, startup, "mpi")
                else:
                    print(f"hosts: MPI rows skipped: {missing_mpiexec()}")
                    del startup["mpi"], startup["mpi_plain"]
        finally:
            stop_controller(controller)
    finally:
        hosts.close()
    startup.update(_bench_slurm(env))
    return {
        "startup_s": {name: statistics.median(values) for name, values in startup.items()},
        "dispatch_ms": {name: statistics.median(values) for name, values in dispatch.items()},
    }


def _bench_slurm(env: dict) -> dict[str, list[float]]:
    """Start-up through Slurm (slurmctld on a third host, a job of one rank per node), ddipp's
    `--engines slurm` against ipyparallel's Slurm launcher by hand; nothing if Slurm is missing."""
    from tests.hosts import SimulatedHosts, SlurmCluster, missing_slurm, slurm_config_file

    reason = missing_slurm()
    if reason is not None:
        print(f"hosts: Slurm rows skipped: {reason}")
        return {}
    startup: dict[str, list[float]] = {"slurm": [], "slurm_plain": []}
    hosts = SimulatedHosts(3)
    try:
        slurm = SlurmCluster(hosts, hosts.hosts[2], hosts.hosts[:2])
        try:
            with tempfile.TemporaryDirectory() as folder, KernelSession(dict(env, **slurm.env)) as kernel:
                config = slurm_config_file(
                    os.path.join(folder, "ipcluster_config.py"), hosts.bridge_address, nodes=2, per_node=1
                )
                ok(kernel.run("%load_ext ddipp\nimport torch\n" + BY_HAND))
                plain = PLAIN_SLURM.format(config=config, bridge=hosts.bridge_address, folder=folder)
                _start_both(kernel, f"--engines slurm -n 2 --config {config}", plain, startup, "slurm")
        finally:
            slurm.close()
    finally:
        hosts.close()
    return startup


def _start_both(kernel, flags: str, plain: str, startup: dict[str, list[float]], name: str) -> None:
    """HOSTS_REPEATS start-ups of `%makedip flags` (under `name`) and of the `plain` code (under
    `name_plain`), interleaved."""
    for _ in range(HOSTS_REPEATS):
        startup[name].append(_ready(kernel, f"%makedip {flags} -a none"))
        ok(kernel.run("%makedip --kill"))
        text = ok(kernel.run(plain)).text()
        startup[f"{name}_plain"].append(float(text.split("STARTUP", 1)[1].split()[0]))


def _ready(kernel, line: str) -> float:
    """Seconds from `line` (a %makedip) until a first `%%dip` cell has run on every rank."""
    began = time.perf_counter()
    ok(kernel.run(line))
    ok(kernel.run("%%dip\npass"))
    return time.perf_counter() - began
