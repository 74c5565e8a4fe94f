"""Run every benchmark on 2 CPU ranks, print a table of ratios, write bench/results.json.

    python -m bench [--only dispatch,startup,train,gap,order,pairs,hosts,stream,faults,push,scaling,
                            fastai,parity] [--runs 100]

Each figure is measured against its peer in the same run, on the same machine: a notebook
client (jupyter_client) drives a real kernel, as Jupyter does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import PX_ON_DDIPP_ENGINES, interleaved, kernel_env, ok, result_line, run_module, spread
from bench.hosts import bench_hosts
from bench.train_gap import bench_gap
from bench.train_order import bench_order
from bench.train_pairs import bench_pairs
from ddipp.notebooks import CellMessages, KernelSession

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
STREAM_LINES = 10_000
STREAM_REPEATS = 7
ALL = "dispatch,startup,train,gap,order,pairs,hosts,stream,faults,push,scaling,fastai,parity"
TRAIN_REPEATS = 15
TRAIN_CELL = "%%dip\nimport json\nfrom bench.workload import train\nprint('RESULT ' + json.dumps(train()))"
STARTUP_REPEATS = 3
PUSH_REPEATS = 5
SCALING_RANKS = (1, 2, 4, 8)
SCALING_RUNS = 30
SCALING_FIGURE = ROOT / "docs" / "images" / "scaling.png"
# What is pushed and pulled: made in the notebook by this code, named `payload`.
PAYLOADS = {
    "10MB": "payload = np.random.rand(10 * 2**20 // 8)",
    "200MB": "payload = np.random.rand(200 * 2**20 // 8)",
    "dataframe_1M_rows": (
        "payload = pd.DataFrame({'i': np.arange(1_000_000), 'x': np.random.rand(1_000_000), "
        "'s': np.random.choice(['cat', 'dog', 'fish'], 1_000_000)})"
    ),
}

# Plain ipyparallel plus a manual process group: what a user would write without ddipp.
PLAIN_STARTUP = """
import time, ipyparallel as ipp
began = time.perf_counter()
cluster = ipp.Cluster(n=2, **CLUSTER_OPTIONS)
rc = cluster.start_and_connect_sync()
rc.wait_for_engines(2, timeout=120, interactive=False)
def join(rank, port):
    import os, torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo")
    return rank
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
results = [rc[i].apply_async(join, rank, port) for rank, i in enumerate(sorted(rc.ids))]
[r.get(timeout=120) for r in results]
print("STARTUP", time.perf_counter() - began)
"""
# ipyparallel's defaults, and configured as ddipp configures it (heartbeat period, no delay).
PLAIN_CONFIGS = {
    "ipyparallel": "CLUSTER_OPTIONS = {}",
    "ipyparallel_tuned": "CLUSTER_OPTIONS = dict(controller_args=['--HeartMonitor.period=500'], delay=0)",
}
PLAIN_STOP = "rc.close()\ncluster.stop_cluster_sync()"


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "n": len(ordered),
    }


def bench_dispatch(env: dict, runs: int) -> dict:
    """A trivial cell's round trip (send to idle): %%dip vs %%px on the same engines vs local."""
    with KernelSession(env) as kernel:
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a none"))
        ok(kernel.run(PX_ON_DDIPP_ENGINES))
        cells = {"ddipp": "%%dip\npass", "px": "%%px\npass", "local": "pass"}
        times: dict[str, list[float]] = {name: [] for name in cells}
        for code in cells.values():  # warm-up
            ok(kernel.run(code))
        for _ in range(runs):  # interleaved, so drift affects all alike
            for name, code in cells.items():
                cell = ok(kernel.run(code))
                times[name].append((cell.finished_at - cell.sent_at) * 1000)
        ok(kernel.run("%makedip --kill"))
    return {name: summary(samples) for name, samples in times.items()}


