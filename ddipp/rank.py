"""Code that runs inside each rank process; it never imports the notebook side of ddipp."""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import sys
import time
import weakref
from datetime import timedelta
from typing import Any

import cloudpickle

from .placement import visible_entries

# How long a rank's stdout/stderr may hold text before sending it (ipykernel's default is 0.2 s):
# output should reach the notebook within 100 ms of being written.
OUTPUT_FLUSH_INTERVAL_S = 0.02
# The first line the notebook puts before a cell's code: the notebook's execution count.
CELL_NUMBER_MARKER = "#ddipp-cell-number "
# Names under which torch.distributed and DDP code hold a process group in their frames.
_GROUP_LOCALS = ("self", "group", "pg", "process_group")

# Groups taken apart by `abort_group`, so that their later use can be recognised. Weakly
# held: an old group nothing uses any more must close its sockets.
_retired_groups: weakref.WeakSet = weakref.WeakSet()
_staged_pushes: dict[str, dict[str, Any]] = {}
# This rank's TCP connections that forming a group across hosts opened (the store, gloo's pairs):
# what `abort_group` shuts there, where the peers' pids mean nothing.
_group_connections: set[tuple[str, int, str, int]] = set()
# Rank 0's listening socket for the TCP store of the next formation (`open_rendezvous`).
_rendezvous_socket: socket.socket | None = None


def loopback_interface() -> str | None:
    """The name of the network interface that holds 127.0.0.1 (`lo` on Linux)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address == "127.0.0.1" for address in addresses):
            return name
    return None


# A control-channel request (served beside the main thread) that cuts a rank's connections.
RELEASE_REQUEST = "ddipp_release_request"
RELEASE_REPLY = "ddipp_release_reply"
# Set by ddipp's launcher in each engine's environment: its host's place among --hosts.
HOST_INDEX = "DDIPP_HOST_INDEX"
# Set in an engine by its first formation: what PLACEMENT_VARIABLES were there before (JSON).
HOST_ENVIRONMENT = "DDIPP_HOST_ENVIRONMENT"
# A process's rank in its mpiexec run: Open MPI's, then MPICH's (and PMIx's) name for it.
MPI_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
# What placement reads of a rank's own environment on another host, as torchrun would: a value
# set there stays (ddipp.placement, ddipp.hosts).
PLACEMENT_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "TORCH_NCCL_BLOCKING_WAIT",
    "GLOO_SOCKET_IFNAME",
    "NCCL_SOCKET_IFNAME",
)


def route_to(address: str) -> tuple[str, str | None]:
    """This host's source address toward `address`, and the interface that holds it.

    A UDP socket "connected" to `address` sends nothing but makes the kernel pick the route.
    """
    import psutil

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, 9))
        source = probe.getsockname()[0]
    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.address == source for entry in addresses):
            return source, name
    return source, None


def describe_host(controller_address: str) -> dict:
    """Where this rank runs: host name, pid, address and interface toward the controller, and
    its host's place among `%makedip --hosts` (None for engines ddipp did not start that way),
    its Slurm job and node index in the job (None outside Slurm), its rank in an mpiexec run
    (None outside one)."""
    address, interface = route_to(controller_address)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "address": address,
        "interface": interface,
        "host_index": os.environ.get(HOST_INDEX),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_node": os.environ.get("SLURM_NODEID"),
        "slurm_local": os.environ.get("SLURM_LOCALID"),
        "mpi_rank": next((os.environ[name] for name in MPI_RANK_VARIABLES if name in os.environ), None),
        "gpus": visible_gpus(),
        # What placement reads of the rank's own environment (what is set there stays set), as
        # it was before ddipp formed a group in this engine.
        "environment": _host_environment(),
    }


def _placement_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in PLACEMENT_VARIABLES if name in os.environ}


def _host_environment() -> dict[str, str]:
    """PLACEMENT_VARIABLES as the host set them, before any group ddipp formed in this engine."""
    recorded = os.environ.get(HOST_ENVIRONMENT)
    return json.loads(recorded) if recorded is not None else _placement_environment()


def visible_gpus() -> int:
    """How many GPUs this process may use, counted without starting CUDA (a rank is given its GPU
    in CUDA_VISIBLE_DEVICES, which CUDA reads once, when it starts): the entries of
    CUDA_VISIBLE_DEVICES where it is set (as CUDA reads them), else the GPUs of the NVIDIA
    driver."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len(visible_entries(listed))
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def watch_controller(address: str, port: int, misses: int, period_s: float = 1.0) -> None:
    """End this process once its controller at `address:port` cannot be reached `misses` times in
    a row, a second apart: the notebook's kernel is gone (its controller with it), or this host
    is cut off. ipyparallel's own check of the controller's heartbeat runs on the engine's main
    loop, which a running cell blocks: a rank training when its kernel is killed would go on."""
    import threading

    def watch() -> None:
        missed = 0
        while missed < misses:
            time.sleep(period_s)
            try:
                with socket.create_connection((address, port), timeout=period_s):
                    missed = 0
            except OSError:
                missed += 1
        os._exit(1)  # the main thread may be blocked in a collective: no clean way out

    threading.Thread(target=watch, name="ddipp-controller-watch", daemon=True).start()


