"""The GPU path on real GPU ranks (NCCL), run by `make gpu-check` (`pytest --run-gpu -m gpu`).

Every test skips, saying why, where no CUDA GPU is visible; those that need two GPUs skip on a
machine with one, and the rest run there on a group of one rank. Nothing here touches CUDA in
the test process itself: the notebook of these tests must stay free of CUDA.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from ddipp.errors import GroupFailed, RankError
from ddipp.fsm import State
from ddipp.notebooks import KernelSession, execute_notebook
from ddipp.placement import visible_device
from tests.processes import TAG_VARIABLE, wait_until_gone
from tests.shells import pull
from tests.test_notebooks import check_expectations

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "tests" / "notebooks" / "fastai2.ipynb"
GPU_BACKEND = "cpu:gloo,cuda:nccl"
# How close ddipp's fastai accuracy must come to one process's (same code, same seeds).
ACCURACY_TOLERANCE = 0.03
# Beyond the group's -t: room for the failure to reach the notebook.
FAILURE_GRACE_S = 30


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def require_gpus(wanted: int) -> int:
    found = gpu_count()
    if found < wanted:
        pytest.skip(f"needs {wanted} GPUs, and this machine shows {found}")
    return found


def require_modules(*names: str) -> None:
    from importlib.util import find_spec

    missing = [name for name in names if find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, which is not installed here (docs/gpu.md: what is carried)")


def test_the_gpus_a_host_counts_without_cuda_are_those_torch_sees():
    # How ranks on other hosts count their host's GPUs (ddipp.rank.visible_gpus): without
    # starting CUDA, from CUDA_VISIBLE_DEVICES or the NVIDIA driver. In a fresh process each time.
    require_gpus(1)
    code = (
        "import torch; from ddipp.rank import visible_gpus; print(visible_gpus(), torch.cuda.device_count())"
    )
    for visible in (None, "0", ""):
        env = {name: value for name, value in os.environ.items() if name != "CUDA_VISIBLE_DEVICES"}
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
        ours, torchs = done.stdout.split()
        assert ours == torchs, f"CUDA_VISIBLE_DEVICES={visible!r}: ddipp counts {ours}, torch {torchs}"


def test_all_gpus_gives_one_rank_per_gpu_each_seeing_only_its_own(notebook, capsys):
    shell, session = notebook
    count = gpu_count()
    shell.run_line_magic("makedip", "-g all -a torch")
    assert "brings tensors to the CPU" in capsys.readouterr().out
    assert [info.device for info in session.cluster.ranks] == [f"GPU {gpu}" for gpu in range(count)]
    shell.run_cell_magic(
        "dip",
        "--quiet",
        "import os\n"
        "seen = [os.environ.get(name) for name in ('CUDA_VISIBLE_DEVICES', 'RANK', 'LOCAL_RANK', "
        "'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'TORCH_NCCL_BLOCKING_WAIT')]\n"
        "seen += [torch.cuda.device_count(), torch.cuda.current_device(), dist.get_backend()]\n",
    )
    for rank in range(count):
        assert pull(shell, "seen", rank) == [
            visible_device(rank, os.environ),
            str(rank),
            str(rank),
            str(count),
            str(count),
            "0",
            os.environ.get("TORCH_NCCL_BLOCKING_WAIT", "1"),
            1,
            0,
            GPU_BACKEND,
        ]


def test_the_readme_cells_reduce_a_cpu_tensor_on_gpu_ranks(notebook):
    shell, _ = notebook
    count = gpu_count()
    shell.run_line_magic("makedip", "-g all -a torch")
    shell.user_ns["xs"] = [1, 2, 3]
    shell.run_line_magic("dip", "--push xs")
    shell.run_cell_magic(
        "dip", "", "t = torch.tensor([float(sum(xs))]); dist.all_reduce(t); total = t.item()"
    )
    assert pull(shell, "total", count - 1) == 6.0 * count


def test_all_reduce_works_on_cpu_and_cuda_tensors_alike(notebook):
    shell, _ = notebook
    count = gpu_count()
    shell.run_line_magic("makedip", "-g all -a torch")
    shell.run_cell_magic(
        "dip",
        "--quiet",
        "cpu = torch.ones(3) * (dist.get_rank() + 1)\ndist.all_reduce(cpu)\n"
        "gpu = torch.ones(3, device='cuda') * (dist.get_rank() + 1)\ndist.all_reduce(gpu)\n"
        "sums = (cpu.tolist(), gpu.tolist(), gpu.device.type)\n",
    )
    total = float(sum(range(1, count + 1)))
    assert pull(shell, "sums", 0) == ([total] * 3, [total] * 3, "cuda")


def test_a_ddp_model_trains_to_the_same_weights_on_every_rank(notebook):
    shell, _ = notebook
    count = gpu_count()
    shell.run_line_magic("makedip", "-g all -a torch")
    shell.run_cell_magic(
        "dip",
        "--quiet",
        "from torch.nn.parallel import DistributedDataParallel\n"
        "torch.manual_seed(0)\n"
        "model = DistributedDataParallel(torch.nn.Linear(8, 1).cuda())\n"
        "start = model.module.weight.detach().clone()\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "data = torch.Generator().manual_seed(dist.get_rank())\n"
        "for _ in range(5):\n"
        "    x = torch.randn(16, 8, generator=data).cuda()\n"
        "    loss = model(x).pow(2).mean()\n"
        "    optimizer.zero_grad()\n"
        "    loss.backward()\n"
        "    optimizer.step()\n"
        "weights = model.module.weight.detach()\n",
    )
    start = pull(shell, "start", 0)
    trained = [pull(shell, "weights", rank) for rank in range(count)]
    assert {w.device.type for w in trained} == {"cpu"}
    assert all(w.equal(trained[0]) for w in trained) and not trained[0].equal(start)


def test_status_shows_what_the_allocator_and_the_device_hold(notebook):
    shell, session = notebook
    shell.run_line_magic("makedip", "-g all -a torch")
    shell.run_cell_magic(
        "dip", "--quiet", "block = torch.empty(256 * 2**20, dtype=torch.uint8, device='cuda')"
    )
    status = session.status()
    for memory in status.memory:
        assert memory["cuda_reserved_mb"] >= memory["cuda_allocated_mb"] >= 256
        assert 256 <= memory["device_used_mb"] <= memory["device_total_mb"]
    assert re.search(r"cuda \d+ MB allocated, \d+ MB reserved; device \d+ of \d+ MB in use", status.render())


def test_a_pulled_cuda_tensor_arrives_on_the_cpu_without_cuda_in_the_notebook(notebook):
    import torch

    shell, session = notebook
    shell.run_line_magic("makedip", "-g all -a torch")
    shell.run_cell_magic(
        "dip",
        "--quiet",
        "net = torch.nn.Linear(2, 2).cuda()\n"
        "state = {'state_dict': net.state_dict(), 'listed': [torch.ones(2, device='cuda')], 'net': net}\n",
    )
    state = pull(shell, "state", 0)
    tensors = [*state["state_dict"].values(), state["listed"][0], state["net"].weight]
    assert {t.device.type for t in tensors} == {"cpu"}
    assert not torch.cuda.is_initialized(), "the pull created a CUDA context in the notebook"
    assert session.state is State.PATCHED


def test_a_rank_killed_during_a_collective_fails_the_cell_naming_it(notebook):
    require_gpus(2)
    shell, session = notebook
    timeout = 30
    shell.run_line_magic("makedip", f"-g 0,1 -a torch -t {timeout}")
    victim = session.cluster.ranks[1].pid
    began = time.monotonic()
    code = (
        "import os, signal\nif dist.get_rank() == 1:\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "t = torch.ones(1, device='cuda')\ndist.all_reduce(t)\nt.item()\n"
    )
    with pytest.raises(GroupFailed, match=rf"rank 1 \(pid {victim}\) died: signal SIGKILL"):
        shell.run_cell_magic("dip", "", code)
    assert time.monotonic() - began < timeout + FAILURE_GRACE_S
    assert session.state is State.FAILED
    shell.run_line_magic("makedip", "--restart")
    shell.run_cell_magic(
        "dip", "--quiet", "t = torch.ones(1, device='cuda'); dist.all_reduce(t); assert t.item() == 2"
    )


def test_a_collective_timeout_fails_the_cell_with_its_reason_and_the_ranks_live_on(notebook, capsys):
    require_gpus(2)
    shell, session = notebook
    timeout = 10
    shell.run_line_magic("makedip", f"-g 0,1 -a torch -t {timeout}")
    pids = [info.pid for info in session.cluster.ranks]
    began = time.monotonic()
    code = (
        "if dist.get_rank() == 0:\n    t = torch.ones(1, device='cuda')\n"
        "    dist.all_reduce(t)\n    t.item()\n"
    )
    with pytest.raises(RankError) as raised:
        shell.run_cell_magic("dip", "", code)
    assert time.monotonic() - began < timeout + FAILURE_GRACE_S
    assert [failure[0] for failure in raised.value.failures] == [(0,)]
    assert re.search(r"(?i)timed? ?out", str(raised.value)) and "SIGABRT" not in str(raised.value)
    assert "formed again" in capsys.readouterr().out
    assert session.state is State.PATCHED and session.status().dead == frozenset()
    assert [info.pid for info in session.cluster.ranks] == pids
    shell.run_cell_magic(
        "dip", "--quiet", "t = torch.ones(1, device='cuda'); dist.all_reduce(t); assert t.item() == 2"
    )


def one_process(workload: str, work: Path) -> dict:
    """`bench.fastai_workload`'s `workload` in a process of its own (on the first GPU)."""
    command = [sys.executable, "-m", "bench.fastai_workload", str(work), workload]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.split("RESULT ", 1)[1])[workload]