def bench_startup(env: dict) -> dict:
    """`%makedip -n 2` until cells run vs ipyparallel.Cluster(n=2) + manual init_process_group,
    with ipyparallel's defaults and configured as ddipp configures it."""
    samples: dict[str, list[float]] = {"ddipp": [], **{name: [] for name in PLAIN_CONFIGS}}
    for _ in range(STARTUP_REPEATS):
        with KernelSession(env) as kernel:
            ok(kernel.run("%load_ext ddipp\nimport torch"))
            cell = ok(kernel.run("%makedip -n 2 -a none"))
            probe = ok(kernel.run("%%dip\npass"))
            samples["ddipp"].append(cell.finished_at - cell.sent_at + (probe.finished_at - probe.sent_at))
            ok(kernel.run("%makedip --kill"))
        for name, options in PLAIN_CONFIGS.items():
            with KernelSession(env) as kernel:
                ok(kernel.run(f"import torch\n{options}"))
                cell = ok(kernel.run(PLAIN_STARTUP))
                samples[name].append(cell.finished_at - cell.sent_at)
                ok(kernel.run(PLAIN_STOP))
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_train(env: dict) -> dict:
    """The same training loop: DDP via %%dip, under torchrun --nproc-per-node 2, one process with
    1 thread and with every core (median of TRAIN_REPEATS runs each, the contenders interleaved in
    random order, each after SETTLE_S of idling; with each contender's range and the per-round
    ratio ddipp / torchrun)."""
    cores = str(os.cpu_count() or 1)
    with KernelSession(env) as kernel:
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a torch"))
        runs = {
            "ddipp_2": lambda: result_line(ok(kernel.run(TRAIN_CELL)).text()),
            "torchrun_2": lambda: run_module(env, "bench.workload", ranks=2),
            "single_1": lambda: run_module(env, "bench.workload", "1"),
            "single_all": lambda: run_module(env, "bench.workload", cores),
        }
        runs["ddipp_2"]()  # warm-up (torchrun's and one process's runs warm up inside)
        samples = interleaved(runs, TRAIN_REPEATS)
        ok(kernel.run("%makedip --kill"))
    return spread(samples, "ddipp_2", "torchrun_2")


def bench_stream(env: dict) -> dict:
    """10,000 lines printed on rank 0: when the first and the last reach the client (median of
    STREAM_REPEATS runs, the contenders interleaved)."""
    code = (
        "import os\nif os.environ['RANK'] == '0':\n"
        f"    for i in range({STREAM_LINES}):\n        print('line', i)\n"
    )
    magics = {"ddipp": "%%dip", "px": "%%px --stream"}
    samples: dict[str, list[float]] = {}
    with KernelSession(env) as kernel:
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a none"))
        ok(kernel.run(PX_ON_DDIPP_ENGINES))
        for magic in magics.values():
            ok(kernel.run(f"{magic}\nprint('warm')"))
        for _ in range(STREAM_REPEATS):
            for name, magic in magics.items():
                cell = ok(kernel.run(f"{magic}\n{code}"))
                samples.setdefault(name, []).append(
                    _first_output(cell, f"line {STREAM_LINES - 1}\n") - cell.sent_at
                )
                samples.setdefault(f"first_line_{name}", []).append(
                    _first_output(cell, "line 0\n") - cell.sent_at
                )
        # From a print on rank 0 to its arrival at the client (perf_counter is one clock for
        # every process of the machine): the rank's flush interval plus ddipp's relay.
        for _ in range(STREAM_REPEATS):
            cell = ok(
                kernel.run("%%dip\nimport time\nprint('written at', time.perf_counter())\ntime.sleep(0.3)")
            )
            written = float(cell.text().split()[2])
            samples.setdefault("first_byte_latency_ddipp", []).append(
                _first_output(cell, "written at") - written
            )
        ok(kernel.run("%makedip --kill"))
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_push(env: dict) -> dict:
    """`%dip --push` and `--pull` against ipyparallel's `view.push`/`pull` on the same engines
    (each a cell's round trip through the kernel, the contenders interleaved)."""
    results: dict = {}
    with KernelSession(env) as kernel:
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a none\nimport numpy as np, pandas as pd"))
        ok(
            kernel.run(
                PX_ON_DDIPP_ENGINES
                + "\nrank0 = get_ipython()._ddipp_session[0].cluster._client[px_view.targets[0]]"
            )
        )
        cells = {
            "push_ddipp": "%dip --push payload",
            "push_view": "px_view.push({'payload': payload}, block=True)",
            "pull_ddipp": "%dip --pull payload",
            "pull_view": "payload = rank0.pull('payload', block=True)",
        }
        for size, make in PAYLOADS.items():
            ok(kernel.run(make))
            samples: dict[str, list[float]] = {name: [] for name in cells}
            for _ in range(PUSH_REPEATS):
                for name, code in cells.items():
                    cell = ok(kernel.run(code))
                    samples[name].append(cell.finished_at - cell.sent_at)
            results[size] = {name: statistics.median(values) for name, values in samples.items()}
            ok(kernel.run("del payload"))
        ok(kernel.run("%makedip --kill"))
    return results