def open_rendezvous(address: str) -> int:
    """Listen on a free port of `address` for the TCP store that this rank (rank 0) will serve.

    The socket is held until `form_group` hands it to the store: no other process can take the
    port in between, and the store listens on that address only, not on every interface.
    """
    global _rendezvous_socket
    if _rendezvous_socket is not None:
        _rendezvous_socket.close()
    _rendezvous_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _rendezvous_socket.bind((address, 0))
    _rendezvous_socket.listen()
    return _rendezvous_socket.getsockname()[1]


def form_group(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    store_path: str | None,
    backend: str,
    device: str,
    environment: dict[str, str],
    timeout_s: float,
) -> dict:
    """Join the torch.distributed group as `rank` on `device`, in `environment` (torchrun's
    contract, from `ddipp.placement`); return what `%dipstatus` shows of it.

    On one host the ranks meet in a file store in a folder private to the user: nothing
    listens for the rendezvous, so no other process can join or disturb it. Across hosts
    (`store_path` None) rank 0 serves a TCP store on `master_addr`, the address its peers reach.
    """
    global _group_connections
    # What the host itself set, kept for a later describe_host (another --attach): these
    # variables are ddipp's from now on.
    os.environ.setdefault(HOST_ENVIRONMENT, json.dumps(_placement_environment()))
    # Before torch starts CUDA: a GPU rank must see only its own GPU.
    os.environ.update(environment)
    import torch
    import torch.distributed as dist

    if dist.is_initialized():  # forming again after a rank left the group
        dist.destroy_process_group()
    if device != "cpu":
        torch.cuda.set_device(device)
    if "OMP_NUM_THREADS" in environment:
        torch.set_num_threads(int(environment["OMP_NUM_THREADS"]))
    if master_addr.startswith("127."):
        # gloo's pairs and NCCL's bootstrap sockets would otherwise listen on the address the
        # host name resolves to, or on a routable interface.
        interface = loopback_interface()
        for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            if interface is not None and variable not in os.environ:
                os.environ[variable] = interface
    kwargs: dict = {"device_id": torch.device(device)} if device != "cpu" else {}
    timeout = timedelta(seconds=timeout_s)
    across_hosts = store_path is None
    before = _tcp_connections() if across_hosts else set()
    if across_hosts:
        store = _tcp_store(rank, world_size, master_addr, master_port, timeout)
    else:
        store = dist.FileStore(store_path, world_size)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout, **kwargs)
    if across_hosts:
        # gloo connects every pair while the group forms: the new connections are the group's.
        _group_connections = _tcp_connections() - before
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "flush_interval"):
            stream.flush_interval = OUTPUT_FLUSH_INTERVAL_S
    _number_cells_as_the_notebook()
    _answer_release_requests()
    return {"rank": rank, "pid": os.getpid(), "device": device, "host": socket.gethostname()}


def _tcp_store(rank: int, world_size: int, address: str, port: int, timeout: timedelta):
    """The TCP store of a group across hosts: served by rank 0 on its socket from `open_rendezvous`."""
    global _rendezvous_socket
    import torch.distributed as dist

    if rank != 0:
        return dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout)
    listening, _rendezvous_socket = _rendezvous_socket, None
    try:
        return dist.TCPStore(
            address,
            port,
            world_size,
            is_master=True,
            timeout=timeout,
            wait_for_workers=False,
            master_listen_fd=listening.fileno(),
        )
    finally:
        listening.detach()  # the store owns the descriptor now


