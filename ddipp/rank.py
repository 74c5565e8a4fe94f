"""Code that runs inside each rank process; it never imports the notebook side of ddipp."""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta

# How long a rank's stdout/stderr may hold text before sending it (ipykernel's default is 0.2 s):
# output should reach the notebook within 100 ms of being written.
OUTPUT_FLUSH_INTERVAL_S = 0.02


# The listening socket of rank 0's rendezvous store, bound by `open_rendezvous` and handed to
# the store in `form_group` (the store then owns it).
_rendezvous_fd: int | None = None


def open_rendezvous(host: str) -> int:
    """Rank 0: listen on `host` at a free port for the rendezvous store; return the port.

    Binding here (not in the store, which would listen on every interface) keeps the
    rendezvous on `host`, and choosing the port where it is bound leaves no race for it.
    """
    global _rendezvous_fd
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    _rendezvous_fd = listener.detach()
    return port


def loopback_interface() -> str | None:
    """The name of the network interface that holds 127.0.0.1 (`lo` on Linux)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address == "127.0.0.1" for address in addresses):
            return name
    return None


def form_group(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    backend: str,
    gpu: int | None,
    timeout_s: float,
) -> dict:
    """Join the torch.distributed group as `rank`; return what `%dipstatus` shows of it."""
    os.environ.update(
        RANK=str(rank),
        # On GPUs, the device index: code that picks `cuda:LOCAL_RANK` (accelerate, hence
        # fastai 2, and most scripts) then lands on this rank's GPU for any -g list.
        LOCAL_RANK=str(rank if gpu is None else gpu),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    import torch
    import torch.distributed as dist

    if dist.is_initialized():  # forming again after a rank left the group
        dist.destroy_process_group()
    if gpu is not None:
        torch.cuda.set_device(gpu)
        device = f"cuda:{gpu}"
    else:
        # One thread per CPU rank unless the user chose otherwise: N ranks each using every
        # core would oversubscribe the machine and make DDP slower than one process.
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        device = "cpu"
    if master_addr.startswith("127.") and "GLOO_SOCKET_IFNAME" not in os.environ:
        # gloo would otherwise listen on the address the host name resolves to.
        interface = loopback_interface()
        if interface is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    kwargs: dict = {"device_id": torch.device(device)} if gpu is not None else {}
    timeout = timedelta(seconds=timeout_s)
    global _rendezvous_fd
    listen_fd, _rendezvous_fd = (_rendezvous_fd, None) if rank == 0 else (None, None)
    store = dist.TCPStore(
        master_addr,
        master_port,
        world_size,
        is_master=rank == 0,
        timeout=timeout,
        master_listen_fd=listen_fd,
    )
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout, **kwargs)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "flush_interval"):
            stream.flush_interval = OUTPUT_FLUSH_INTERVAL_S
    return {"rank": rank, "pid": os.getpid(), "device": device, "host": socket.gethostname()}


def leave_group() -> None:
    """Destroy the process group if this rank has one (best effort, before the rank stops)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def memory_in_use() -> dict:
    """This rank's resident memory and, on a GPU, the memory torch has allocated there."""
    import psutil

    info = {"rss_mb": psutil.Process().memory_info().rss / 2**20}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        info["cuda_mb"] = torch.cuda.memory_allocated() / 2**20
    return info
