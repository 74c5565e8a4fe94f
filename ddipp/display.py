"""The notebook end of the router: writes routed output through IPython's display machinery."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from IPython.display import clear_output, publish_display_data


class NotebookSink:
    """Sends routed output to the current cell, as if the cell itself had produced it."""

    def stream(self, name: str, text: str) -> None:
        stream = sys.stderr if name == "stderr" else sys.stdout
        stream.write(text)
        stream.flush()

    def display(self, data: Mapping, metadata: Mapping, display_id: str | None, update: bool) -> None:
        transient = {"display_id": display_id} if display_id is not None else None
        publish_display_data(data=dict(data), metadata=dict(metadata), transient=transient, update=update)

    def clear_output(self, wait: bool) -> None:
        clear_output(wait=wait)
