"""Where DDP training in a notebook could lose speed against torchrun, by elimination.

The same workload (bench/workload.py, 2 CPU ranks) in every place a rank can run, interleaved
round after round: in ddipp's engines as a cell, as a plain function call (no cell machinery),
and with a longer GIL switch interval; in ddipp's engines started just before (a group of a
second kernel, started, warmed up by one run and stopped in each round); in a torchrun group
that stays up for the whole benchmark (bench/long_lived.py: many runs in one process, as in an
engine, without ipyparallel or ddipp); in bare `ipengine`s
(no ddipp: no guard thread, no environment contract, no FileStore) through `%%px`, and in bare
engines without ipykernel's fd-watch threads, and with the longer switch interval; under
torchrun, under torchrun with gloo on the loopback interface as ddipp sets it, and with the
longer switch interval. Each figure is a median over GAP_ROUNDS runs with its range, CPU
seconds per run (every thread of rank 0's process, over the timed steps) and the threads of
each rank process. Each round runs the contenders in a random order, each after SETTLE_S of
idling.
"""

from __future__ import annotations

import json
import tempfile

from ipykernel.iostream import OutStream

from bench.common import cell_result, interleaved, ok, run_module, settled, spread
from bench.long_lived import LongLivedTorchrun
from ddipp.notebooks import KernelSession

GAP_ROUNDS = 11
# Rank 0's result only (%%px shows every rank's output).
TRAIN = (
    "import json, torch.distributed as dist\nfrom bench.workload import train\nresult = train()\n"
    "if dist.get_rank() == 0:\n    print('RESULT ' + json.dumps(result))"
)
# `bare(engine_args)`: a bare ipyparallel cluster, configured as ddipp configures its own
# (heartbeat, no delay), with a gloo group formed by hand, as a user without ddipp would; one of
# them started, its view `%%pxbare`.
BARE_CLUSTER = """
import ipyparallel as ipp, socket, os, json
def join(rank, port):
    import os, torch, torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo")
    return os.getpid()
def bare(engine_args):
    cluster = ipp.Cluster(
        n=2, controller_ip="127.0.0.1", controller_args=["--HeartMonitor.period=500"], delay=0
    )
    try:
        cluster.start_controller_sync()
        cluster.start_engines_sync(engine_args=engine_args)
        rc = cluster.connect_client_sync()
        rc.wait_for_engines(2, timeout=120, interactive=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ids = sorted(rc.ids)
        [r.get(timeout=120) for r in [rc[i].apply_async(join, rank, port) for rank, i in enumerate(ids)]]
    except BaseException:  # not started: nothing of it stays up
        cluster.stop_cluster_sync()
        raise
    view = rc[ids]
    view.block = True
    return cluster, rc, view
bare_cluster, bare_rc, bare_view = bare([])
bare_view.activate(suffix="bare")
"""
# Two of them: one plain, one without ipykernel's fd-watch threads.
BARE = (
    BARE_CLUSTER
    + """
quiet_cluster, quiet_rc, quiet_view = bare(
    ["--IPEngine.out_stream_factory=bench.train_gap.OutStreamWithoutFdWatch"]
)
quiet_view.activate(suffix="quiet")
dd_view = get_ipython()._ddipp_session[0].cluster._view
def threads():
    import psutil
    return psutil.Process().num_threads()
print("THREADS " + json.dumps({name: view.apply_sync(threads) for name, view in
      (("ddipp", dd_view), ("ipengine", bare_view), ("ipengine_no_fd_watch", quiet_view))}))
"""
)


def bare_stop(*names: str) -> str:
    """The code that stops the bare clusters `names` (as started by BARE_CLUSTER and BARE) that
    did start; `bare()` stops one that fails to start."""
    return f"""
for name in {names!r}:
    if name + "_cluster" in globals():
        globals()[name + "_rc"].close()
        globals()[name + "_cluster"].stop_cluster_sync()
"""


