"""What `%makedip` asks for, checked and resolved into a `GroupSpec` before anything starts."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from .apps import default_app, get_app
from .errors import DdippError

BACKENDS = ("gloo", "nccl", "mpi")
# GPU ranks pair NCCL (CUDA tensors) with gloo (CPU tensors): with plain "nccl", torch maps no
# backend to the CPU and a collective on a CPU tensor fails.
GPU_BACKEND = "cpu:gloo,cuda:nccl"
DEVICE_TYPES = ("cpu", "cuda")
DEFAULT_CPU_RANKS = 2
# How long a rank waits for the others, to start and in any collective: long enough for a slow
# start or a rank-0-only step, short enough that a hang surfaces while the user is still there.
DEFAULT_TIMEOUT_S = 120.0

GPUS_AND_CPUS = "use -g for one rank per GPU or -n for CPU ranks, not both"
BAD_RANK_COUNT = "-n needs a whole number of CPU ranks of at least 1, not {value!r}"
BAD_GPU_LIST = "-g takes 'all' or GPU ids such as 0,1,3 or \"0 1 3\", not {value!r}"
REPEATED_GPU = "-g lists GPU {gpu} twice: each GPU can hold one rank"
NO_GPU_VISIBLE = "-g {value}: no GPU is visible here (torch.cuda.device_count() is 0); use -n N for CPU ranks"
GPU_NOT_VISIBLE = "-g {value}: GPU {gpu} is not visible; this machine shows {count} GPU(s): {visible}"
CPU_FALLBACK = "ddipp: no GPU is visible; starting {n} CPU ranks (gloo) instead (choose with -n N)"
UNKNOWN_BACKEND = "--backend {value!r} is not one of {choices}, nor device:backend pairs such as " + repr(
    GPU_BACKEND
)
NCCL_ON_CPU = "--backend {value} needs GPU ranks; CPU ranks use gloo"
GPUS_WHEN_ATTACHED = "--attach takes CPU ranks (gloo) on the engines it finds, not -g; -n N picks how many"
BAD_HOSTS = (
    "--hosts takes HOST:RANKS entries separated by commas (node1:2,node2:2; a bare HOST is one "
    "rank; HOST may be user@host or an alias of your ssh config; IPv4 and names only), not {value!r}"
)
REPEATED_HOST = "--hosts lists {host} twice: give each host once, with its number of ranks"
HOSTS_WITH = "--hosts gives the ranks per host itself; it does not take {flag}"
GPUS_ALL_ON_BARE_HOSTS = (
    "--hosts with -g all: give the GPU ranks of each host (gpu-a:8,gpu-b:8), or the GPU ids every host "
    "uses (-g 0,1,2,3 with --hosts gpu-a,gpu-b)"
)
GPU_IDS_WITH_COUNTS = (
    "--hosts with -g {value}: each host runs one rank per GPU listed; give the hosts without counts "
    "(--hosts gpu-a,gpu-b -g {value}), or -g all for N ranks on GPUs 0..N-1 of each host"
)
CONFIG_WITHOUT_LAUNCHER = "--config FILE configures the engines' launcher: it goes with --hosts or --engines"
# ipyparallel's engine launchers for a batch system or MPI (its entry point names).
ENGINE_LAUNCHERS = ("slurm", "pbs", "sge", "lsf", "htcondor", "mpi")
UNKNOWN_ENGINES = (
    "--engines {value!r} is not one of ipyparallel's launchers ddipp starts ranks with: {choices} "
    "(engines over ssh: --hosts; engines started some other way: --attach)"
)
ENGINES_WITHOUT_N = "--engines {value} needs -n N: how many ranks to start in all"
ENGINES_WITH = "--engines starts -n N ranks through the launcher; it does not take {flag}"
BAD_TIMEOUT = "--timeout must be a positive number of seconds, not {value!r}"
GPU_NOTICE = (
    "ddipp: on GPU ranks, %dip --pull brings tensors to the CPU, and a collective that a failed "
    "or interrupted rank never joins fails only after -t {timeout:g} s (NCCL peers cannot be "
    "released sooner); the cell then shows the reason"
)


class SpecError(DdippError):
    """`%makedip` flags that cannot describe a group; nothing was started."""


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A group to start: per rank its GPU id (None: CPU), the backend, the app, how long a rank
    waits for the others (at start-up and in collectives), and the connection file of running
    engines to attach to (None: ddipp starts its own). Attached without -n, `devices` is empty
    until the group has formed on every registered engine."""

    devices: tuple[int | None, ...]
    backend: str
    app: str
    timeout: float = DEFAULT_TIMEOUT_S
    verbose: bool = False
    attach: str | None = None
    # Ranks per host started over SSH (`--hosts`), and the ipyparallel config file for them.
    hosts: tuple[tuple[str, int], ...] = ()
    config: str | None = None
    # ipyparallel's launcher for the engines (`--engines slurm`), or None.
    engines: str | None = None
    # GPU ranks on other hosts (`-g` with --hosts or --engines): the GPU each rank takes by its
    # place on its host (LOCAL_RANK), as that host numbers its GPUs. () for GPU LOCAL_RANK (-g
    # all); None for CPU ranks. The hosts' GPUs are counted there, once the engines run.
    local_gpus: tuple[int, ...] | None = None

    @property
    def world_size(self) -> int:
        return len(self.devices)

    @property
    def on_gpus(self) -> bool:
        return self.local_gpus is not None or (bool(self.devices) and self.devices[0] is not None)

    def gpus_on_host(self, ranks: int) -> tuple[int, ...]:
        """The GPU ids, as their host numbers them, of `ranks` GPU ranks on one host (local_gpus)."""
        assert self.local_gpus is not None
        return self.local_gpus[:ranks] if self.local_gpus else tuple(range(ranks))

    def describe(self) -> str:
        """A one-line summary, e.g. `2 CPU ranks, gloo, app torch`."""
        kind = "GPU" if self.on_gpus else "CPU"
        if self.attach is not None:
            count = self.world_size or "every registered"
            where = f"{count} CPU rank(s) on engines attached from {self.attach}"
        elif self.hosts:
            per_host = ", ".join(f"{host}: {n}" for host, n in self.hosts)
            where = f"{self.world_size} {kind} rank(s) on {len(self.hosts)} host(s) over ssh ({per_host})"
        elif self.engines is not None:
            where = f"{self.world_size} {kind} rank(s) started with ipyparallel's {self.engines} launcher"
        elif self.on_gpus:
            where = f"{self.world_size} GPU rank(s) on GPU {','.join(map(str, self.devices))}"
        else:
            where = f"{self.world_size} CPU rank(s)"
        return f"{where}, {self.backend}, app {self.app}"


