"""The training workload every contender runs: the same model, data and steps."""

from __future__ import annotations

import time

STEPS = 300
BATCH_PER_RANK = 64
FEATURES = 256


def train(steps: int = STEPS, batch: int = BATCH_PER_RANK) -> dict:
    """Train a small MLP for `steps` (under DDP if a process group is up); return throughput.

    Samples per second count every rank's samples: the whole group's throughput.
    """
    import torch
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if distributed else 1
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    )
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.Generator().manual_seed(1000 + rank)
    inputs = torch.randn(steps, batch, FEATURES, generator=data)
    targets = torch.randint(0, 10, (steps, batch), generator=data)

    def run(count: int) -> float:
        for step in range(count):
            loss = torch.nn.functional.cross_entropy(model(inputs[step]), targets[step])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if distributed:
            dist.barrier()
        return loss.item()

    run(5)  # warm-up, not timed
    began, cpu_began = time.perf_counter(), time.process_time()
    last_loss = run(steps)
    seconds = time.perf_counter() - began
    return {
        "samples_per_s": steps * batch * world / seconds,
        "seconds": seconds,
        # CPU time of this process (every thread) over the timed steps: less noisy than time.
        "cpu_s": time.process_time() - cpu_began,
        "loss": last_loss,
    }


if __name__ == "__main__":  # alone, or every rank under torchrun: rank 0 prints the result
    # python -m bench.workload [THREADS]: torch's intra-op threads (default 1, as each rank)
    import json
    import os
    import sys

    import torch

    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    if "BENCH_SWITCH_INTERVAL" in os.environ:  # the GIL's switch interval, in seconds
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    result = train()
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(result), flush=True)
    if "RANK" in os.environ:
        torch.distributed.destroy_process_group()
