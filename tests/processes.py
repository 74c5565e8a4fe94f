"""Finding the processes a test started, by an environment tag they all inherit; and the files
a group left behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

TAG_VARIABLE = "DDIPP_TEST_TAG"


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries `DDIPP_TEST_TAG=tag`."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get(TAG_VARIABLE) == tag and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_until_gone(tag: str, timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` s for every tagged process to end; return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        left = tagged_processes(tag)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def descendants_alive() -> list[psutil.Process]:
    """This process's live descendants (zombies excluded)."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


def sigkill_and_wait(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL `pid` (a rank) and wait until it has ended (a zombie counts), without reaping it:
    ddipp must still be able to read how it ended."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
    raise TimeoutError(f"process {pid} still runs after {timeout} s")


def files_left(temp: Path, ipython_dir: Path, before: frozenset[str] = frozenset()) -> list[str]:
    """What stopped groups left behind: ddipp's folders in `temp` (the TMPDIR of the kernel that
    ran them), cluster and connection files in the security folder of `ipython_dir` (other than
    the names in `before`)."""
    security = ipython_dir / "profile_default" / "security"
    found = [*temp.glob("ddipp-*"), *(p for p in security.glob("*.json") if p.name not in before)]
    return sorted(str(path) for path in found)
