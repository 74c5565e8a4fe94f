"""What `%dip --pull` brings back from a GPU rank, and what `%dipstatus` shows of GPU memory."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest
import torch

from ddipp.cluster import RankInfo
from ddipp.fsm import State
from ddipp.rank import pickle_on_cpu, unpickle_pulled
from ddipp.session import Status
from ddipp.spec import plan_group
from tests.devices import on_fake_gpu


class Holder:
    """Any object with a tensor inside."""

    def __init__(self, tensor) -> None:
        self.tensor = tensor


def pulled(**namespace):
    return unpickle_pulled(pickle_on_cpu(list(namespace), namespace))


def test_tensors_nested_anywhere_arrive_on_the_cpu_with_their_values():
    # Pickled as they are, they would not load here (as CUDA tensors would not without CUDA).
    with pytest.raises(RuntimeError, match="deserialize object on a CUDA device"):
        pickle.loads(pickle.dumps([on_fake_gpu([1.0])]))
    model = torch.nn.Linear(2, 1)
    model.weight = torch.nn.Parameter(on_fake_gpu([[1.0, 2.0]]))
    state = OrderedDict(weight=on_fake_gpu([[3.0]]), steps=torch.tensor(7))
    [nested, state_dict, module, holder] = pulled(
        nested=[on_fake_gpu([1.0]), {"pair": (on_fake_gpu([2.0]), "label")}],
        state_dict=state,
        module=model,
        holder=Holder(on_fake_gpu([4.0])),
    )
    tensors = [nested[0], nested[1]["pair"][0], state_dict["weight"], module.weight, holder.tensor]
    assert all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)
    assert {t.device.type for t in tensors} == {"cpu"}
    assert [t.tolist() for t in tensors] == [[1.0], [2.0], [[3.0]], [[1.0, 2.0]], [4.0]]
    assert nested[1]["pair"][1] == "label" and type(state_dict) is OrderedDict
    assert state_dict["steps"].item() == 7 and module.bias.device.type == "cpu"


def test_parameters_stay_parameters_and_only_leaves_keep_requires_grad():
    leaf = on_fake_gpu([1.0]).requires_grad_()
    [parameter, kept, derived] = pulled(
        parameter=torch.nn.Parameter(on_fake_gpu([1.0])), kept=leaf, derived=leaf * 2
    )
    assert type(parameter) is torch.nn.Parameter and parameter.requires_grad
    assert kept.requires_grad and kept.is_leaf
    assert not derived.requires_grad and derived.tolist() == [2.0]


def test_a_tensor_that_appears_twice_arrives_as_one_tensor():
    shared = on_fake_gpu([5.0])
    [pair] = pulled(pair=[shared, shared])
    assert pair[0] is pair[1]


def test_a_meta_tensor_has_no_data_to_move_and_arrives_as_it_was():
    [meta] = pulled(meta=torch.empty(3, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (3,)


def test_a_name_the_rank_lacks_is_a_name_error():
    with pytest.raises(NameError, match="name 'nothing' is not defined"):
        pickle_on_cpu(["nothing"], {})


def test_status_shows_the_gpu_memory_nvidia_smi_would_show():
    spec, _ = plan_group(gpus="0", app="torch", visible_gpus=lambda: 1)
    memory = {
        "rss_mb": 812.4,
        "cuda_allocated_mb": 120.2,
        "cuda_reserved_mb": 256.0,
        "device_used_mb": 1945.0,
        "device_total_mb": 81559.0,
    }
    status = Status(State.PATCHED, spec, (RankInfo(0, 3, 4242, "GPU 0", "host"),), frozenset(), "", (memory,))
    row = status.render().splitlines()[-1]
    assert row.endswith("812 MB; cuda 120 MB allocated, 256 MB reserved; device 1945 of 81559 MB in use")
