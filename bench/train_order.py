"""Does what ran just before move a training run's speed? (`python -m bench --only order`)

ddipp's `%%dip` cell and torchrun, each measured right after one run of the other, after one
run of itself, and after SETTLE_S of idling: ORDER_REPEATS times each, the trials in a random
(seeded) order. This is why the training benchmarks idle before every timed run.
"""

from __future__ import annotations

import random
import statistics
import time

from bench.common import SETTLE_S, cell_result, ok, run_module
from bench.train_gap import IN_KERNEL
from ddipp.notebooks import KernelSession

ORDER_REPEATS = 10
MEASURED = ("ddipp_cell", "torchrun")
BEFORE = ("ddipp_cell", "torchrun", "idle")


def bench_order(env: dict) -> dict:
    """Median samples/s of each (measured, what ran before) pair, and each measured contender's
    speed after the other / after idling."""
    trials = [(before, measured) for before in BEFORE for measured in MEASURED] * ORDER_REPEATS
    random.Random(0).shuffle(trials)
    speeds: dict[tuple[str, str], list[float]] = {pair: [] for pair in dict.fromkeys(trials)}
    with KernelSession(env) as kernel:
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a torch"))
        runs = {
            "ddipp_cell": lambda: cell_result(kernel, IN_KERNEL["ddipp_cell"]),
            "torchrun": lambda: run_module(env, "bench.workload", ranks=2),
            "idle": lambda: time.sleep(SETTLE_S),
        }
        runs["ddipp_cell"]()  # warm-up
        for before, measured in trials:
            runs[before]()
            speeds[before, measured].append(runs[measured]()["samples_per_s"])
        ok(kernel.run("%makedip --kill"))
    results: dict = {"repeats": ORDER_REPEATS, "settle_s": SETTLE_S}
    for measured in MEASURED:
        after = {before: statistics.median(speeds[before, measured]) for before in BEFORE}
        other = next(name for name in MEASURED if name != measured)
        results[measured] = {
            **{f"after_{before}": speed for before, speed in after.items()},
            "after_other_vs_idle": after[other] / after["idle"],
            "after_itself_vs_idle": after[measured] / after["idle"],
        }
    return results