def bench_scaling(env: dict) -> dict:
    """Start-up and a trivial cell's round trip for 1, 2, 4 and 8 CPU ranks: %%dip against
    %%px on the same engines (8 ranks oversubscribe 2 cores)."""
    results: dict = {}
    for ranks in SCALING_RANKS:
        with KernelSession(env) as kernel:
            ok(kernel.run("%load_ext ddipp\nimport torch"))
            cell = ok(kernel.run(f"%makedip -n {ranks} -a none"))
            probe = ok(kernel.run("%%dip\npass"))
            startup = cell.finished_at - cell.sent_at + (probe.finished_at - probe.sent_at)
            ok(kernel.run(PX_ON_DDIPP_ENGINES))
            times: dict[str, list[float]] = {"ddipp": [], "px": []}
            for _ in range(SCALING_RUNS):
                for name, code in (("ddipp", "%%dip\npass"), ("px", "%%px\npass")):
                    cell = ok(kernel.run(code))
                    times[name].append((cell.finished_at - cell.sent_at) * 1000)
            ok(kernel.run("%makedip --kill"))
        results[str(ranks)] = {
            "startup_s": startup,
            "dispatch_ms": {name: statistics.median(values) for name, values in times.items()},
        }
    draw_scaling(results, SCALING_FIGURE)
    return results


