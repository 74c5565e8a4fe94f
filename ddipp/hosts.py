"""Ranks on engines that run already, on one host or several (`%makedip --attach FILE`).

ddipp did not start these engines, so it never stops them: it connects a client, orders the
engines host by host, forms the group across them, and at the end leaves the group and
disconnects. Liveness comes from the controller's registration (an engine that dies is
unregistered by its nanny), never from local pids, which mean nothing on another host.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Hashable, Sequence
from urllib.parse import urlparse

from .cluster import (
    IpyparallelRanks,
    RankDeath,
    RankInfo,
    own_logger,
)
from .errors import LaunchFailed
from .placement import place_hosts
from .spec import GroupSpec

# Seconds the ranks get to leave the group when ddipp detaches.
LEAVE_S = 2.0
# Where the controller listens when it listens on every interface: ask the route to its location.
ANY_ADDRESS = ("0.0.0.0", "*", "")

NOT_A_CONNECTION_FILE = "--attach {path}: not an ipyparallel cluster file or client connection file ({error})"
TOO_FEW_ENGINES = "{flag}: {found} of the {wanted} engine(s) asked for registered within {timeout:g} s (-t)"
NO_ENGINES = "--attach: no engine is registered with the controller of {path}"
ENGINE_GONE = "its engine is no longer registered with the controller"
HOST_GPUS = (
    "-g: {host} runs {ranks} GPU rank(s), on its GPU(s) {needed}, but its engines see {count} GPU(s) "
    "({seen}); ask for fewer ranks per host, other GPU ids in -g, or CPU ranks (no -g)"
)
FEWER_GPU_IDS = (
    "-g: {host} runs {ranks} GPU rank(s), more than the {listed} GPU id(s) -g lists; list one id "
    "per rank of a host, or start fewer ranks per host (the batch template's tasks per node)"
)
ONE_HOST_TWICE = (
    "-g: {host} and {other} are one machine (their engines reach the controller from the same "
    "address): its GPUs would hold two ranks each; give it once in --hosts"
)
GPUS_BOUND_PER_ENGINE = (
    "-g: the engines on {host} see different GPUs (CUDA_VISIBLE_DEVICES differs, as with Slurm's "
    "--gpus-per-task); ddipp gives each rank its GPU itself: let every engine of a host see the "
    "host's GPUs (--gres=gpu:N, no per-task binding)"
)
ENGINES_BUSY = (
    "the engines did not answer within {timeout:g} s: some still run an earlier request (a cell "
    "that never ended?); interrupt or restart them (ipcluster), then %makedip again"
)


def devices_per_host(
    spec: GroupSpec, seen: Sequence[dict], ranks_per_host: Sequence[int]
) -> tuple[list[tuple[int | None, ...]], list[dict]]:
    """Per host (its engines `seen` in rank order, `ranks_per_host` of them each), each rank's GPU
    id as that host numbers its GPUs (None: CPU), and what placement reads of the host's own
    environment (`describe_host`'s: what is set there stays, as under torchrun). `LaunchFailed`
    for GPU ranks a host cannot hold."""
    devices: list[tuple[int | None, ...]] = []
    inherited: list[dict] = []
    first = 0
    hosts_of_gpu_ranks: dict[str, str] = {}  # address -> host
    for ranks in ranks_per_host:
        engines = seen[first : first + ranks]
        first += ranks
        inherited.append(dict(engines[0].get("environment", {})))
        if spec.local_gpus is None:
            devices.append((None,) * ranks)
            continue
        host, address = engines[0]["host"], engines[0]["address"]
        if address in hosts_of_gpu_ranks:  # two --hosts entries, one machine: its GPUs twice
            raise LaunchFailed(ONE_HOST_TWICE.format(host=host, other=hosts_of_gpu_ranks[address]))
        hosts_of_gpu_ranks[address] = host
        devices.append(gpus_of_host(spec, engines))
    return devices, inherited


def gpus_of_host(spec: GroupSpec, engines: Sequence[dict]) -> tuple[int, ...]:
    """The GPU ids of a host's GPU ranks, one per engine of it (`engines`, as `describe_host`
    saw them); `LaunchFailed` if the host has too few GPUs for them."""
    seen = engines[0]
    visible = seen.get("environment", {}).get("CUDA_VISIBLE_DEVICES")
    if any(engine.get("environment", {}).get("CUDA_VISIBLE_DEVICES") != visible for engine in engines):
        raise LaunchFailed(GPUS_BOUND_PER_ENGINE.format(host=seen["host"]))
    ranks, count = len(engines), seen["gpus"]
    needed = spec.gpus_on_host(ranks)
    if len(needed) < ranks:
        raise LaunchFailed(FEWER_GPU_IDS.format(host=seen["host"], ranks=ranks, listed=len(needed)))
    if max(needed) < count:
        return needed
    if visible is not None:
        counted = f"CUDA_VISIBLE_DEVICES={visible!r}"
    else:
        counted = "by the NVIDIA driver" if count else "no NVIDIA driver, no CUDA_VISIBLE_DEVICES"
    listed = ",".join(map(str, needed))
    raise LaunchFailed(
        HOST_GPUS.format(host=seen["host"], ranks=ranks, needed=listed, count=count, seen=counted)
    )


def ranks_by_host(hosts: Sequence[Hashable]) -> list[list[int]]:
    """Indices of `hosts` (one host name per engine, in engine order) grouped by host: hosts in the
    order their first engine comes, engines of a host in their order."""
    grouped: dict[str, list[int]] = {}
    for index, host in enumerate(hosts):
        grouped.setdefault(host, []).append(index)
    return list(grouped.values())


def order_hosts(seen: Sequence[dict]) -> list[list[int]]:
    """Indices of the engines `seen` (`rank.describe_host`, in engine order) grouped by host:
    hosts in the order of their `host_index` where ddipp's launcher set one (`--hosts`), else in
    MPI's rank order when every engine has a rank of one mpiexec run (ranks of a host in that
    order too), else in their Slurm job's node order when every engine is of one job, else in the
    order their first engine comes."""
    if any(engine["host_index"] is not None for engine in seen):
        # The --hosts entry tells hosts apart even when two of them have the same name.
        groups = ranks_by_host([(engine["host_index"], engine["host"]) for engine in seen])
        return sorted(groups, key=lambda group: int(seen[group[0]]["host_index"] or 0))
    groups = ranks_by_host([engine["host"] for engine in seen])
    mpi_ranks = [engine.get("mpi_rank") for engine in seen]
    if None not in mpi_ranks and len(set(mpi_ranks)) == len(seen):  # one run: each rank once
        # (First: mpiexec in a Slurm allocation passes it SLURM_* of its own step to every rank.)
        groups = [sorted(group, key=lambda index: int(mpi_ranks[index])) for group in groups]
        return sorted(groups, key=lambda group: int(mpi_ranks[group[0]]))
    jobs = {engine.get("slurm_job") for engine in seen}
    if len(jobs) == 1 and None not in jobs:  # node indices mean something within one job only
        # Within a node, in Slurm's task order: the CPUs it binds a task to follow it.
        groups = [
            sorted(group, key=lambda index: int(seen[index].get("slurm_local") or 0)) for group in groups
        ]
        return sorted(groups, key=lambda group: int(seen[group[0]]["slurm_node"]))
    return groups


def take_ranks(groups: list[list[int]], wanted: int | None) -> list[list[int]]:
    """The first `wanted` engines (all if None), host by host; hosts left empty are dropped."""
    if wanted is None:
        return groups
    taken, left = [], wanted
    for group in groups:
        if left <= 0:
            break
        taken.append(group[:left])
        left -= len(taken[-1])
    return taken


def connect(path: str):
    """An ipyparallel client for the cluster file or client connection file at `path`."""
    import ipyparallel as ipp

    try:
        with open(path) as file:
            content = json.load(file)
        if "cluster" in content:
            return ipp.Cluster.from_file(path, log=own_logger()).connect_client_sync()
        return ipp.Client(path)
    except Exception as error:
        raise LaunchFailed(NOT_A_CONNECTION_FILE.format(path=path, error=error)) from error


def controller_address(client) -> str:
    """The address the engines reach the controller at (what they route toward)."""
    # The client's own view of its connection file: `interface` is the controller's address.
    config = client._config
    address = urlparse(config["interface"]).hostname or ""
    if address in ANY_ADDRESS:
        address = config.get("location") or address
    return address


class AttachedRanks(IpyparallelRanks):
    """A group on engines that ddipp did not start, on any number of hosts."""

    def __init__(self) -> None:
        super().__init__()
        # Per rank, what its engine said of itself (`rank.describe_host`); ranks per host.
        self._seen: list[dict] = []
        self._ranks_per_host: list[int] = []

    def _launch(self, spec: GroupSpec) -> None:
        assert spec.attach is not None
        client = connect(spec.attach)
        self._adopt_engines(client, spec.world_size or None, spec.timeout, "--attach")

    def _wait_for_engines(self, client, wanted: int, timeout: float) -> None:
        """Until `wanted` engines are registered; TimeoutError after `timeout`."""
        client.wait_for_engines(wanted, timeout=timeout, interactive=False)

    def _adopt_engines(self, client, wanted: int | None, timeout: float, flag: str) -> None:
        """Take `wanted` of `client`'s engines (all if None) as the ranks, ordered host by host:
        by the launcher's host index where it set one (`--hosts` order), else by engine id."""
        from . import rank as rank_side

        self._client = client
        try:
            self._wait_for_engines(client, wanted or 1, timeout)
        except TimeoutError:
            if wanted is None:
                raise LaunchFailed(NO_ENGINES.format(path=self._spec.attach)) from None
            found = len(client.ids)
            raise LaunchFailed(
                TOO_FEW_ENGINES.format(flag=flag, found=found, wanted=wanted, timeout=timeout)
            ) from None
        engine_ids = sorted(client.ids)
        address = controller_address(client)
        try:
            seen = client[engine_ids].apply_async(rank_side.describe_host, address).get(timeout=timeout)
        except TimeoutError:
            raise LaunchFailed(ENGINES_BUSY.format(timeout=timeout)) from None
        groups = take_ranks(order_hosts(seen), wanted)
        self._engine_ids = [engine_ids[index] for group in groups for index in group]
        self._seen = [self._as_chosen_on_host(seen[index]) for group in groups for index in group]
        self._ranks_per_host = [len(group) for group in groups]
        self._view = client[self._engine_ids]
        self._view.use_cloudpickle()

    def _as_chosen_on_host(self, engine: dict) -> dict:
        """`engine` (as `describe_host` saw it), its environment what its host chose."""
        return engine

    def _form_group(self, spec: GroupSpec) -> list[RankInfo]:
        from . import rank as rank_side

        self._formations += 1
        devices, inherited = devices_per_host(spec, self._seen, self._ranks_per_host)
        master = self._seen[0]["address"]
        port = self._client[self._engine_ids[0]].apply_sync(rank_side.open_rendezvous, master)
        placements = place_hosts(devices, master_addr=master, master_port=port, inherited=inherited)
        world_size = len(self._engine_ids)
        pending = []
        for rank, engine_id in enumerate(self._engine_ids):
            environment = dict(placements[rank].environment)
            interface = self._seen[rank]["interface"]
            own = self._seen[rank].get("environment", {})
            # gloo would otherwise listen on what the host name resolves to (Debian: 127.0.1.1),
            # NCCL's sockets on the first interface it likes; a choice made on the host stays.
            for variable in (
                ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if spec.on_gpus else ("GLOO_SOCKET_IFNAME",)
            ):
                if interface is not None and variable not in own:
                    environment[variable] = interface
            pending.append(
                self._client[engine_id].apply_async(
                    rank_side.form_group,
                    rank,
                    world_size,
                    master,
                    port,
                    None,
                    spec.backend,
                    placements[rank].device,
                    environment,
                    spec.timeout,
                )
            )
        return self._joined(pending, [placement.label for placement in placements], spec.timeout)

    def _abort_arguments(self, rank: int) -> tuple[list[int], bool]:
        # Pids name processes of one host only (they collide across hosts); the connections
        # opened while the group formed reach the others.
        host = self.ranks[rank].host
        return [info.pid for info in self.ranks if info.host == host], True

    def _live_engines(self) -> list[int]:
        """The group's engines still registered with the controller."""
        alive = set(self._client.ids)
        return [engine_id for engine_id in self._engine_ids if engine_id in alive]

    def _interrupt_ranks(self) -> None:
        targets = self._live_engines()
        if targets:
            # Through each engine's nanny, wherever it runs.
            self._client.send_signal(signal.SIGINT, targets=targets, block=False)

    def _rank_is_dead(self, rank: int) -> bool:
        return self._engine_ids[rank] not in set(self._client.ids)

    def dead_ranks(self) -> list[RankDeath]:
        if self._client is None:
            return []
        alive = set(self._client.ids)
        return [
            RankDeath(info.rank, info.pid, ENGINE_GONE, info.host)
            for info in self.ranks
            if info.engine_id not in alive
        ]

    def pids(self) -> frozenset[int]:
        return frozenset()  # ddipp started no process here

    def stop(self) -> None:
        """Leave the group and disconnect; the engines keep running."""
        from . import rank as rank_side

        if self._view is not None and self.ranks:
            targets = self._live_engines()
            if self._client.outstanding:
                # A cell still running (one that timed out) holds the engines: stop it first.
                self._interrupt_ranks()
                self._client.wait(timeout=LEAVE_S)
            try:
                self._client[targets].apply_async(rank_side.leave_group).get(timeout=LEAVE_S)
            except Exception:
                pass  # best effort: a rank that cannot leave now leaves when its group is formed again
        if self._client is not None:
            self._client.close()
        self._client = self._view = None
        self._engine_ids = []
        self.ranks = []
