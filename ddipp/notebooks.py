"""Execute notebooks on a real Jupyter kernel through nbclient: `python -m ddipp.notebooks NB`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
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
