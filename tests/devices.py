"""A stand-in for CUDA tensors on a machine without a GPU (importable on the ranks)."""

from __future__ import annotations

import torch

# What torch raises when a CUDA tensor is unpickled where CUDA is not available.
NO_CUDA_HERE = (
    "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False. "
    "If you are running on a CPU-only machine, please use torch.load with "
    "map_location=torch.device('cpu') to map your storages to the CPU."
)


def _load_on_a_gpu(*_):
    raise RuntimeError(NO_CUDA_HERE)


class FakeCudaTensor(torch.Tensor):
    """Holds its data on the CPU but says it lives on `cuda:0`, and, like a CUDA tensor in a
    process without CUDA, cannot be unpickled: only a copy made with `.cpu()` can."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)

    def cpu(self, *args, **kwargs) -> torch.Tensor:
        return torch.Tensor.cpu(self, *args, **kwargs).as_subclass(torch.Tensor)

    def __reduce_ex__(self, protocol):
        return (_load_on_a_gpu, ())


def on_fake_gpu(values) -> FakeCudaTensor:
    """A float tensor of `values` that says it is on `cuda:0`."""
    return torch.tensor(values, dtype=torch.float32).as_subclass(FakeCudaTensor)
