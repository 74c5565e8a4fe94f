"""A torchrun group that stays up for a whole benchmark and trains on request.

torchrun's workers are new processes for every run; ddipp's ranks live for the whole notebook.
This group has the history of a notebook's ranks (many runs in one process) without ipyparallel
or ddipp, which separates what a long-lived process costs from what the engine costs.

Each rank reads requests ("train" or "stop", one per line) from a FIFO of its own, blocking:
idle, the group wakes no core. Rank 0 prints each run's RESULT line.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from bench.common import ROOT, free_port, result_line

RANKS = 2
TIMEOUT_S = 1200  # a start or a run (about 3 s) that takes longer has hung


class LongLivedTorchrun:
    """`torchrun --nproc-per-node 2 -m bench.long_lived`, started once; `run()` per measurement.

    torchrun and its workers run in a session of their own, ended as one whatever happened."""

    def __init__(self, env: dict) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="bench-long-lived-")
        fifos = [Path(self._folder.name, f"requests-{rank}") for rank in range(RANKS)]
        for fifo in fifos:
            os.mkfifo(fifo)
        self._stderr = Path(self._folder.name, "stderr").open("w")
        self._requests: list[TextIO] = []
        self._pending = b""  # what rank 0 printed after the last whole line
        self._process = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(RANKS)]
            + ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
            + ["-m", "bench.long_lived", self._folder.name],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        try:
            for fifo in fifos:
                self._requests.append(self._open_when_read(fifo, time.monotonic() + TIMEOUT_S))
        except BaseException:
            self._stop()
            raise

    def _open_when_read(self, fifo: Path, deadline: float) -> TextIO:
        """The FIFO, opened for writing once its rank has opened it for reading."""
        while True:
            try:
                descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:  # ENXIO: no reader yet
                if error.errno != errno.ENXIO:
                    raise
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise self._failed("did not start") from None
                time.sleep(0.05)
                continue
            os.set_blocking(descriptor, True)
            return os.fdopen(descriptor, "w", buffering=1)

    def run(self) -> dict:
        try:
            for requests in self._requests:
                requests.write("train\n")
        except OSError:  # a rank has gone
            raise self._failed("ended") from None
        deadline = time.monotonic() + TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while True:
                line, newline, self._pending = self._pending.partition(b"\n")
                if not newline:  # no whole line yet
                    self._pending = line
                    if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                        break
                    chunk = os.read(self._process.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    self._pending += chunk
                elif b"RESULT " in line:
                    return result_line(line.decode())
        raise self._failed("ended" if self._process.poll() is not None else f"took over {TIMEOUT_S} s")

    def _failed(self, what: str) -> RuntimeError:
        self._stderr.flush()
        tail = Path(self._folder.name, "stderr").read_text()[-3000:]
        return RuntimeError(f"the long-lived torchrun group {what}:\n{tail}")

    def close(self) -> None:
        for requests in self._requests:
            try:
                requests.write("stop\n")
                requests.close()
            except OSError:  # that rank has gone; _stop ends the rest
                pass
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        self._stop()

    def _stop(self) -> None:
        """End torchrun and its workers (SIGTERM to the session, then SIGKILL), close, remove."""
        for stop, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self._process.pid, stop)
            except ProcessLookupError:  # the whole session has ended
                break
            try:
                self._process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            if not _session_has_processes(self._process.pid):
                break
        for stream in (*self._requests, self._process.stdout, self._stderr):
            try:
                stream.close()
            except OSError:
                pass
        self._folder.cleanup()


def _session_has_processes(session: int) -> bool:
    try:
        os.killpg(session, 0)
    except ProcessLookupError:
        return False
    return True


def main(folder: str) -> None:
    import torch
    import torch.distributed as dist

    from bench.workload import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with Path(folder, f"requests-{int(os.environ['LOCAL_RANK'])}").open() as requests:
        for request in requests:
            if request.strip() != "train":
                break
            result = train()
            if rank == 0:
                print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
