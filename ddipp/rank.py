"""Code that runs inside each rank process; it never imports the notebook side of ddipp."""

from __future__ import annotations

import io
import os
import pickle
import socket
import sys
from datetime import timedelta

import cloudpickle

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
    device: str,
    environment: dict[str, str],
    timeout_s: float,
) -> dict:
    """Join the torch.distributed group as `rank` on `device`, in `environment` (torchrun's
    contract, from `ddipp.placement`); return what `%dipstatus` shows of it."""
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


def pickle_on_cpu(names: list[str], namespace: dict | None = None) -> bytes:
    """The values of `names` in this rank's namespace (its IPython namespace unless given),
    pickled with every tensor that lives on a device moved to the CPU.

    Unpickled in the notebook, a CUDA tensor would land on a GPU there (a CUDA context on a
    training GPU) or fail where the notebook has no CUDA. Tensors nested anywhere (lists,
    dicts, state_dicts, modules, any object) are copied to the CPU as they are pickled.
    """
    if namespace is None:
        from IPython import get_ipython

        namespace = get_ipython().user_ns
    for name in names:
        if name not in namespace:
            raise NameError(f"name {name!r} is not defined")
    buffer = io.BytesIO()
    CpuPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump([namespace[name] for name in names])
    return buffer.getvalue()


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