def leave_group() -> None:
    """Destroy the process group if this rank has one (best effort, before the rank stops)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def abort_group(peer_pids: list[int], across_hosts: bool = False) -> None:
    """Take this rank out of its process group so that no peer can wait for it any more.

    `destroy_process_group` alone does not do that while a DDP model (or a group from
    `new_group`) still holds the backend: gloo's connections stay open and a peer blocked in a
    collective waits for the whole timeout. So the connections themselves are shut: NCCL
    communicators are aborted, gloo's sockets to the peers are shut down (peers then fail at
    once with "Connection closed by peer"). Objects built on the old group fail at once when
    used again; `last_error_used_a_retired_group` recognises that. Across hosts, where pids name
    only the peers of this host, the connections opened while the group formed are shut too.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    from torch.distributed import distributed_c10d

    groups = list(distributed_c10d._world.pg_map)
    if any("nccl" in dist.get_backend(group) for group in groups):
        distributed_c10d._abort_process_group()
    cut_connections(peer_pids, across_hosts)
    dist.destroy_process_group()


def cut_connections(peer_pids: list[int], across_hosts: bool = False) -> None:
    """Shut this rank's gloo and store connections to its peers (see `abort_group`), and retire
    its groups. Safe beside a main thread blocked in a collective: that collective fails at once."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    from torch.distributed import distributed_c10d

    _retired_groups.update(list(distributed_c10d._world.pg_map))
    _shut_sockets_to(set(peer_pids) - {os.getpid()})
    if across_hosts:
        _shut_connections(_group_connections)


def _answer_release_requests() -> None:
    """Handle `RELEASE_REQUEST` on the engine's control channel, which its own thread serves:
    the notebook can then cut a rank loose while the rank's main thread waits in a collective
    for a peer that is gone (a host lost or cut off sends no "connection closed")."""
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None or RELEASE_REQUEST in kernel.control_handlers:
        return

    def release(stream, idents, parent) -> None:
        content = parent["content"]
        try:
            cut_connections(content["peer_pids"], content["across_hosts"])
            reply = {"status": "ok"}
        except Exception as error:
            reply = {"status": "error", "ename": type(error).__name__, "evalue": str(error), "traceback": []}
        kernel.session.send(stream, RELEASE_REPLY, content=reply, parent=parent, ident=idents)

    kernel.control_handlers[RELEASE_REQUEST] = release


def _tcp_connections() -> set[tuple[str, int, str, int]]:
    """This process's TCP connections as (local address, port, remote address, port)."""
    import psutil

    return {
        (c.laddr.ip, c.laddr.port, c.raddr.ip, c.raddr.port)
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr
    }


def _shut_connections(connections: set[tuple[str, int, str, int]]) -> None:
    """Shut down those of this process's TCP connections that are in `connections`."""
    import psutil

    for connection in psutil.Process().net_connections(kind="tcp"):
        if connection.raddr and (*connection.laddr, *connection.raddr) in connections:
            _shut_down(connection.fd)


def _shut_sockets_to(peer_pids: set[int]) -> None:
    """Shut down this process's TCP connections to sockets that the processes `peer_pids` own."""
    import psutil

    peer_addresses = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.pid in peer_pids and c.laddr
    }
    for connection in psutil.Process().net_connections(kind="tcp"):
        if connection.raddr and (connection.raddr.ip, connection.raddr.port) in peer_addresses:
            _shut_down(connection.fd)


def _shut_down(fd: int) -> None:
    """Shut down the TCP connection of descriptor `fd` (a copy of it: the owner closes its own)."""
    try:
        duplicate = socket.socket(fileno=os.dup(fd))
    except OSError:
        return  # closed in the meantime
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    finally:
        duplicate.close()


def probe_group(within_s: float) -> bool:
    """Whether the process group still works: a collective every rank joins, bounded here."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return False
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in dist.get_backend() else "cpu"
    try:
        work = dist.all_reduce(torch.ones(1, device=device), async_op=True)
        deadline = time.monotonic() + within_s
        while not work.is_completed():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        work.wait()
    except Exception:
        return False
    return True


def last_error_used_a_retired_group() -> bool:
    """Whether the last cell's error came from a DDP model or group of a retired group."""
    traceback = getattr(sys, "last_traceback", None)
    if not _retired_groups or traceback is None:
        return False
    retired = {id(group) for group in _retired_groups}
    while traceback is not None:
        local_values = traceback.tb_frame.f_locals
        for name in _GROUP_LOCALS:
            value = local_values.get(name)
            try:
                held = getattr(value, "process_group", None)
            except Exception:  # a user's __getattr__ may raise anything
                held = None
            if id(value) in retired or (held is not None and id(held) in retired):
                return True
        traceback = traceback.tb_next
    return False