def draw_scaling(results: dict, path: Path) -> None:
    """The scaling figure: start-up and round trip against the number of ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = [int(n) for n in results]
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.plot(ranks, [results[str(n)]["startup_s"] for n in ranks], "o-", label="%makedip -n N")
    left.set(xlabel="CPU ranks", ylabel="seconds", title="start-up until a cell runs", xticks=ranks)
    for name, label in (("ddipp", "%%dip"), ("px", "%%px (same engines)")):
        right.plot(ranks, [results[str(n)]["dispatch_ms"][name] for n in ranks], "o-", label=label)
    right.set(xlabel="CPU ranks", ylabel="ms (median)", title="trivial cell round trip", xticks=ranks)
    for axes in (left, right):
        axes.legend()
        axes.set_ylim(bottom=0)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


def bench_faults(env: dict) -> dict:
    """Detection and recovery times: a rank killed mid-cell, interrupts, a killed kernel."""
    results = {}
    with KernelSession(env) as kernel:
        ok(kernel.run("%load_ext ddipp\n%makedip -n 2 -a torch"))
        cell = kernel.run(
            "%%dip\nimport os, time, signal\nif dist.get_rank() == 1:\n    time.sleep(0.5)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\ndist.all_reduce(torch.ones(1))"
        )
        assert cell.status == "error", cell.text()
        results["rank_killed_mid_cell_s"] = cell.finished_at - cell.sent_at - 0.5
        began = time.perf_counter()
        ok(kernel.run("%makedip --restart"))
        results["restart_s"] = time.perf_counter() - began
        cell = kernel.run("%%dip\nimport time\ntime.sleep(60)", interrupt_after=1.0)
        results["interrupt_long_cell_s"] = cell.finished_at - cell.sent_at - 1.0
        cell = kernel.run(
            "%%dip\nimport time\nif dist.get_rank() == 0:\n    dist.all_reduce(torch.ones(1))\n"
            "else:\n    time.sleep(60)",
            interrupt_after=1.0,
        )
        results["interrupt_blocked_collective_s"] = cell.finished_at - cell.sent_at - 1.0
        cell = kernel.run(
            "%%dip\nif dist.get_rank() == 1:\n    raise ValueError('x')\ndist.all_reduce(torch.ones(1))"
        )
        results["rank_raises_before_collective_s"] = cell.finished_at - cell.sent_at
        family = psutil.Process(kernel.pid).children(recursive=True)
        began = time.perf_counter()
        os.kill(kernel.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(family, timeout=30)
        results["kernel_sigkill_cleanup_s"] = time.perf_counter() - began if not alive else float("inf")
    return results


def bench_fastai(env: dict) -> dict:
    """The fastai lessons' training: %autodip on 2 ranks vs a torchrun launch vs one process."""
    from bench.fastai_workload import fastai_major, render_digits

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        render_digits(work / "digits")
        runs = {
            "single": run_module(env, "bench.fastai_workload", str(work)),
            "launcher": run_module(env, "bench.fastai_workload", str(work), ranks=2),
        }
        with KernelSession(env) as kernel:
            ok(kernel.run("%load_ext ddipp\n%makedip -n 2\n%autodip on"))
            cell = ok(
                kernel.run(
                    "import json\nfrom pathlib import Path\nfrom bench.fastai_workload import run_all\n"
                    f"print('RESULT ' + json.dumps(run_all(Path({str(work)!r}))))"
                )
            )
            runs["ddipp"] = result_line(cell.text())
            ok(kernel.run("%makedip --kill"))
    return {
        "fastai_major": fastai_major(),
        "fit_s": {name: run["tabular"]["fit_s"] for name, run in runs.items()},
        "vision_fit_s": {name: run["vision"]["fit_s"] for name, run in runs.items()},
        "accuracy": {
            task: {name: run[task]["accuracy"] for name, run in runs.items()}
            for task in ("tabular", "vision")
        },
    }


def bench_parity(env: dict) -> dict:
    """fastai's tools on 2 ranks under %autodip against one process: lr_find's sweep and
    suggestion, and every validation metric on the ranks' weights."""
    from bench.fastai_workload import fastai_major

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        with KernelSession(env) as kernel:
            ok(kernel.run("%load_ext ddipp\n%makedip -n 2\n%autodip on"))
            cell = ok(
                kernel.run(
                    "from pathlib import Path\nfrom bench.fastai_parity import measure\n"
                    f"_ = measure(Path({str(work)!r}))"
                )
            )
            ddipp = result_line(cell.text())
            ok(kernel.run("%makedip --kill"))
        single = run_module(env, "bench.fastai_parity", str(work))
    return {"fastai_major": fastai_major(), "ddipp": ddipp, "single": single}


def _first_output(cell: CellMessages, needle: str) -> float:
    """Arrival of the first stream or display carrying `needle` (px --stream sends displays)."""
    for at, message in cell.iopub:
        content = message["content"]
        text = content.get("text") or content.get("data", {}).get("text/plain", "")
        if needle in text:
            return at
    raise AssertionError(f"{needle!r} never arrived")


