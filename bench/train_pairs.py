"""Training in ddipp's engines, in bare engines and under torchrun, compared pair by pair over
many rounds (`python -m bench --only pairs`).

`gap` runs eleven contenders, so a round takes minutes and its per-round ratios spread widely.
This runs five, PAIRS_ROUNDS times, interleaved as every training benchmark (a random order each
round, SETTLE_S of idling before each run): ddipp's `%%dip` cell; ddipp's engines through plain
`%%px` (the same engines without ddipp's cell path); bare `ipengine`s through `%%px` (no ddipp);
torchrun; and a torchrun group that stays up (bench/long_lived.py: a long-lived process without
ipyparallel). Every pair gets its per-round ratio with a 95 % interval of the median.
"""

from __future__ import annotations

import itertools

from bench.common import PX_ON_DDIPP_ENGINES, cell_result, interleaved, ok, run_module, spread
from bench.long_lived import LongLivedTorchrun
from bench.train_gap import BARE_CLUSTER, IN_KERNEL, LONG_LIVED, TRAIN, bare_stop, stop_contenders
from ddipp.notebooks import KernelSession

PAIRS_ROUNDS = 40
BARE_STOP = bare_stop("bare")
IN_THE_KERNEL = {
    "ddipp_cell": IN_KERNEL["ddipp_cell"],
    "ddipp_engines_px": "%%px\n" + TRAIN,
    "ipengine_px": IN_KERNEL["ipengine_px"],
}
PAIR_KEYS = ("ratio_median", "ratio_ci95", "rounds_slower")


def bench_pairs(env: dict) -> dict:
    """`spread` of ddipp's cell against torchrun, and under `pairs` every pair's per-round ratio."""
    with KernelSession(env) as kernel:
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a torch"))
        long_lived = None
        try:
            ok(kernel.run(BARE_CLUSTER + PX_ON_DDIPP_ENGINES))
            long_lived = LongLivedTorchrun(env)
            runs = {
                **{name: lambda code=code: cell_result(kernel, code) for name, code in IN_THE_KERNEL.items()},
                "torchrun": lambda: run_module(env, "bench.workload", ranks=2),
                LONG_LIVED: long_lived.run,
            }
            for run in runs.values():  # warm-up (each torchrun run also warms up inside)
                run()
            samples = interleaved(runs, PAIRS_ROUNDS)
        finally:
            stop_contenders(kernel, long_lived, BARE_STOP)
    return dict(spread(samples, "ddipp_cell", "torchrun"), pairs=pairwise(samples))


def pairwise(samples: dict[str, list[dict]]) -> dict[str, dict]:
    """For every pair "a/b" (a before b in `samples`) the per-round ratio a / b: its median, 95 %
    interval and the rounds in which a was the slower."""
    pairs = {}
    for ours, peer in itertools.combinations(samples, 2):
        against = spread({ours: samples[ours], peer: samples[peer]}, ours, peer)
        pairs[f"{ours}/{peer}"] = {key: against[key] for key in PAIR_KEYS}
    return pairs
