"""Code that runs inside each rank process; it never imports the notebook side of ddipp."""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta

# How long a rank's stdout/stderr may hold text before sending it (ipykernel's default is 0.2 s):
# output should reach the notebook within 100 ms of being written.
OUTPUT_FLUSH_INTERVAL_S = 0.02


def form_group(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    backend: str,
    gpu: int | None,
    timeout_s: float | None = None,
) -> dict:
    """Join the torch.distributed group as `rank`; return what `%dipstatus` shows of it."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
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
    kwargs: dict = {"device_id": torch.device(device)} if gpu is not None else {}
    if timeout_s is not None:
        kwargs["timeout"] = timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        **kwargs,
    )
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
