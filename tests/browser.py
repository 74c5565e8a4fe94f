"""JupyterLab in a real browser: a lab server on loopback and headless chromium driven by Playwright.

The `--run-browser` tests and `make docs-images` use it; pytest hooks stay in conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

# Debian's binary first: /usr/bin/chromium is a wrapper script that prints a shell warning.
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium",)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30
API_TIMEOUT_S = 10
POLL_S = 0.05
VIEWPORT = {"width": 1100, "height": 900}

# The lab's own user settings, in a temporary folder: every cell stays in the DOM (by default
# JupyterLab renders only the cells in view), and no news or update check goes out to the
# network or pops up over the cells.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

LAB_EXITED = "JupyterLab exited with code {code} before it answered; its log:\n{log}"
LAB_SILENT = "JupyterLab did not answer within {timeout} s; its log:\n{log}"
CELL_NEVER = "cell {index} did not {what} within {timeout} s; it shows {view}"
KERNEL_NEVER_IDLE = "the kernel was not idle for {quiet} s in a row within {timeout} s (status: {status!r})"

CELLS = ".jp-Notebook .jp-Cell"
KERNEL_STATUS = ".jp-StatusBar-TextItem[title^='Change kernel']"
RUN_PROMPT = re.compile(r"\[\d+\]:")
# What a cell shows at one moment, read in the page (also by the watcher, on every change).
READ_CELL = """cell => ({
    prompt: cell.querySelector('.jp-InputArea-prompt')?.textContent ?? '',
    outputs: [...cell.querySelectorAll('.jp-OutputArea-child .jp-OutputArea-output')].map(
        o => [o.dataset.mimeType ?? '', o.innerText]),
    progress: [...cell.querySelectorAll('.jp-OutputArea-output progress')].map(
        p => `${p.getAttribute('value')}/${p.getAttribute('max')}`),
    images: cell.querySelectorAll('.jp-OutputArea-output img').length,
    tables: [...cell.querySelectorAll('.jp-OutputArea-output table')].map(
        t => [...t.querySelectorAll('tr')].map(r => r.innerText)),
})"""
WATCH_CELL = (
    "(cell, key) => {\n"
    f"    const read = {READ_CELL};\n"
    """    window.ddippSeen = window.ddippSeen ?? {};
    const seen = window.ddippSeen[key] = [read(cell)];
    new MutationObserver(() => seen.push(read(cell))).observe(
        cell, {subtree: true, childList: true, attributes: true, characterData: true});
}"""
)


def find_chromium() -> str | None:
    """A chromium (or chrome) binary on this machine, or None."""
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def write_notebook(path: Path, cells: Sequence[str | tuple[str, Sequence[str]]]) -> Path:
    """A `python3` notebook of code cells: a source, or a (source, tags) pair."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for cell in cells:
        source, tags = (cell, ()) if isinstance(cell, str) else cell
        notebook.cells.append(
            nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})
        )
    nbformat.write(notebook, path)
    return path


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 with a random token, serving the notebooks in `root`.

    Its settings, workspaces, runtime and config files live in `home`, so nothing of the user's
    own Jupyter setup is read or changed. Kernels run on this Python, with `env`.
    """

    def __init__(self, root: Path, home: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.home = home
        self.token = secrets.token_hex(24)
        self.port = 0
        self._env = dict(env if env is not None else os.environ)
        self._process: subprocess.Popen | None = None
        self._log_path = home / "lab.log"
        # Loopback only: a proxy named in the environment must not see these requests.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._process is not None
        return self._process.pid

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until it answers; on failure nothing is left running."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name, values in LAB_SETTINGS.items():
            path = self.home / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        runtime = self.home / "runtime"
        env = dict(
            self._env,
            JUPYTERLAB_SETTINGS_DIR=str(self.home / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
            JUPYTER_RUNTIME_DIR=str(runtime),
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
        )
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",  # a root CI container is fine: the server listens on loopback only
            "--ip=127.0.0.1",
            "--port=0",  # the server binds a free port and writes it to its runtime file
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
        ]
        with self._log_path.open("w") as log:
            self._process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_until_answering(runtime / f"jpserver-{self._process.pid}.json", timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self, server_file: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(LAB_EXITED.format(code=code, log=self.log()))
            try:
                self.port = json.loads(server_file.read_text())["port"]
                self.api("GET", "status")
                return
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(LAB_SILENT.format(timeout=timeout, log=self.log()))
            time.sleep(0.1)

    def log(self) -> str:
        """What the server has written so far."""
        return self._log_path.read_text() if self._log_path.exists() else ""

    def url(self, path: str) -> str:
        """The address of `path` on this server, with the token."""
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def api(self, method: str, path: str) -> Any:
        """Call the server's REST API; return the decoded answer (None if empty)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with self._opener.open(request, timeout=API_TIMEOUT_S) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """Shut every kernel down, as "Shut Down All Kernels" does."""
        for kernel in self.api("GET", "kernels"):
            self.api("DELETE", f"kernels/{kernel['id']}")

    def stop(self) -> None:
        """Shut the server down (its kernels first) and wait for it; kill it if it hangs."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                self.api("POST", "shutdown")
            except OSError:
                process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Browser:
    """Headless chromium driven by Playwright (no `playwright install`: `executable` is used)."""

    def __init__(self, executable: str) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._pages = 0
        try:
            self._browser = self._playwright.chromium.launch(executable_path=executable)
        except BaseException:
            self._playwright.stop()
            raise

    def open(self, lab: JupyterLab, notebook: str) -> NotebookPage:
        """Open `notebook` (a path in the lab's root) and wait until its kernel is idle."""
        page = self._browser.new_page(viewport=VIEWPORT)
        # A workspace of its own: JupyterLab would otherwise reopen the notebooks of earlier pages.
        self._pages += 1
        page.goto(lab.url(f"lab/workspaces/page{self._pages}/tree/{notebook}"))
        page.locator(CELLS).first.wait_for()
        opened = NotebookPage(page)
        opened.wait_until_kernel_idle()
        return opened

    def close(self) -> None:
        """Close every page and the browser, and stop Playwright's driver."""
        try:
            self._browser.close()
        finally:
            self._playwright.stop()


@dataclass(frozen=True, slots=True)
class CellView:
    """What a code cell shows at one moment."""

    prompt: str  # "[3]:" once it ran, "[*]:" while it runs or waits, "[ ]:" otherwise
    outputs: tuple[tuple[str, str], ...]  # (mime type, text) of each output area; errors are stderr
    progress: tuple[str, ...]  # "value/max" of each <progress> element
    images: int
    tables: tuple[tuple[str, ...], ...]  # each table's rows, as text

    @classmethod
    def read(cls, raw: Mapping[str, Any]) -> CellView:
        """From what READ_CELL returned."""
        return cls(
            raw["prompt"],
            tuple((mime, text) for mime, text in raw["outputs"]),
            tuple(raw["progress"]),
            raw["images"],
            tuple(tuple(rows) for rows in raw["tables"]),
        )

    @property
    def ran(self) -> bool:
        """The cell has run and its reply has come (JupyterLab shows the execution count)."""
        return RUN_PROMPT.fullmatch(self.prompt) is not None

    def text(self) -> str:
        """The text of every output area."""
        return "\n".join(text for _, text in self.outputs)


class NotebookPage:
    """One notebook open in JupyterLab, used as a person would: menus, toolbar, keyboard."""

    def __init__(self, page: Page) -> None:
        self.page = page

    def cell(self, index: int) -> Locator:
        """The cell at `index` in the DOM."""
        return self.page.locator(CELLS).nth(index)

    def view(self, index: int) -> CellView:
        """What cell `index` shows now."""
        return CellView.read(self.cell(index).evaluate(READ_CELL))

    def wait_for(self, index: int, what: str, done, timeout: float) -> CellView:
        """Wait until `done(view)` holds for cell `index`; `what` names it in the error."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.view(index)
            if done(view):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(CELL_NEVER.format(index=index, what=what, timeout=timeout, view=view))
            time.sleep(POLL_S)

    def wait_until_ran(self, index: int, timeout: float) -> CellView:
        """Wait until cell `index` shows its execution count."""
        return self.wait_for(index, "run", lambda view: view.ran, timeout)

    def kernel_status(self) -> str:
        """The kernel's status as the status bar shows it ("Python 3 (ipykernel) | Idle")."""
        return self.page.locator(KERNEL_STATUS).first.inner_text()

    def wait_until_kernel_idle(self, timeout: float = START_TIMEOUT_S, quiet: float = 0.0) -> None:
        """Wait until the status bar has said Idle for `quiet` s in a row."""
        deadline = time.monotonic() + timeout
        idle_since = None
        while True:
            status = self.kernel_status() if self.page.locator(KERNEL_STATUS).count() else ""
            now = time.monotonic()
            if status.endswith("| Idle"):
                idle_since = now if idle_since is None else idle_since
                if now - idle_since >= quiet:
                    return
            else:
                idle_since = None
            if now > deadline:
                raise TimeoutError(KERNEL_NEVER_IDLE.format(quiet=quiet, timeout=timeout, status=status))
            time.sleep(POLL_S)

    def run_all(self) -> None:
        """Run > Run All Cells."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    def select(self, index: int) -> None:
        """Make cell `index` the active cell (a click on its prompt)."""
        self.cell(index).locator(".jp-InputPrompt").click()

    def run_cell(self, index: int) -> None:
        """Select cell `index` and press Shift+Enter."""
        self.select(index)
        self.page.keyboard.press("Shift+Enter")

    def interrupt(self) -> None:
        """The toolbar's stop button ("Interrupt the kernel")."""
        self.page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']").click()

    def restart_kernel(self) -> None:
        """The toolbar's restart button, then "Restart" in the dialog that asks."""
        self.page.locator(".jp-NotebookPanel-toolbar [data-command='notebook:restart-kernel']").click()
        self.page.locator(".jp-Dialog .jp-mod-accept").click()

    def watch(self, index: int) -> None:
        """From now on, record what cell `index` shows after every change of its DOM."""
        self.cell(index).evaluate(WATCH_CELL, str(index))

    def watched(self, index: int) -> list[CellView]:
        """Everything cell `index` showed since `watch(index)`, in order."""
        return [CellView.read(raw) for raw in self.page.evaluate(f"window.ddippSeen['{index}']")]

    def screenshot(self, index: int, path: Path) -> Path:
        """A PNG of cell `index` (input and output), cropped to the cell."""
        self.page.mouse.move(0, 0)  # off the notebook: hovering adds overlays to outputs
        self.cell(index).screenshot(path=str(path), animations="disabled", caret="hide")
        return path

    def close(self) -> None:
        """Close the page (its kernel keeps running, as when a tab is closed)."""
        self.page.close()
