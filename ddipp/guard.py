"""Run a module as `__main__`, ending it (and its children) if its parent process goes away.

`python -m ddipp.guard [--parent PID] [--remove PATH]... MODULE [ARGS...]` starts the
ipyparallel controller and engines of a group. Nothing else ties them to the notebook kernel: if
the kernel is SIGKILLed, its children are re-parented and would run forever. A daemon thread
here notices the change of parent (from PID, the kernel's, also if the kernel died before this
process started). Each PATH (a folder or a file the kernel would have removed when it stopped the
group) is removed then too.
"""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import sys
import threading
import time

POLL_S = 0.5
TERM_GRACE_S = 3.0


def _end_orphaned(parent: int, paths: list[str]) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                child.terminate()
            except psutil.NoSuchProcess:
                pass
    except Exception:
        pass  # the process itself still ends below
    for path in paths:
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except OSError:
            pass  # gone already, or not ours to remove: the rest still goes
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(TERM_GRACE_S)
    os._exit(1)


def main() -> None:
    arguments, paths, parent = sys.argv[1:], [], os.getppid()
    while arguments[:1] in (["--remove"], ["--parent"]) and len(arguments) > 1:
        if arguments[0] == "--remove":
            paths.append(arguments[1])
        else:  # the process that started this one: if it is gone already, so is this one
            parent = int(arguments[1])
        arguments = arguments[2:]
    if not arguments:
        raise SystemExit("usage: python -m ddipp.guard [--parent PID] [--remove PATH]... MODULE [ARGS...]")
    threading.Thread(target=_end_orphaned, args=(parent, paths), name="ddipp-guard", daemon=True).start()
    module = arguments[0]
    sys.argv = [module, *arguments[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
