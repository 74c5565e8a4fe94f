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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from bench.common import ROOT, free_port, result_line

RANKS = 2


class LongLivedTorchrun:
    """`torchrun --nproc-per-node 2 -m bench.long_lived`, started once; `run()` per measurement."""

    def __init__(self, env: dict) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="bench-long-lived-")
        fifos = [Path(self._folder.name, f"requests-{rank}") for rank in range(RANKS)]
        for fifo in fifos:
            os.mkfifo(fifo)
        self._stderr = Path(self._folder.name, "stderr")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(RANKS)]
            + ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
            + ["-m", "bench.long_lived", self._folder.name],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr.open("w"),
            text=True,
        )
        try:
            self._requests = [self._open_when_read(fifo) for fifo in fifos]
        except BaseException:
            self._stop()
            raise

    def _open_when_read(self, fifo: Path) -> TextIO:
        """The FIFO, opened for writing once its rank has opened it for reading."""
        while True:
            try:
                descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:  # ENXIO: no reader yet
                if error.errno != errno.ENXIO:
                    raise
                if self._process.poll() is not None:
                    raise RuntimeError(f"torchrun ended:\n{self._stderr.read_text()[-3000:]}") from None
                time.sleep(0.05)
                continue
            os.set_blocking(descriptor, True)
            return os.fdopen(descriptor, "w", buffering=1)

    def run(self) -> dict:
        for requests in self._requests:
            requests.write("train\n")
        for line in self._process.stdout:
            if "RESULT " in line:
                return result_line(line)
        raise RuntimeError(f"the long-lived torchrun group ended:\n{self._stderr.read_text()[-3000:]}")

    def close(self) -> None:
        try:
            for requests in self._requests:
                requests.write("stop\n")
                requests.close()
            self._process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._stop()

    def _stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()  # torchrun ends its workers, then itself
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process.stdout.close()
        self._folder.cleanup()


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
