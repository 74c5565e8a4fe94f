"""A group across two simulated hosts (the test suite's namespaces; needs root and OpenSSH):
start-up to a ready group, attached and over ssh, against plain ipyparallel doing the same by
hand; and a cell's round trip across hosts, `%%dip` against `%%px` on the same engines.

One rank per host. The peer of each start-up is what a user would write without ddipp: connect
(or start the engines with ipyparallel's SSH launcher, configured alike), then form a gloo group
across the hosts by hand (each engine's address toward the controller, its interface for gloo,
rank 0's address as MASTER_ADDR).
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
cluster = ipp.Cluster(n=2, controller_ip={bridge!r}, engine_launcher_class="ssh", delay=0,
                      controller_args=["--HeartMonitor.period=500"], config=config)
rc = cluster.start_and_connect_sync()
group_by_hand(rc, {bridge!r})
print("STARTUP", time.perf_counter() - began)
rc.close()
cluster.stop_cluster_sync()
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
        start_controller,
        stop_controller,
    )

    reason = missing()
    if reason is not None:
        print(f"hosts: skipped: {reason}")
        return {"skipped": reason}
    hosts = SimulatedHosts(2)
    startup: dict[str, list[float]] = {"attach": [], "attach_plain": [], "ssh": [], "ssh_plain": []}
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
                for _ in range(HOSTS_REPEATS):
                    startup["attach"].append(
                        _ready(kernel, f"%makedip --attach {client_file(controller)} -a none")
                    )
                    ok(kernel.run("%makedip --kill"))
                    text = ok(
                        kernel.run(
                            PLAIN_ATTACH.format(
                                client_file=client_file(controller), bridge=hosts.bridge_address
                            )
                        )
                    ).text()
                    startup["attach_plain"].append(float(text.split("STARTUP", 1)[1].split()[0]))
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
                for _ in range(HOSTS_REPEATS):
                    startup["ssh"].append(
                        _ready(kernel, f"%makedip --hosts {flag} --config {config} -a none")
                    )
                    ok(kernel.run("%makedip --kill"))
                    code = PLAIN_SSH.format(
                        ssh_config=access.ssh_config, engines=engines, bridge=hosts.bridge_address
                    )
                    text = ok(kernel.run(code)).text()
                    startup["ssh_plain"].append(float(text.split("STARTUP", 1)[1].split()[0]))
        finally:
            stop_controller(controller)
    finally:
        hosts.close()
    return {
        "startup_s": {name: statistics.median(values) for name, values in startup.items()},
        "dispatch_ms": {name: statistics.median(values) for name, values in dispatch.items()},
    }


def _ready(kernel, line: str) -> float:
    """Seconds from `line` (a %makedip) until a first `%%dip` cell has run on every rank."""
    began = time.perf_counter()
    ok(kernel.run(line))
    ok(kernel.run("%%dip\npass"))
    return time.perf_counter() - began