def cuda_device_count() -> int:
    """GPUs visible to torch here (imports torch, so only called when GPUs are asked for)."""
    import torch

    return torch.cuda.device_count()


def plan_group(
    gpus: str | None = None,
    n: int | str | None = None,
    app: str | None = None,
    backend: str | None = None,
    timeout: float | str | None = None,
    verbose: bool = False,
    visible_gpus: Callable[[], int] = cuda_device_count,
    attach: str | None = None,
    hosts: str | None = None,
    config: str | None = None,
    engines: str | None = None,
) -> tuple[GroupSpec, list[str]]:
    """Resolve `%makedip` flags into a spec plus notices for the user; raise `SpecError`."""
    notices: list[str] = []
    if gpus is not None and n is not None and engines is None:  # (--engines: -n ranks, on GPUs)
        raise SpecError(GPUS_AND_CPUS)
    if config is not None and hosts is None and engines is None:
        raise SpecError(CONFIG_WITHOUT_LAUNCHER)
    per_host: tuple[tuple[str, int], ...] = ()
    local_gpus = None  # GPUs of other hosts, counted there (this machine's: in `devices`)
    if engines is not None:
        devices = _launched_devices(engines, n, {"--attach": attach, "--hosts": hosts})
        local_gpus = None if gpus is None else _local_gpus(gpus)
    elif hosts is not None:
        for flag, value in (("-n", n), ("--attach", attach)):
            if value is not None:
                raise SpecError(HOSTS_WITH.format(flag=flag))
        per_host = parse_hosts(hosts)
        if gpus is not None:
            local_gpus = _local_gpus(gpus)
            per_host = _gpu_hosts(per_host, local_gpus, hosts, gpus)
        devices: tuple[int | None, ...] = (None,) * sum(count for _, count in per_host)
    elif attach is not None:
        if gpus is not None:
            raise SpecError(GPUS_WHEN_ATTACHED)
        devices = (None,) * _rank_count(n) if n is not None else ()
    elif n is not None:
        devices = (None,) * _rank_count(n)
    else:
        devices = _gpu_devices(gpus or "all", visible_gpus, notices)
    on_gpus = local_gpus is not None or (bool(devices) and devices[0] is not None)
    backend = resolve_backend(backend, on_gpus=on_gpus)
    app_name = app if app is not None else default_app()
    get_app(app_name)
    seconds = _seconds(timeout) if timeout is not None else DEFAULT_TIMEOUT_S
    spec = GroupSpec(
        devices, backend, app_name, seconds, bool(verbose), attach, per_host, config, engines, local_gpus
    )
    if spec.on_gpus:
        notices.append(GPU_NOTICE.format(timeout=seconds))
    return spec, notices


