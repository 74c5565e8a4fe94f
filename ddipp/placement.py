"""Where each rank runs and the environment it runs with: torchrun's contract, computed in the notebook.

A rank gets what `torchrun` gives a worker (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
`LOCAL_WORLD_SIZE`, `GROUP_RANK`, `GROUP_WORLD_SIZE`, `ROLE_*`, `MASTER_ADDR`, `MASTER_PORT`,
`OMP_NUM_THREADS`), so code written for torchrun (accelerate, fastai, Lightning) behaves the
same. A GPU rank also sees only its own GPU (`CUDA_VISIBLE_DEVICES`, so it is `cuda:0` inside
the rank), and waits for NCCL collectives in its own thread (`TORCH_NCCL_BLOCKING_WAIT`).
Pure functions of the group's devices, the host and the notebook's environment: the rank
applies the result before CUDA starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# torchrun sets this when a host runs more than one worker (torch/distributed/run.py): N ranks
# that each start a thread per core would oversubscribe the host.
THREADS_PER_RANK = "1"
# With blocking wait, a failed or timed-out NCCL collective raises in the rank's own thread (its
# communicator aborted first) and the process lives on. Without it, torch's watchdog thread
# takes the whole process down (SIGABRT) and the reason goes only to the rank's log.
NCCL_BLOCKING_WAIT = "1"
# torchrun's role name for workers started without one.
ROLE_NAME = "default"
GPU_DEVICE = "cuda:0"
CPU_DEVICE = "cpu"


@dataclass(frozen=True, slots=True)
class Placement:
    """One rank: where it runs (as seen inside it, and as `%dipstatus` names it) and its environment."""

    rank: int
    device: str
    label: str
    environment: Mapping[str, str]


def threads_per_rank(ranks_on_host: int, inherited: Mapping[str, str]) -> str | None:
    """`OMP_NUM_THREADS` for each rank of a host: the notebook's, else 1 when ranks share the host."""
    if "OMP_NUM_THREADS" in inherited:
        return inherited["OMP_NUM_THREADS"]
    return THREADS_PER_RANK if ranks_on_host > 1 else None


def visible_device(gpu: int, inherited: Mapping[str, str]) -> str:
    """The `CUDA_VISIBLE_DEVICES` entry of the GPU the notebook sees as `gpu`.

    GPU ids are indices into what the notebook sees: under `CUDA_VISIBLE_DEVICES=4,5,6`, GPU 1
    is `5`. Entries are passed on as written (ordinals or `GPU-`/`MIG-` UUIDs).
    """
    listed = inherited.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return str(gpu)
    return visible_entries(listed)[gpu]


def visible_entries(listed: str) -> list[str]:
    """The GPUs a `CUDA_VISIBLE_DEVICES` value shows, as CUDA reads it: entries up to the first
    empty or negative one."""
    entries = []
    for entry in (entry.strip() for entry in listed.split(",")):
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return entries


def place_host(
    devices: Sequence[int | None],
    *,
    master_addr: str,
    master_port: int,
    inherited: Mapping[str, str],
    host: int = 0,
    hosts: int = 1,
    first_rank: int = 0,
    world_size: int | None = None,
) -> list[Placement]:
    """The ranks of host number `host` of `hosts`: one per entry of `devices` (a GPU id, or None
    for a CPU rank), with global ranks from `first_rank` in a group of `world_size` ranks."""
    world = len(devices) if world_size is None else world_size
    threads = threads_per_rank(len(devices), inherited)
    placements = []
    for local_rank, gpu in enumerate(devices):
        rank = first_rank + local_rank
        environment = {
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(len(devices)),
            "GROUP_RANK": str(host),
            "GROUP_WORLD_SIZE": str(hosts),
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": str(world),
            "ROLE_NAME": ROLE_NAME,
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
        }
        if threads is not None:
            environment["OMP_NUM_THREADS"] = threads
        if gpu is None:
            placements.append(Placement(rank, CPU_DEVICE, CPU_DEVICE, environment))
            continue
        environment["CUDA_VISIBLE_DEVICES"] = visible_device(gpu, inherited)
        environment["TORCH_NCCL_BLOCKING_WAIT"] = inherited.get(
            "TORCH_NCCL_BLOCKING_WAIT", NCCL_BLOCKING_WAIT
        )
        placements.append(Placement(rank, GPU_DEVICE, f"GPU {gpu}", environment))
    return placements


def place_hosts(
    devices_per_host: Sequence[Sequence[int | None]],
    *,
    master_addr: str,
    master_port: int,
    inherited: Sequence[Mapping[str, str]],
) -> list[Placement]:
    """Ranks on several hosts, host by host: host h runs one rank per entry of
    `devices_per_host[h]` (a GPU id as that host numbers its GPUs, or None for a CPU rank),
    contiguous ranks, with what placement reads of that host's environment in `inherited[h]`."""
    world = sum(len(devices) for devices in devices_per_host)
    placements: list[Placement] = []
    for host, devices in enumerate(devices_per_host):
        placements += place_host(
            devices,
            master_addr=master_addr,
            master_port=master_port,
            inherited=inherited[host],
            host=host,
            hosts=len(devices_per_host),
            first_rank=len(placements),
            world_size=world,
        )
    return placements
