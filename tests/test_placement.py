"""Each rank's environment (torchrun's contract), device and backend, computed without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.distributed.distributed_c10d import BackendConfig

from ddipp.errors import LaunchFailed
from ddipp.hosts import devices_per_host, gpus_of_host, order_hosts, ranks_by_host, take_ranks
from ddipp.placement import place_host, place_hosts
from ddipp.spec import SpecError, plan_group

MASTER = {"master_addr": "127.0.0.1", "master_port": 29613}


def gpus(count: int):
    return lambda: count


def placed(flag: str, count: int, inherited: dict[str, str] | None = None):
    spec, _ = plan_group(gpus=flag, app="torch", visible_gpus=gpus(count))
    return place_host(spec.devices, inherited=inherited or {}, **MASTER)


def environments(flag: str, count: int, inherited: dict[str, str] | None = None) -> list[dict[str, str]]:
    return [dict(p.environment) for p in placed(flag, count, inherited)]


def test_all_gpus_gives_each_rank_torchruns_variables_and_only_its_own_gpu():
    ranks = placed("all", 4)
    assert [p.device for p in ranks] == ["cuda:0"] * 4
    assert [p.label for p in ranks] == ["GPU 0", "GPU 1", "GPU 2", "GPU 3"]
    for rank, placement in enumerate(ranks):
        assert placement.rank == rank
        assert dict(placement.environment) == {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "4",
            "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "0",
            "GROUP_WORLD_SIZE": "1",
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": "4",
            "ROLE_NAME": "default",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29613",
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": str(rank),
            "TORCH_NCCL_BLOCKING_WAIT": "1",
        }


def test_a_list_of_high_gpu_ids_keeps_local_ranks_within_the_local_world():
    envs = environments("2,3", 4)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "3"]
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1"]
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"2"}
    # accelerate's is_local_main_process is LOCAL_RANK == 0: exactly one rank, rank 0.
    assert [e["RANK"] for e in envs if e["LOCAL_RANK"] == "0"] == ["0"]


def test_gpus_in_reverse_order_make_rank_0_the_local_main_process():
    envs = environments("1,0", 2)
    assert [(e["RANK"], e["LOCAL_RANK"], e["CUDA_VISIBLE_DEVICES"]) for e in envs] == [
        ("0", "0", "1"),
        ("1", "1", "0"),
    ]


@pytest.mark.parametrize(
    ("inherited", "flag", "count", "seen"),
    [
        ("4,5,6", "1", 3, ["5"]),
        ("4,5,6", "all", 3, ["4", "5", "6"]),
        ("4, 5,6", "2,0", 3, ["6", "4"]),
        ("GPU-1b2c,GPU-9f8e", "1", 2, ["GPU-9f8e"]),
        ("MIG-aa11,MIG-bb22", "all", 2, ["MIG-aa11", "MIG-bb22"]),
    ],
)
def test_gpu_ids_are_indices_into_the_notebooks_own_visible_devices(inherited, flag, count, seen):
    envs = environments(flag, count, {"CUDA_VISIBLE_DEVICES": inherited})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == seen


@pytest.mark.parametrize(
    ("flag", "inherited", "threads"),
    [("0,1", {}, "1"), ("0", {}, None), ("0,1", {"OMP_NUM_THREADS": "6"}, "6")],
)
def test_gpu_ranks_get_one_thread_each_when_they_share_a_host_unless_the_notebook_says(
    flag, inherited, threads
):
    assert {e.get("OMP_NUM_THREADS") for e in environments(flag, 2, inherited)} == {threads}


def test_cpu_ranks_share_the_contract_without_a_gpu_or_nccl_settings():
    spec, _ = plan_group(n="3", app="torch", visible_gpus=gpus(0))
    ranks = place_host(spec.devices, inherited={}, **MASTER)
    assert [(p.device, p.label) for p in ranks] == [("cpu", "cpu")] * 3
    envs = [dict(p.environment) for p in ranks]
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2"] and envs[2]["LOCAL_WORLD_SIZE"] == "3"
    assert not {"CUDA_VISIBLE_DEVICES", "TORCH_NCCL_BLOCKING_WAIT"} & set().union(*envs)


def test_the_notebooks_choice_of_nccl_blocking_wait_is_kept():
    envs = environments("0,1", 2, {"TORCH_NCCL_BLOCKING_WAIT": "0"})
    assert {e["TORCH_NCCL_BLOCKING_WAIT"] for e in envs} == {"0"}


def test_a_later_host_numbers_its_ranks_after_the_earlier_hosts():
    ranks = place_host((0, 1), inherited={}, host=1, hosts=2, first_rank=2, world_size=4, **MASTER)
    envs = [dict(p.environment) for p in ranks]
    assert [(e["RANK"], e["LOCAL_RANK"]) for e in envs] == [("2", "0"), ("3", "1")]
    assert {
        (e["GROUP_RANK"], e["GROUP_WORLD_SIZE"], e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"]) for e in envs
    } == {("1", "2", "4", "2")}


@pytest.mark.parametrize("asked", [None, "nccl"])
def test_gpu_ranks_pair_nccl_for_cuda_tensors_with_gloo_for_cpu_tensors(asked):
    spec, _ = plan_group(gpus="0,1", app="torch", backend=asked, visible_gpus=gpus(2))
    assert BackendConfig(spec.backend).get_device_backend_map() == {"cpu": "gloo", "cuda": "nccl"}


@pytest.mark.parametrize(
    ("flags", "backend"),
    [
        ({"gpus": "0", "backend": "cuda:nccl"}, "cuda:nccl"),
        ({"gpus": "0", "backend": "cpu:gloo,cuda:gloo"}, "cpu:gloo,cuda:gloo"),
        ({"n": "2", "backend": "cpu:gloo"}, "cpu:gloo"),
    ],
)
def test_device_mapped_backends_are_taken_as_given(flags, backend):
    spec, _ = plan_group(app="torch", visible_gpus=gpus(1), **flags)
    assert spec.backend == backend


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"n": "2", "backend": "cpu:gloo,cuda:nccl"}, "needs GPU ranks"),
        ({"gpus": "0", "backend": "cpu:gloo,tpu:nccl"}, "device:backend pairs"),
        ({"gpus": "0", "backend": "cpu:gloo,nccl"}, "device:backend pairs"),
        ({"gpus": "0", "backend": "cuda:pigeon"}, "device:backend pairs"),
    ],
)
def test_bad_device_mapped_backends_are_rejected(flags, words):
    with pytest.raises(SpecError, match=words):
        plan_group(app="torch", visible_gpus=gpus(1), **flags)


def test_a_gpu_group_says_once_where_pulled_tensors_land_and_how_long_a_dead_peer_is_waited_for():
    _, notices = plan_group(gpus="all", app="torch", timeout="45", visible_gpus=gpus(2))
    assert len(notices) == 1
    assert "%dip --pull brings tensors to the CPU" in notices[0] and "-t 45 s" in notices[0]
    _, notices = plan_group(n="2", app="torch", visible_gpus=gpus(2))
    assert notices == []


def test_fastai_patches_see_a_gpu_group_in_a_device_mapped_backend(monkeypatch):
    import torch.distributed as dist

    from ddipp.apps import rankside

    monkeypatch.setattr(rankside, "distributed", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "cpu:gloo,cuda:nccl")
    assert rankside.on_gpu()
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert not rankside.on_gpu()


def test_ranks_across_hosts_are_contiguous_per_host_with_torchruns_local_and_group_ranks():
    placed = place_hosts(
        [(None, None), (None,)], master_addr="10.0.0.1", master_port=29613, inherited=[{}, {}]
    )
    seen = [
        {name: p.environment[name] for name in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")}
        for p in placed
    ]
    assert seen == [
        {"RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"},
        {"RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"},
        {"RANK": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1"},
    ]
    assert {p.environment["WORLD_SIZE"] for p in placed} == {"3"}
    assert {p.environment["GROUP_WORLD_SIZE"] for p in placed} == {"2"}
    assert [p.environment.get("OMP_NUM_THREADS") for p in placed] == ["1", "1", None]


def test_engines_are_taken_host_by_host_in_the_order_their_hosts_first_appear():
    groups = ranks_by_host(["b", "a", "b", "a", "c"])
    assert groups == [[0, 2], [1, 3], [4]]
    assert take_ranks(groups, 3) == [[0, 2], [1]]
    assert take_ranks(groups, None) == groups


def test_engines_started_over_ssh_follow_the_order_of_hosts_whatever_order_they_registered_in():
    # Engine ids come in registration order: here host "b" (second in --hosts) came first.
    seen = [{"host": h, "host_index": i} for h, i in [("b", "1"), ("a", "0"), ("b", "1"), ("a", "0")]]
    assert order_hosts(seen) == [[1, 3], [0, 2]]
    attached = [{"host": h, "host_index": None} for h in ("b", "a", "b")]
    assert order_hosts(attached) == [[0, 2], [1]]


def test_engines_of_one_slurm_job_are_in_its_node_order_and_hosts_stay_whole_across_jobs():
    def engines(*placed):
        return [{"host": h, "host_index": None, "slurm_job": j, "slurm_node": n} for h, j, n in placed]

    one_job = engines(("b", "7", "1"), ("a", "7", "0"), ("b", "7", "1"), ("a", "7", "0"))
    assert order_hosts(one_job) == [[1, 3], [0, 2]]
    # Node indices of two jobs do not compare: each host whole, in the order its first engine comes.
    two_jobs = engines(("x", "7", "0"), ("y", "7", "1"), ("y", "8", "0"), ("x", "8", "1"))
    assert order_hosts(two_jobs) == [[0, 3], [1, 2]]
    mixed = engines(("b", "7", "1"), ("a", None, None))
    assert order_hosts(mixed) == [[0], [1]]


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("node1:2,node2:2", (("node1", 2), ("node2", 2))), ("me@a, b:3", (("me@a", 1), ("b", 3)))],
)
def test_hosts_gives_ranks_per_host_in_the_order_given(flag, expected):
    spec, _ = plan_group(hosts=flag, app="torch", visible_gpus=gpus(0))
    assert spec.hosts == expected
    assert spec.world_size == sum(n for _, n in expected) and spec.backend == "gloo"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"hosts": "a:0"}, "--hosts takes HOST:RANKS entries"),
        ({"hosts": "a:x,b"}, "--hosts takes HOST:RANKS entries"),
        ({"hosts": "a:1,a:2"}, "--hosts lists a twice"),
        ({"hosts": "a:1", "n": 2}, "--hosts gives the ranks per host itself; it does not take -n"),
        ({"hosts": "a:1", "attach": "c.json"}, "it does not take --attach"),
        ({"hosts": "a", "gpus": "all"}, "--hosts with -g all: give the GPU ranks of each host"),
        ({"config": "ipcluster_config.py"}, "--config FILE configures the engines' launcher"),
    ],
)
def test_bad_hosts_flags_are_refused_before_anything_starts(flags, message):
    with pytest.raises(SpecError, match=message):
        plan_group(app="torch", visible_gpus=gpus(0), **flags)


def test_attach_takes_cpu_ranks_only_and_counts_them_once_formed():
    spec, _ = plan_group(attach="cluster.json", app="torch", visible_gpus=gpus(0))
    assert spec.devices == () and spec.backend == "gloo"
    assert "every registered CPU rank(s) on engines attached from cluster.json" in spec.describe()
    with pytest.raises(SpecError, match="--attach takes CPU ranks"):
        plan_group(attach="cluster.json", gpus="all", app="torch", visible_gpus=gpus(2))


def test_gpu_ranks_across_hosts_take_their_hosts_gpus_by_local_rank_as_each_host_numbers_them():
    # Host 0 shows its engines GPUs 4,5 of its machine; host 1 every GPU of its machine.
    placed = place_hosts(
        [(0, 1), (0, 1)],
        inherited=[{"CUDA_VISIBLE_DEVICES": "4,5"}, {}],
        master_addr="10.0.0.1",
        master_port=1,
    )
    assert [p.environment["CUDA_VISIBLE_DEVICES"] for p in placed] == ["4", "5", "0", "1"]
    assert [p.environment["LOCAL_RANK"] for p in placed] == ["0", "1", "0", "1"]
    assert [(p.device, p.label) for p in placed] == [("cuda:0", "GPU 0"), ("cuda:0", "GPU 1")] * 2
    assert {p.environment["TORCH_NCCL_BLOCKING_WAIT"] for p in placed} == {"1"}


def engines_seen(
    host: str, gpus: int, visible: str | None = None, count: int = 2, **environment: str
) -> list[dict]:
    """What `describe_host` says of `count` engines of one host."""
    if visible is not None:
        environment["CUDA_VISIBLE_DEVICES"] = visible
    address = f"10.231.0.{sum(map(ord, host)) % 250}"
    return [{"host": host, "address": address, "gpus": gpus, "environment": environment}] * count


@pytest.mark.parametrize(
    ("flags", "engines", "expected"),
    [
        ({"hosts": "a:2", "gpus": "all"}, engines_seen("a", 2), (0, 1)),
        ({"hosts": "a,b", "gpus": "3,1"}, engines_seen("a", 4), (3, 1)),
        ({"engines": "slurm", "n": "2", "gpus": "all"}, engines_seen("a", 2, "6,7"), (0, 1)),
    ],
)
def test_a_hosts_gpu_ranks_take_its_gpus_by_local_rank(flags, engines, expected):
    spec, _ = plan_group(app="torch", **flags)
    assert gpus_of_host(spec, engines) == expected


@pytest.mark.parametrize(
    ("flags", "engines", "words"),
    [
        (
            {"hosts": "a:2", "gpus": "all"},
            engines_seen("a", 0),
            "-g: a runs 2 GPU rank(s), on its GPU(s) 0,1, but its engines see 0 GPU(s) (no NVIDIA driver, "
            "no CUDA_VISIBLE_DEVICES); ask for fewer ranks per host",
        ),
        (
            {"hosts": "a,b", "gpus": "0,3"},
            engines_seen("b", 2, "2,3"),
            "b runs 2 GPU rank(s), on its GPU(s) 0,3, but its engines see 2 GPU(s) "
            "(CUDA_VISIBLE_DEVICES='2,3')",
        ),
        # Slurm's node may run more engines than -g lists GPUs.
        (
            {"engines": "slurm", "n": "3", "gpus": "0,1"},
            engines_seen("n", 8, count=3),
            "-g: n runs 3 GPU rank(s), more than the 2 GPU id(s) -g lists",
        ),
        (
            {"engines": "slurm", "n": "2", "gpus": "all"},
            [engines_seen("n", 1, gpu, count=1)[0] for gpu in ("0", "1")],
            "the engines on n see different GPUs",
        ),
    ],
)
def test_a_host_short_of_gpus_fails_naming_it_and_what_its_engines_see(flags, engines, words):
    spec, _ = plan_group(app="torch", **flags)
    with pytest.raises(LaunchFailed) as raised:
        gpus_of_host(spec, engines)
    assert words in str(raised.value)


def test_gpus_are_counted_on_a_host_without_starting_cuda(monkeypatch):
    from ddipp.rank import visible_gpus

    for listed, count in (("", 0), ("0,1", 2), ("GPU-1a2b, GPU-3c4d", 2), ("1,-1,2", 1), ("0,,1", 1)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
        assert visible_gpus() == count
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    driver = Path("/proc/driver/nvidia/gpus")
    assert visible_gpus() == (len(list(driver.iterdir())) if driver.is_dir() else 0)


def test_ranks_on_other_hosts_keep_what_their_host_sets_and_get_only_their_own_gpu():
    spec, _ = plan_group(hosts="a:2,b:1", gpus="all", app="torch")
    seen = engines_seen("a", 4, "2,3,4,5", TORCH_NCCL_BLOCKING_WAIT="0") + engines_seen("b", 1, count=1)
    devices, inherited = devices_per_host(spec, seen, [2, 1])
    assert devices == [(0, 1), (0,)]
    placed = place_hosts(devices, inherited=inherited, **MASTER)
    # Each rank sees its own GPU as its host numbers them; what the host set stays (as torchrun).
    assert [p.environment["CUDA_VISIBLE_DEVICES"] for p in placed] == ["2", "3", "0"]
    assert [p.environment["TORCH_NCCL_BLOCKING_WAIT"] for p in placed] == ["0", "0", "1"]


def test_cpu_ranks_on_other_hosts_keep_their_hosts_thread_count():
    spec, _ = plan_group(hosts="a:2,b:2", app="torch")
    seen = engines_seen("a", 0, OMP_NUM_THREADS="4") + engines_seen("b", 0)
    devices, inherited = devices_per_host(spec, seen, [2, 2])
    assert devices == [(None, None), (None, None)]
    placed = place_hosts(devices, inherited=inherited, **MASTER)
    assert [p.environment["OMP_NUM_THREADS"] for p in placed] == ["4", "4", "1", "1"]


def test_gpu_ranks_on_one_machine_given_twice_in_hosts_are_refused():
    spec, _ = plan_group(hosts="a:1,alias-of-a:1", gpus="all", app="torch")
    seen = engines_seen("a", 8, count=1) * 2  # the same machine: the same address
    with pytest.raises(LaunchFailed, match="-g: a and a are one machine"):
        devices_per_host(spec, seen, [1, 1])


def test_a_slurm_nodes_engines_are_in_slurms_task_order():
    seen = [
        {"host": "n1", "host_index": None, "slurm_job": "7", "slurm_node": "0", "slurm_local": local}
        for local in ("1", "0", "2")
    ]
    assert order_hosts(seen) == [[1, 0, 2]]


def test_engines_of_one_mpiexec_run_are_in_mpis_rank_order_and_two_runs_keep_registration_order():
    def engines(*placed):
        return [{"host": h, "host_index": None, "slurm_job": None, "mpi_rank": r} for h, r in placed]

    # Registered in another order than MPI's: rank 0 on host "b", given first to mpiexec.
    one_run = engines(("a", "3"), ("b", "1"), ("a", "2"), ("b", "0"))
    assert order_hosts(one_run) == [[3, 1], [2, 0]]
    # Ranks of two runs do not compare (both have a rank 0): each host whole, as they came.
    two_runs = engines(("a", "0"), ("b", "0"), ("a", "1"))
    assert order_hosts(two_runs) == [[0, 2], [1]]
    assert order_hosts(engines(("a", "1"), ("b", None))) == [[0], [1]]


def test_mpiexec_in_a_slurm_allocation_orders_ranks_by_mpi_not_by_the_slurm_step_it_passes_on():
    # Every rank got SLURM_* of mpiexec's own step (one node id, one local id) and its MPI rank.
    seen = [
        {
            "host": h,
            "host_index": None,
            "slurm_job": "7",
            "slurm_node": "0",
            "slurm_local": "0",
            "mpi_rank": r,
        }
        for h, r in (("a", "3"), ("b", "1"), ("a", "2"), ("b", "0"))
    ]
    assert order_hosts(seen) == [[3, 1], [2, 0]]


def test_a_launched_engines_environment_is_its_hosts_only_where_it_differs_from_the_kernels(monkeypatch):
    from ddipp.launchers import BatchRanks

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the kernel's, passed on by sbatch or mpiexec
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
    engine = {"host": "n1", "environment": {"OMP_NUM_THREADS": "2", "GLOO_SOCKET_IFNAME": "ib0"}}
    assert BatchRanks()._as_chosen_on_host(engine)["environment"] == {"GLOO_SOCKET_IFNAME": "ib0"}


# describe_host's environment before and after a group is formed in the same process.
FORMED_TWICE = """
import json, os, sys
from ddipp import rank
os.environ.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="3")
os.environ.pop("CUDA_VISIBLE_DEVICES", None)
before = rank.describe_host("127.0.0.1")["environment"]
ddipps = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
rank.form_group(0, 1, "127.0.0.1", 0, sys.argv[1], "gloo", "cpu", ddipps, 30)
print(json.dumps([before, rank.describe_host("127.0.0.1")["environment"]]))
"""


def test_an_engine_that_had_a_group_describes_its_hosts_environment_not_ddipps(tmp_path):
    import json
    import subprocess
    import sys

    ran = subprocess.run(
        [sys.executable, "-c", FORMED_TWICE, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    before, after = json.loads(ran.stdout.splitlines()[-1])
    assert before == after == {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "3"}
