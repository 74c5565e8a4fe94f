"""A file server on 127.0.0.1 that counts the GET requests it answers: how often a step downloaded."""

from __future__ import annotations

import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class CountingServer:
    """Serves the files of `folder` while in a `with` block; `gets(name)` counts requests for one."""

    def __init__(self, folder: Path) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server._counts[self.path.lstrip("/")] += 1
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        """The address of `name` in the served folder."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{name}"

    def gets(self, name: str) -> int:
        """How many GET requests for `name` have come in."""
        with self._lock:
            return self._counts[name]

    def __enter__(self) -> CountingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
