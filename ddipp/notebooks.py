"""Execute notebooks on a real Jupyter kernel through nbclient: `python -m ddipp.notebooks NB`.

`KernelSession` drives a kernel cell by cell as a notebook front end does, keeping every
message with its arrival time (for tests of live output and for the benchmarks).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient

DEFAULT_CELL_TIMEOUT_S = 600


def execute_notebook(
    path: str | Path,
    output: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: int = DEFAULT_CELL_TIMEOUT_S,
) -> nbformat.NotebookNode:
    """Run every cell of `path` in a fresh `python3` kernel (started with `env`), in its folder.

    Cells tagged `raises-exception` may fail; any other error stops the run with
    `nbclient.exceptions.CellExecutionError`. The executed notebook is written to `output`.
    """
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    try:
        client.execute(env=dict(env if env is not None else os.environ))
    finally:
        if output is not None:
            nbformat.write(notebook, Path(output))
    return notebook


@dataclass(frozen=True, slots=True)
class CellMessages:
    """What one executed cell sent back: iopub messages with arrival times (perf_counter), and the reply."""

    sent_at: float
    iopub: list[tuple[float, dict]]
    reply: dict

    @property
    def finished_at(self) -> float:
        """When the kernel went idle after the cell (the end of its output)."""
        return self.iopub[-1][0]

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]

    def text(self) -> str:
        """All stream text, in arrival order."""
        return "".join(m["content"]["text"] for _, m in self.iopub if m["msg_type"] == "stream")

    def shown_text(self) -> str:
        """Streams and the plain-text form of displays and results, in arrival order."""
        parts = []
        for _, message in self.iopub:
            content = message["content"]
            if message["msg_type"] == "stream":
                parts.append(content["text"])
            elif "data" in content:
                parts.append(content["data"].get("text/plain", ""))
        return "".join(parts)

    def first_arrival(self, needle: str) -> float | None:
        """When the first stream message containing `needle` arrived."""
        for at, message in self.iopub:
            if message["msg_type"] == "stream" and needle in message["content"]["text"]:
                return at
        return None


class KernelSession:
    """A `python3` kernel driven over jupyter_client, one cell at a time."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        from jupyter_client.manager import KernelManager

        self._manager = KernelManager(kernel_name="python3")
        self._manager.start_kernel(env=dict(env if env is not None else os.environ))
        self._client = self._manager.client()
        self._client.start_channels()
        self._client.wait_for_ready(timeout=60)
        self._closed = False

    @property
    def pid(self) -> int:
        """The kernel's process id."""
        return self._manager.provisioner.process.pid

    def run(
        self, code: str, timeout: float = 120, interrupt_after: float | tuple[float, ...] | None = None
    ) -> CellMessages:
        """Execute `code`; return once its final `idle` and its reply have arrived.

        `interrupt_after`: interrupt the kernel (as Jupyter's stop button does) that many
        seconds after sending the cell (several numbers: once at each).
        """
        client = self._client
        sent_at = time.perf_counter()
        msg_id = client.execute(code)
        if interrupt_after is not None:
            import threading

            delays = interrupt_after if isinstance(interrupt_after, tuple) else (interrupt_after,)
            for delay in delays:
                threading.Timer(delay, self._manager.interrupt_kernel).start()
        iopub: list[tuple[float, dict]] = []
        while True:
            message = client.get_iopub_msg(timeout=timeout)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            iopub.append((time.perf_counter(), message))
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                break
        while True:
            reply = client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return CellMessages(sent_at, iopub, reply)

    def close(self) -> None:
        """Shut the kernel down (as a front end does) and stop the channels; once."""
        if self._closed:
            return
        self._closed = True
        self._client.stop_channels()
        if self._manager.is_alive():
            self._manager.shutdown_kernel(now=False)
        else:
            self._manager.cleanup_resources()

    def __enter__(self) -> KernelSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cell_text(cell: Mapping) -> str:
    """Everything a code cell showed as text: streams, plain-text displays and results."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
        elif output["output_type"] == "error":
            parts.append(f"{output['ename']}: {output['evalue']}")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", help="the notebook to execute")
    parser.add_argument("-o", "--output", help="where to write the executed notebook")
    args = parser.parse_args(argv)
    output = args.output or str(Path(args.notebook).with_suffix(".executed.ipynb"))
    notebook = execute_notebook(args.notebook, output)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            print(f"In [{cell.get('execution_count')}]: {cell.source.splitlines()[0] if cell.source else ''}")
            text = cell_text(cell)
            if text:
                print("    " + text.rstrip().replace("\n", "\n    "))
    print(f"\nexecuted notebook written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
