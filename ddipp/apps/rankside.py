"""Helpers the fastai patches share, run inside the rank processes (no notebook-side imports)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def distributed() -> bool:
    """Whether this process is in an initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group; 0 outside one."""
    import torch.distributed as dist

    return dist.get_rank() if distributed() else 0


def on_gpu() -> bool:
    """Whether this rank's group runs NCCL: alone (`nccl`) or for CUDA tensors beside another
    backend for CPU ones (`cpu:gloo,cuda:nccl`, what ddipp's GPU ranks use)."""
    import torch.distributed as dist

    return distributed() and "nccl" in dist.get_backend().replace(":", ",").split(",")


def collective_device() -> Any:
    """Where tensors for a collective must live: the GPU for NCCL, the CPU for gloo."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if on_gpu() else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (bounded by the group's collective timeout); nothing outside a group."""
    import torch.distributed as dist

    if distributed():
        dist.barrier()


def global_mean(value: Any) -> Any:
    """`value` (a number or a 0-d tensor) averaged over every rank; itself outside a group."""
    if not distributed():
        return value
    import torch
    import torch.distributed as dist

    was_tensor = isinstance(value, torch.Tensor)
    tensor = torch.tensor(float(value), device=collective_device(), dtype=torch.float64)
    dist.all_reduce(tensor)
    mean = tensor.item() / dist.get_world_size()
    return torch.tensor(mean, dtype=value.dtype, device=value.device) if was_tensor else mean


def from_rank0(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


_ABSENT = object()


class Patches:
    """Attributes replaced on classes and modules, to be put back by `undo`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def replace(self, owner: Any, name: str, new: Any) -> None:
        """Set `owner.name` (a class, module or instance attribute) to `new`, remembering what was there."""
        # Only what `owner` itself holds: an inherited attribute (or a method of an instance's
        # class) is restored by deleting ours.
        self._saved.append((owner, name, vars(owner).get(name, _ABSENT)))
        setattr(owner, name, new)

    def replace_everywhere(self, original: Callable, new: Callable, package: str) -> int:
        """Replace `original` in every loaded module of `package` that holds it; return how many."""
        count = 0
        for module_name, module in list(sys.modules.items()):
            if module is None or not (module_name == package or module_name.startswith(package + ".")):
                continue
            for name, value in list(vars(module).items()):
                if value is original:
                    self.replace(module, name, new)
                    count += 1
        return count

    def undo(self) -> None:
        """Put back every replaced attribute, last first."""
        while self._saved:
            owner, name, value = self._saved.pop()
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)

    def __bool__(self) -> bool:
        return bool(self._saved)


def show_figures_inline() -> None:
    """`%matplotlib inline` on this rank, so fastai's plots come back as images."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            shell.run_line_magic("matplotlib", "inline")
    except Exception:
        pass  # no matplotlib: fastai's plots are then unavailable anyway


GLOBAL_BATCH = (
    "ddipp: {world} ranks each train on batches of {bs} from their share of the data, so every "
    "optimizer step sees {total} samples (a global batch of {total}) at the learning rate you give. "
    "For the one-process batch of {bs}, build the DataLoaders with bs={per_rank} (bs // {world})."
)
_told_global_batch = False


def tell_global_batch(batch_size: int) -> None:
    """Say once, on rank 0, how large the global batch is and how to keep the one-process one."""
    global _told_global_batch
    if _told_global_batch or not distributed():
        return
    _told_global_batch = True
    import torch.distributed as dist

    if dist.get_rank() == 0:
        world = dist.get_world_size()
        print(
            GLOBAL_BATCH.format(
                world=world, bs=batch_size, total=world * batch_size, per_rank=max(1, batch_size // world)
            )
        )
