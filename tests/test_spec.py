"""`%makedip` flags resolved into a group spec, and every way to get them wrong."""

from __future__ import annotations

import pytest

from ddipp.apps import AppUnavailable, default_app, get_app
from ddipp.spec import SpecError, parse_gpu_list, plan_group


def no_gpus() -> int:
    return 0


def four_gpus() -> int:
    return 4


def test_cpu_ranks_use_gloo_and_no_devices():
    spec, notices = plan_group(n="3", app="torch", visible_gpus=no_gpus)
    assert spec.devices == (None, None, None)
    assert spec.backend == "gloo" and spec.world_size == 3 and notices == []


def test_gpu_list_keeps_the_order_given_and_uses_nccl():
    spec, _ = plan_group(gpus="3 1", app="torch", visible_gpus=four_gpus)
    assert spec.devices == (3, 1) and spec.backend == "cpu:gloo,cuda:nccl"


@pytest.mark.parametrize("text", ["0,1,3", "0 1 3", '"0 1 3"', "[0, 1, 3]"])
def test_gpu_lists_are_read_in_every_documented_spelling(text):
    assert parse_gpu_list(text) == (0, 1, 3)


def test_all_gpus_without_gpus_falls_back_to_cpu_with_a_notice():
    spec, notices = plan_group(gpus="all", app="torch", visible_gpus=no_gpus)
    assert spec.devices[0] is None and spec.backend == "gloo"
    assert len(notices) == 1 and "no GPU is visible" in notices[0]


def test_no_flags_means_all_gpus():
    spec, _ = plan_group(app="torch", visible_gpus=four_gpus)
    assert spec.devices == (0, 1, 2, 3)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n": "0"}, "at least 1"),
        ({"n": "-2"}, "at least 1"),
        ({"n": "two"}, "whole number"),
        ({"n": "2.5"}, "whole number"),
        ({"gpus": "0", "n": "2"}, "not both"),
        (
            {"gpus": "7", "visible": four_gpus},
            "GPU 7 is not visible; this machine shows 4 GPU(s): 0, 1, 2, 3",
        ),
        ({"gpus": "0"}, "no GPU is visible"),
        ({"gpus": "0,0", "visible": four_gpus}, "twice"),
        ({"gpus": "zero", "visible": four_gpus}, "GPU ids"),
        ({"n": "2", "backend": "nccl"}, "needs GPU ranks"),
        ({"n": "2", "backend": "carrier-pigeon"}, "is not one of"),
        ({"n": "2", "timeout": "0"}, "positive number"),
        ({"n": "2", "timeout": "soon"}, "positive number"),
        (
            {"engines": "torque", "n": "2"},
            "is not one of ipyparallel's launchers ddipp starts ranks with: slurm",
        ),
        ({"engines": "slurm"}, "--engines slurm needs -n N"),
        ({"engines": "slurm", "n": "2", "hosts": "node1:2"}, "it does not take --hosts"),
        ({"engines": "slurm", "gpus": "all"}, "--engines slurm needs -n N"),
        ({"engines": "slurm", "n": "2", "attach": "x.json"}, "it does not take --attach"),
        ({"hosts": "a,b:2", "gpus": "all"}, "give the GPU ranks of each host (gpu-a:8,gpu-b:8)"),
        ({"hosts": "a:2,b:2", "gpus": "0,1"}, "give the hosts without counts (--hosts gpu-a,gpu-b -g 0,1)"),
        ({"hosts": "a,b", "gpus": "0,0"}, "twice"),
        ({"n": "2", "config": "ipcluster_config.py"}, "it goes with --hosts or --engines"),
    ],
)
def test_bad_flags_are_rejected_with_a_message_that_says_what_to_do(kwargs, words):
    visible = kwargs.pop("visible", no_gpus)
    with pytest.raises(SpecError) as raised:
        plan_group(app="torch", visible_gpus=visible, **kwargs)
    assert words in str(raised.value)


def test_unknown_app_lists_the_choices():
    with pytest.raises(AppUnavailable) as raised:
        plan_group(n="2", app="tensorflow", visible_gpus=no_gpus)
    assert "fastai_v1, fastai, torch, none" in str(raised.value)


def test_an_app_whose_library_is_missing_says_what_to_install(monkeypatch):
    monkeypatch.setattr("ddipp.apps.installed_version", lambda name: None)
    with pytest.raises(AppUnavailable) as raised:
        get_app("fastai")
    assert "it is not installed" in str(raised.value) and "pip install" in str(raised.value)


def test_an_app_of_the_other_major_version_names_the_installed_one(monkeypatch):
    monkeypatch.setattr("ddipp.apps.installed_version", lambda name: "2.8.12")
    with pytest.raises(AppUnavailable) as raised:
        get_app("fastai_v1")
    assert "fastai 2.8.12 is installed" in str(raised.value)
    assert "fastai==1.0.61" in str(raised.value)


@pytest.mark.parametrize(("version", "app"), [(None, "torch"), ("1.0.61", "fastai_v1"), ("2.8.12", "fastai")])
def test_the_default_app_follows_the_installed_fastai(monkeypatch, version, app):
    monkeypatch.setattr("ddipp.apps.installed_version", lambda name: version)
    assert default_app() == app


def test_engines_asks_a_launcher_for_n_cpu_ranks():
    spec, notices = plan_group(engines="slurm", n="4", config="cluster.py", app="torch", visible_gpus=no_gpus)
    assert (spec.world_size, spec.on_gpus, spec.backend, spec.engines, spec.config) == (
        4, False, "gloo", "slurm", "cluster.py"
    )  # fmt: skip
    assert spec.describe() == "4 CPU rank(s) started with ipyparallel's slurm launcher, gloo, app torch"
    assert notices == []


@pytest.mark.parametrize(
    ("flags", "world", "local_gpus", "where"),
    [
        ({"engines": "slurm", "n": "4"}, 4, (), "4 GPU rank(s) started with ipyparallel's slurm launcher"),
        ({"hosts": "a:2,b:1"}, 3, (), "3 GPU rank(s) on 2 host(s) over ssh (a: 2, b: 1)"),
    ],
)
def test_gpu_ranks_on_other_hosts_are_counted_there_not_here(flags, world, local_gpus, where):
    # No GPU here: each host's GPUs are counted on it, once its engines run.
    spec, notices = plan_group(gpus="all", app="torch", visible_gpus=no_gpus, **flags)
    assert (spec.world_size, spec.on_gpus, spec.local_gpus, spec.backend) == (
        world, True, local_gpus, "cpu:gloo,cuda:nccl"
    )  # fmt: skip
    assert spec.describe() == f"{where}, cpu:gloo,cuda:nccl, app torch"
    assert any("on GPU ranks" in notice for notice in notices)


def test_gpu_ids_with_bare_hosts_run_one_rank_per_id_on_every_host():
    spec, _ = plan_group(hosts="a,b", gpus="2,0", app="torch", visible_gpus=no_gpus)
    assert (spec.hosts, spec.local_gpus, spec.world_size) == ((("a", 2), ("b", 2)), (2, 0), 4)