BARE_STOP = bare_stop("bare", "quiet")
# What each contender runs in the notebook kernel; its output carries rank 0's RESULT line.
IN_KERNEL = {
    "ddipp_cell": "%%dip\n" + TRAIN,
    "ddipp_function": (
        "from bench.workload import train\nprint('RESULT ' + json.dumps(dd_view.apply_sync(train)[0]))"
    ),
    "ddipp_switch_50ms": f"%%dip\nimport sys\nsys.setswitchinterval(0.05)\n{TRAIN}\n"
    "sys.setswitchinterval(0.005)",
    "ipengine_px": "%%pxbare\n" + TRAIN,
    "ipengine_no_fd_watch_px": "%%pxquiet\n" + TRAIN,
    "ipengine_switch_50ms_px": f"%%pxbare\nimport sys\nsys.setswitchinterval(0.05)\n{TRAIN}\n"
    "sys.setswitchinterval(0.005)",
}
# In a group started for the run alone: started, warmed up as every contender is, measured, stopped.
FRESH = "ddipp_fresh_engines"
# In a torchrun group started once, before the first round.
LONG_LIVED = "torchrun_long_lived"
# Under torchrun, in what environment (beside the kernel's).
TORCHRUN = {
    "torchrun": {},
    "torchrun_gloo_on_lo": {"GLOO_SOCKET_IFNAME": "lo"},
    "torchrun_switch_50ms": {"BENCH_SWITCH_INTERVAL": "0.05"},
}


class OutStreamWithoutFdWatch(OutStream):
    """ipykernel's stdout/stderr without the threads that watch the process's file descriptors."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["watchfd"] = False
        super().__init__(*args, **kwargs)


def bench_gap(env: dict) -> dict:
    """Every contender GAP_ROUNDS times, interleaved; `spread` summarises them against torchrun."""
    with (
        tempfile.TemporaryDirectory() as fresh_ipython_dir,
        KernelSession(env) as kernel,
        KernelSession(dict(env, IPYTHONDIR=fresh_ipython_dir)) as fresh_kernel,
    ):
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a torch"))
        ok(fresh_kernel.run("%load_ext ddipp"))
        long_lived = None
        try:
            threads = json.loads(ok(kernel.run(BARE)).text().split("THREADS ", 1)[1])
            long_lived = LongLivedTorchrun(env)
            long_lived.run()  # warm-up, as below
            for code in IN_KERNEL.values():  # warm-up
                ok(kernel.run(code))
            runs = {
                **{name: lambda code=code: cell_result(kernel, code) for name, code in IN_KERNEL.items()},
                FRESH: lambda: _in_fresh_engines(fresh_kernel),
                LONG_LIVED: long_lived.run,
                **{
                    name: lambda extra=extra: run_module(dict(env, **extra), "bench.workload", ranks=2)
                    for name, extra in TORCHRUN.items()
                },
            }
            samples = interleaved(runs, GAP_ROUNDS)
        finally:
            stop_contenders(kernel, long_lived, BARE_STOP)
    return dict(_summary(samples), threads=threads)


def stop_contenders(kernel: KernelSession, long_lived: LongLivedTorchrun | None, bare_stop: str) -> None:
    """Stop the long-lived torchrun group, the bare clusters (`bare_stop`, run in `kernel`: they
    are not tied to the kernel) and ddipp's group, whatever happened."""
    try:
        if long_lived is not None:
            long_lived.close()
    finally:
        try:
            kernel.run(bare_stop)
        finally:
            kernel.run("%makedip --kill")


def _summary(samples: dict[str, list[dict]]) -> dict:
    """`spread` of ddipp's cell against torchrun, with the per-round ratios of the engines started
    for the run and of the long-lived torchrun group against torchrun."""
    summary = spread(samples, "ddipp_cell", "torchrun")
    summary["ratios"] = {}
    for name in (FRESH, LONG_LIVED):
        against = spread(samples, name, "torchrun")
        summary["ratios"][name] = {
            key: against[key] for key in ("ratio_median", "ratio_iqr", "ratio_ci95", "rounds_slower")
        }
    fresh = summary["ratios"][FRESH]  # (under the names it had before, which other tools read)
    summary["fresh_ratio_median"], summary["fresh_ratio_iqr"] = fresh["ratio_median"], fresh["ratio_iqr"]
    return summary


def _in_fresh_engines(kernel: KernelSession) -> dict:
    ok(kernel.run("%makedip -n 2 -a torch"))
    try:
        ok(kernel.run(IN_KERNEL["ddipp_cell"]))  # the warm-up every other contender had
        # (idling after the start-up, as every contender after its predecessor)
        return settled(lambda: cell_result(kernel, IN_KERNEL["ddipp_cell"]))
    finally:  # (not checked: an error above says more)
        kernel.run("%makedip --kill")
