"""Where DDP training in a notebook could lose speed against torchrun, by elimination.

The same workload (bench/workload.py, 2 CPU ranks) in every place a rank can run, interleaved
round after round: in ddipp's engines as a cell, as a plain function call (no cell machinery),
and with a longer GIL switch interval; in ddipp's engines started just before (a group of a
second kernel, started, warmed up by one run and stopped in each round); in bare `ipengine`s
(no ddipp: no guard thread, no environment contract, no FileStore) through `%%px`, and in bare
engines without ipykernel's fd-watch threads, and with the longer switch interval; under
torchrun, under torchrun with gloo on the loopback interface as ddipp sets it, and with the
longer switch interval. Each figure is a median over GAP_ROUNDS runs with its range, CPU
seconds per run (every thread of rank 0's process, over the timed steps) and the threads of
each rank process.
"""

from __future__ import annotations

import json
import tempfile

from ipykernel.iostream import OutStream

from bench.common import ok, result_line, run_module, spread
from ddipp.notebooks import KernelSession

GAP_ROUNDS = 11
# Rank 0's result only (%%px shows every rank's output).
TRAIN = (
    "import json, torch.distributed as dist\nfrom bench.workload import train\nresult = train()\n"
    "if dist.get_rank() == 0:\n    print('RESULT ' + json.dumps(result))"
)
# Two bare ipyparallel clusters, configured as ddipp configures its own (heartbeat, no delay),
# each with a gloo group formed by hand, as a user without ddipp would.
BARE = """
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
    cluster.start_controller_sync()
    cluster.start_engines_sync(engine_args=engine_args)
    rc = cluster.connect_client_sync()
    rc.wait_for_engines(2, timeout=120, interactive=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ids = sorted(rc.ids)
    [r.get(timeout=120) for r in [rc[i].apply_async(join, rank, port) for rank, i in enumerate(ids)]]
    view = rc[ids]
    view.block = True
    return cluster, rc, view
bare_cluster, bare_rc, bare_view = bare([])
bare_view.activate(suffix="bare")
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
BARE_STOP = """
for cluster, client in ((bare_cluster, bare_rc), (quiet_cluster, quiet_rc)):
    client.close()
    cluster.stop_cluster_sync()
"""
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
    samples: dict[str, list[dict]] = {name: [] for name in [*IN_KERNEL, FRESH, *TORCHRUN]}
    with (
        tempfile.TemporaryDirectory() as fresh_ipython_dir,
        KernelSession(env) as kernel,
        KernelSession(dict(env, IPYTHONDIR=fresh_ipython_dir)) as fresh_kernel,
    ):
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a torch"))
        ok(fresh_kernel.run("%load_ext ddipp"))
        try:
            threads = json.loads(ok(kernel.run(BARE)).text().split("THREADS ", 1)[1])
            for code in IN_KERNEL.values():  # warm-up
                ok(kernel.run(code))
            for round_ in range(GAP_ROUNDS):
                # Each round in another order, so that no contender always follows the same one.
                names = list(samples)
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    if name in IN_KERNEL:
                        samples[name].append(result_line(ok(kernel.run(IN_KERNEL[name])).shown_text()))
                    elif name == FRESH:
                        samples[name].append(_in_fresh_engines(fresh_kernel))
                    else:
                        torchrun_env = dict(env, **TORCHRUN[name])
                        samples[name].append(run_module(torchrun_env, "bench.workload", ranks=2))
        finally:  # the bare clusters are not tied to the kernel: stop them whatever happened
            kernel.run(BARE_STOP)
            kernel.run("%makedip --kill")
    summary = spread(samples, "ddipp_cell", "torchrun")
    fresh = spread(samples, FRESH, "torchrun")
    summary["fresh_ratio_median"], summary["fresh_ratio_iqr"] = fresh["ratio_median"], fresh["ratio_iqr"]
    summary["threads"] = threads
    return summary


def _in_fresh_engines(kernel: KernelSession) -> dict:
    ok(kernel.run("%makedip -n 2 -a torch"))
    try:
        ok(kernel.run(IN_KERNEL["ddipp_cell"]))  # the warm-up every other contender had
        return result_line(ok(kernel.run(IN_KERNEL["ddipp_cell"])).shown_text())
    finally:  # (not checked: an error above says more)
        kernel.run("%makedip --kill")