def resolve_backend(value: str | None, on_gpus: bool) -> str:
    """The torch.distributed backend string for `--backend value` (None: the default)."""
    if value is None or (value == "nccl" and on_gpus):
        return GPU_BACKEND if on_gpus else "gloo"
    pairs = [pair.partition(":") for pair in value.split(",")] if ":" in value else [("", "", value)]
    for device, _, name in pairs:
        if name not in BACKENDS or (device and device not in DEVICE_TYPES):
            raise SpecError(UNKNOWN_BACKEND.format(value=value, choices=", ".join(BACKENDS)))
    if not on_gpus and any(name == "nccl" for _, _, name in pairs):
        raise SpecError(NCCL_ON_CPU.format(value=value))
    return value


def _local_gpus(value: str) -> tuple[int, ...]:
    """`-g` for ranks on other hosts: () for `all`, else the ids (checked on each host later)."""
    return () if value.strip().lower() == "all" else parse_gpu_list(value)


def _gpu_hosts(
    per_host: tuple[tuple[str, int], ...], local_gpus: tuple[int, ...], hosts: str, gpus: str
) -> tuple[tuple[str, int], ...]:
    """`--hosts` with `-g`: the ranks per host, given (-g all) or one per GPU id listed (-g IDS)."""
    bare = [":" not in entry for entry in hosts.strip().strip("'\"").split(",")]
    if not local_gpus:
        if any(bare):
            raise SpecError(GPUS_ALL_ON_BARE_HOSTS)
        return per_host
    if not all(bare):
        raise SpecError(GPU_IDS_WITH_COUNTS.format(value=gpus))
    return tuple((host, len(local_gpus)) for host, _ in per_host)


def _launched_devices(engines: str, n: int | str | None, others: dict[str, str | None]):
    """The ranks of `--engines NAME -n N`: N ranks, nothing else asked of them."""
    if engines not in ENGINE_LAUNCHERS:
        raise SpecError(UNKNOWN_ENGINES.format(value=engines, choices=", ".join(ENGINE_LAUNCHERS)))
    for flag, value in others.items():
        if value is not None:
            raise SpecError(ENGINES_WITH.format(flag=flag))
    if n is None:
        raise SpecError(ENGINES_WITHOUT_N.format(value=engines))
    return (None,) * _rank_count(n)


def parse_hosts(value: str) -> tuple[tuple[str, int], ...]:
    """`node1:2,node2:2` as ((host, ranks), ...), in the order given; a bare host is one rank."""
    entries = []
    for entry in value.strip().strip("'\"").split(","):
        host, _, count = entry.strip().rpartition(":") if ":" in entry else (entry.strip(), "", "1")
        bad_host = not host or ":" in host or "[" in host or any(c.isspace() for c in host)
        if bad_host or not count.isdigit() or int(count) < 1:
            raise SpecError(BAD_HOSTS.format(value=value))
        if host in (known for known, _ in entries):
            raise SpecError(REPEATED_HOST.format(host=host))
        entries.append((host, int(count)))
    return tuple(entries)


def parse_gpu_list(value: str) -> tuple[int, ...]:
    """GPU ids from `0,1,3`, `"0 1 3"` or `[0, 1]`, in the order given."""
    parts = [p for p in re.split(r"[\s,\[\]()]+", value.strip().strip("'\"")) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise SpecError(BAD_GPU_LIST.format(value=value))
    ids = tuple(int(p) for p in parts)
    for gpu in ids:
        if ids.count(gpu) > 1:
            raise SpecError(REPEATED_GPU.format(gpu=gpu))
    return ids


def _gpu_devices(value: str, visible_gpus: Callable[[], int], notices: list[str]):
    if value.strip().lower() == "all":
        count = visible_gpus()
        if count == 0:
            n = min(DEFAULT_CPU_RANKS, os.cpu_count() or 1)
            notices.append(CPU_FALLBACK.format(n=n))
            return (None,) * n
        return tuple(range(count))
    ids = parse_gpu_list(value)
    count = visible_gpus()
    if count == 0:
        raise SpecError(NO_GPU_VISIBLE.format(value=value))
    for gpu in ids:
        if gpu >= count:
            visible = ", ".join(str(i) for i in range(count))
            raise SpecError(GPU_NOT_VISIBLE.format(value=value, gpu=gpu, count=count, visible=visible))
    return ids


def _rank_count(value: int | str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise SpecError(BAD_RANK_COUNT.format(value=value)) from None
    if n < 1 or str(value).strip() != str(n):
        raise SpecError(BAD_RANK_COUNT.format(value=value))
    return n


def _seconds(value: float | str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise SpecError(BAD_TIMEOUT.format(value=value)) from None
    if not seconds > 0 or seconds == float("inf"):
        raise SpecError(BAD_TIMEOUT.format(value=value))
    return seconds