def table(results: dict) -> str:
    """The results as a text table: each figure beside its peer, with their ratio."""
    rows: list[tuple[str, float, float | None, str, str]] = []

    def compared(name: str, ours: float, peer: float, peer_name: str, target: str = "") -> None:
        rows.append((name, ours, peer, peer_name, target))

    def alone(name: str, value: float, target: str = "") -> None:
        rows.append((name, value, None, "", target))

    if "dispatch_ms" in results:
        d = results["dispatch_ms"]
        compared("dispatch median (ms)", d["ddipp"]["median"], d["px"]["median"], "%%px", "<= 1.0")
        compared("dispatch p95 (ms)", d["ddipp"]["p95"], d["px"]["p95"], "%%px")
        alone("local cell median (ms)", d["local"]["median"])
    if "startup_s" in results:
        s = results["startup_s"]
        compared("start-up (s)", s["ddipp"], s["ipyparallel"], "ipyparallel+init", "<= 0.5")
        if "ipyparallel_tuned" in s:
            compared("start-up, same config (s)", s["ddipp"], s["ipyparallel_tuned"], "tuned ipp+init")
    if "train_samples_per_s" in results:
        t = results["train_samples_per_s"]
        compared("training (samples/s)", t["ddipp_2"], t["torchrun_2"], "torchrun", ">= 0.97")
        if "ratio_median" in t:
            low, high = t["ratio_iqr"]
            alone(f"  ratio per round, median of {t['runs']}", t["ratio_median"], f"IQR {low:.3f}-{high:.3f}")
            if "ratio_ci95" in t:
                low, high = t["ratio_ci95"]
                alone("  95 % interval of that median", t["ratio_median"], f"{low:.3f}-{high:.3f}")
        alone("  one process, 1 thread (samples/s)", t["single_1"])
        if "single_all" in t:
            alone("  one process, all cores (samples/s)", t["single_all"])
    if "train_gap" in results:
        g = results["train_gap"]
        for name in g["cpu_s"]:
            if name != "torchrun":
                compared(f"  {name} (samples/s)", g[name], g["torchrun"], "torchrun")
    if "train_order" in results:
        o = results["train_order"]
        for name in ("ddipp_cell", "torchrun"):
            alone(f"  {name} right after the other / after idling", o[name]["after_other_vs_idle"])
    if "train_pairs" in results:
        for pair, against in results["train_pairs"]["pairs"].items():
            low, high = against["ratio_ci95"]
            alone(f"  {pair} per round", against["ratio_median"], f"95 % {low:.3f}-{high:.3f}")
    if "hosts" in results and "startup_s" in results["hosts"]:
        h = results["hosts"]
        started = h["startup_s"]
        for name, peer in (("attach", "ipp"), ("ssh", "ipp ssh"), ("slurm", "ipp slurm"), ("mpi", "ipp mpi")):
            if name in started:  # (Slurm's and MPI's rows only where they ran)
                compared(
                    f"2 hosts: start-up, {name} (s)",
                    started[name],
                    started[f"{name}_plain"],
                    f"{peer} by hand",
                )
        compared("2 hosts: dispatch (ms)", h["dispatch_ms"]["ddipp"], h["dispatch_ms"]["px"], "%%px")
    if "fastai" in results:
        f = results["fastai"]
        for key, label in (("fit_s", "tabular fit"), ("vision_fit_s", "vision fit")):
            t = f[key]
            compared(f"fastai{f['fastai_major']} {label} (s)", t["ddipp"], t["launcher"], "torchrun launch")
            alone("  one process (s)", t["single"])
        for task, accuracy in f["accuracy"].items():
            compared(
                f"fastai{f['fastai_major']} {task} accuracy",
                accuracy["ddipp"],
                accuracy["single"],
                "one process",
                "~1.0",
            )
    for size, p in results.get("push_s", {}).items():
        compared(f"push {size} (s)", p["push_ddipp"], p["push_view"], "view.push", "<= 1.05")
        compared(f"pull {size} (s)", p["pull_ddipp"], p["pull_view"], "view.pull")
    for ranks, r in results.get("scaling", {}).items():
        compared(f"dispatch, {ranks} rank(s) (ms)", r["dispatch_ms"]["ddipp"], r["dispatch_ms"]["px"], "%%px")
        alone(f"  start-up, {ranks} rank(s) (s)", r["startup_s"])
    if "parity" in results:
        p = results["parity"]
        major = p["fastai_major"]
        for sweep in ("lr_find", "lr_find_no_stop"):
            for figure in ("iterations", "end_lr", "suggestion"):
                compared(
                    f"fastai{major} {sweep} {figure}",
                    p["ddipp"][sweep][figure],
                    p["single"][sweep][figure],
                    "one process",
                    "1.0" if figure != "suggestion" else "0.5-2",
                )
        for name, last, ours, theirs in zip(
            p["ddipp"]["metrics"],
            p["ddipp"]["last_epoch"],
            p["ddipp"]["validate"],
            p["single"]["validate"],
            strict=True,
        ):
            compared(f"fastai{major} {name}, last epoch", last, theirs, "one process, same w", "1.0")
            compared(f"fastai{major} {name}, validate", ours, theirs, "one process, same w", "1.0")
        alone(
            f"fastai{major} metrics, largest |difference|",
            max(
                abs(ours - theirs)
                for key in ("last_epoch", "validate")
                for ours, theirs in zip(p["ddipp"][key], p["single"]["validate"], strict=True)
            ),
            "< 1e-6",
        )
    if "stream_s" in results:
        s = results["stream_s"]
        compared("10k lines, last (s)", s["ddipp"], s["px"], "%%px --stream", "<= 1.0")
        if "first_byte_latency_ddipp" in s:
            alone("first byte latency (s)", s["first_byte_latency_ddipp"], "< 0.1")
        compared("10k lines, first (s)", s["first_line_ddipp"], s["first_line_px"], "%%px --stream")
    width = max([28, *(len(row[0]) + 1 for row in rows)])
    lines = [f"{'benchmark':<{width}}{'ddipp':>12}{'peer':>12}  {'peer is':<20}{'ratio':>8}  target"]
    for name, ours, peer, peer_name, target in rows:
        peer_text = _figure(peer) if peer is not None else " " * 12
        ratio_text = f"{ours / peer:8.3f}" if peer is not None else " " * 8
        lines.append(f"{name:<{width}}{_figure(ours)}{peer_text}  {peer_name:<20}{ratio_text}  {target}")
    for key, value in results.get("faults_s", {}).items():
        lines.append(f"{key:<40}{value:8.3f} s")
    return "\n".join(lines)


