"""What every benchmark shares: the kernel's environment, checked cells, runs of the workload
under torchrun or alone, and the summary of interleaved runs."""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ddipp.notebooks import CellMessages, KernelSession

ROOT = Path(__file__).resolve().parent.parent
# %%px on ddipp's own engines (the same processes), blocking as `%px` is by default.
PX_ON_DDIPP_ENGINES = (
    "px_view = get_ipython()._ddipp_session[0].cluster._client[:]\npx_view.block = True\npx_view.activate()"
)


def kernel_env(ipython_dir: str) -> dict[str, str]:
    env = dict(os.environ, IPYTHONDIR=ipython_dir, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def ok(cell: CellMessages) -> CellMessages:
    if cell.status != "ok":
        content = cell.reply["content"]
        raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}\n{cell.text()}")
    return cell


# Before each timed run the machine idles this long. What ran just before may move a run's
# speed (`python -m bench --only order` saw up to 8 % between predecessors, not the same way in
# two runs; docs/benchmarks.md): so every timed run starts after the same idling, in a random order.
SETTLE_S = 3.0


def rounds(names: list[str], count: int, seed: int = 0) -> Iterator[list[str]]:
    """`count` rounds of every contender, each round in a random order (seeded: the same every
    run). A rotation of one order would keep each contender behind the same predecessor."""
    shuffler = random.Random(seed)
    for _ in range(count):
        order = list(names)
        shuffler.shuffle(order)
        yield order


def settled(run: Callable[[], dict]) -> dict:
    time.sleep(SETTLE_S)
    return run()


def interleaved(runs: dict[str, Callable[[], dict]], count: int) -> dict[str, list[dict]]:
    """Each run `count` times: `rounds` of them, each run after SETTLE_S of idling."""
    samples: dict[str, list[dict]] = {name: [] for name in runs}
    for order in rounds(list(runs), count):
        for name in order:
            samples[name].append(settled(runs[name]))
    return samples


def spread(samples: dict[str, list[dict]], ours: str, peer: str) -> dict:
    """Per contender the median samples/s (under its own name, as before), its range and CPU
    seconds per run; the per-round ratio `ours` / `peer`: median, interquartile range, a 95 %
    interval of that median (`median_interval`), and in how many rounds `ours` was the slower."""
    speed = {name: [run["samples_per_s"] for run in runs] for name, runs in samples.items()}
    ratios = sorted(a / b for a, b in zip(speed[ours], speed[peer], strict=True))
    quartile = len(ratios) // 4
    return {
        **{name: statistics.median(values) for name, values in speed.items()},
        "runs": len(ratios),
        "range": {name: [min(values), max(values)] for name, values in speed.items()},
        "cpu_s": {name: statistics.median(run["cpu_s"] for run in runs) for name, runs in samples.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_iqr": [ratios[quartile], ratios[-1 - quartile]],
        "ratio_ci95": median_interval(ratios),
        "rounds_slower": sum(ratio < 1 for ratio in ratios),
    }


def median_interval(values: list[float]) -> list[float]:
    """A distribution-free interval of the median of `values` with at least 95 % coverage: the
    k-th smallest and k-th largest, k the largest with P(Binomial(n, 1/2) < k) <= 2.5 %
    (for 15 values the 4th and the 12th: 96.5 %). The bounds are values that were measured."""
    ordered = sorted(values)
    n = len(ordered)
    k, below = 0, 0.0  # below: P(Binomial(n, 1/2) < k)
    while k < n // 2 and below + (step := math.comb(n, k) / 2**n) <= 0.025:
        below += step
        k += 1
    if k == 0:
        raise ValueError(f"{n} values are too few for a 95 % interval of their median (6 at least)")
    return [ordered[k - 1], ordered[n - k]]


def cell_result(kernel: KernelSession, code: str) -> dict:
    """The RESULT line that `code`, run as a checked cell, shows (printed or as %%px output)."""
    return result_line(ok(kernel.run(code)).shown_text())


def run_module(env: dict, module: str, *args: str, ranks: int | None = None) -> dict:
    """`python -m module args` alone, or on `ranks` processes under torchrun; rank 0's RESULT.

    The port for torchrun is free when chosen, not when used: a torchrun run that fails is run
    again (twice at most), saying why on stderr.
    """
    for attempt in range(3):
        launcher = [] if ranks is None else ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
        launcher += [] if ranks is None else ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
        done = subprocess.run(
            [sys.executable, *launcher, "-m", module, *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if done.returncode == 0:
            return result_line(done.stdout)
        if ranks is None or attempt == 2:
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
        last = [line for line in done.stderr.splitlines() if "Error" in line][-3:]
        print(f"torchrun failed (run again): {' | '.join(last)}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def result_line(text: str) -> dict:
    # (a line of %%px output starts with its engine's label)
    return json.loads(
        next(m.group(1) for line in text.splitlines() if (m := re.search(r"RESULT (\{.*\})", line)))
    )


def free_port() -> int:

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