def _number_cells_as_the_notebook() -> None:
    """Cells sent by the notebook run under its execution count (tracebacks name its cell)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or number_cell in shell.input_transformers_cleanup:
        return
    shell.input_transformers_cleanup.insert(0, number_cell)


def number_cell(lines: list[str]) -> list[str]:
    """An IPython input transformer: the marker line sets the execution count and goes away."""
    if not lines or not lines[0].startswith(CELL_NUMBER_MARKER):
        return lines
    from IPython import get_ipython

    try:
        get_ipython().execution_count = int(lines[0][len(CELL_NUMBER_MARKER) :])
    except ValueError:
        pass  # not a marker of ours after all: run the cell without it
    return lines[1:]


def stage_push(token: str, layout: list[tuple[str, int]], *frames: memoryview) -> tuple[str, str] | None:
    """Load pushed values beside the namespace (not in it yet); the name and error of the first
    value that cannot be loaded here, or None. `commit_push` then makes them visible."""
    staged: dict[str, Any] = {}
    position = 0
    for name, count in layout:
        header, buffers = frames[position], frames[position + 1 : position + 1 + count]
        position += 1 + count
        try:
            staged[name] = pickle.loads(header, buffers=writable(buffers))
        except Exception as error:
            return name, f"{type(error).__name__}: {error}"
    _staged_pushes[token] = staged
    return None


def commit_push(token: str) -> None:
    """Make staged values visible in the rank's namespace."""
    from IPython import get_ipython

    # Idempotent: sent again when an interrupt broke into the wait for it.
    get_ipython().user_ns.update(_staged_pushes.pop(token, {}))


def discard_push(token: str) -> None:
    """Forget staged values (another rank could not load the push)."""
    _staged_pushes.pop(token, None)


def memory_in_use() -> dict:
    """This rank's resident memory and, on a GPU, what `nvidia-smi` would say of its device:
    what torch's allocator holds (allocated, reserved) and what the device has in use in all."""
    import psutil

    info = {"rss_mb": psutil.Process().memory_info().rss / 2**20}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info()
        info.update(
            cuda_allocated_mb=torch.cuda.memory_allocated() / 2**20,
            cuda_reserved_mb=torch.cuda.memory_reserved() / 2**20,
            device_used_mb=(total - free) / 2**20,
            device_total_mb=total / 2**20,
        )
    return info


def pickle_on_cpu(names: list[str], namespace: dict | None = None) -> list[Any]:
    """The values of `names` in this rank's namespace (its IPython namespace unless given),
    pickled with every tensor that lives on a device moved to the CPU.

    Unpickled in the notebook, a CUDA tensor would land on a GPU there (a CUDA context on a
    training GPU) or fail where the notebook has no CUDA. Tensors nested anywhere (lists,
    dicts, state_dicts, modules, any object) are copied to the CPU as they are pickled.
    Returns the pickle and its out-of-band buffers (protocol 5: large arrays are not copied
    into the pickle); `unpickle_pulled` reads them back.
    """
    if namespace is None:
        from IPython import get_ipython

        namespace = get_ipython().user_ns
    for name in names:
        if name not in namespace:
            raise NameError(f"name {name!r} is not defined")
    buffer = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    CpuPickler(buffer, protocol=5, buffer_callback=buffers.append).dump([namespace[name] for name in names])
    return [buffer.getvalue(), *(b.raw() for b in buffers)]


def unpickle_pulled(frames: list[Any]) -> list[Any]:
    """The values `pickle_on_cpu` pickled, from its frames."""
    return pickle.loads(frames[0], buffers=writable(frames[1:]))


def writable(buffers: Any) -> list[Any]:
    """Buffers to load arrays from: large ones arrive as writable message frames (used as they
    are), small ones as read-only bytes (copied, or the arrays would be read-only)."""
    return [b if not memoryview(b).readonly else bytearray(b) for b in buffers]


def on_cpu(tensor):
    """`tensor` copied to the CPU: same type (`nn.Parameter`, subclasses), detached, and
    `requires_grad` kept for leaf tensors (autograd history cannot cross processes)."""
    import torch

    moved = tensor.detach().cpu()
    requires_grad = tensor.requires_grad and tensor.is_leaf
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(moved, requires_grad=requires_grad)
    return moved.requires_grad_() if requires_grad else moved


class CpuPickler(cloudpickle.Pickler):
    """cloudpickle, with each tensor that lives on a device pickled as its CPU copy."""

    def reducer_override(self, obj):
        torch = sys.modules.get("torch")  # no torch imported on this rank: no tensors either
        if torch is not None and isinstance(obj, torch.Tensor) and obj.device.type not in ("cpu", "meta"):
            return on_cpu(obj).__reduce_ex__(self.proto)
        return super().reducer_override(obj)