def _figure(value: float) -> str:
    # Learning rates are far below the 0.001 that three decimals show.
    return f"{value:12.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:12.2e}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=ALL)
    parser.add_argument("--runs", type=int, default=100, help="round trips per contender (dispatch)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON file to update")
    args = parser.parse_args()
    chosen = args.only.split(",")
    results: dict = json.loads(args.results.read_text()) if args.results.exists() else {}
    with tempfile.TemporaryDirectory() as ipython_dir:
        env = kernel_env(ipython_dir)
        steps = {
            "dispatch": ("dispatch_ms", lambda: bench_dispatch(env, args.runs)),
            "startup": ("startup_s", lambda: bench_startup(env)),
            "train": ("train_samples_per_s", lambda: bench_train(env)),
            "gap": ("train_gap", lambda: bench_gap(env)),
            "order": ("train_order", lambda: bench_order(env)),
            "pairs": ("train_pairs", lambda: bench_pairs(env)),
            "hosts": ("hosts", lambda: bench_hosts(env)),
            "stream": ("stream_s", lambda: bench_stream(env)),
            "faults": ("faults_s", lambda: bench_faults(env)),
            "push": ("push_s", lambda: bench_push(env)),
            "scaling": ("scaling", lambda: bench_scaling(env)),
            "fastai": ("fastai", lambda: bench_fastai(env)),
            "parity": ("parity", lambda: bench_parity(env)),
        }
        for name in chosen:
            key, run = steps[name]
            print(f"running {name} ...", flush=True)
            results[key] = run()
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if "fastai" in results:  # the schema's summary of the tabular fit
        results["fastai_fit_s"] = results["fastai"]["fit_s"]
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