@pytest.mark.parametrize("workload", ["tabular", "vision"])
def test_fastai_fits_on_gpu_ranks_as_accurately_as_in_one_process(notebook, tmp_path, workload):
    require_modules("fastai", "accelerate", "sklearn", *(["torchvision"] if workload == "vision" else []))
    shell, _ = notebook
    shell.run_line_magic("makedip", "-g all -a fastai")
    shell.user_ns["work"] = str(tmp_path / "ranks")
    shell.run_line_magic("dip", "--push work")
    shell.run_cell_magic(
        "dip",
        "--quiet",
        "from pathlib import Path\nfrom bench import fastai_workload\n"
        f"result = fastai_workload.run(Path(work), {workload!r})\n",
    )
    ranks = pull(shell, "result", 0)
    alone = one_process(workload, tmp_path / "alone")
    assert abs(ranks["accuracy"] - alone["accuracy"]) <= ACCURACY_TOLERANCE, (ranks, alone)


def test_the_fastai_lesson_runs_unchanged_on_gpu_ranks(tmp_path):
    require_modules("fastai", "accelerate", "sklearn", "torchvision")
    last = gpu_count() - 1
    lesson = nbformat.read(LESSON, as_version=4)
    first = next(cell for cell in lesson.cells if cell.cell_type == "code")
    assert "%makedip -n 2 -a fastai" in first.source
    first.source = first.source.replace("%makedip -n 2 -a fastai", "%makedip -g all -a fastai")
    for cell in lesson.cells:  # the lesson compares rank 1 with rank 0: the last rank here
        cell.source = cell.source.replace("--rank 1", f"--rank {last}")
    copy = tmp_path / LESSON.name
    nbformat.write(lesson, copy)
    tag = uuid.uuid4().hex
    env = dict(os.environ, **{TAG_VARIABLE: tag, "IPYTHONDIR": str(tmp_path / "ipython")})
    check_expectations(execute_notebook(copy, tmp_path / "executed.ipynb", env=env), LESSON.name)
    assert wait_until_gone(tag, 15) == []


def test_nothing_outlives_a_kernel_killed_with_sigkill_while_gpu_ranks_hold_memory(tmp_path):
    tag = uuid.uuid4().hex
    env = dict(os.environ, **{TAG_VARIABLE: tag, "IPYTHONDIR": str(tmp_path / "ipython")})
    session = KernelSession(env)
    try:
        assert session.run("%load_ext ddipp\n%makedip -g all -a torch", timeout=180).status == "ok"
        assert session.run("%%dip\nblock = torch.ones(2**20, device='cuda')").status == "ok"
        os.kill(session.pid, signal.SIGKILL)
        left = wait_until_gone(tag, 15)
        assert left == [], [(p.pid, p.cmdline()) for p in left]
    finally:
        session.close()
