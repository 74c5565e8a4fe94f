"""Run a module as `__main__`, ending it (and its children) if its parent process goes away.

`python -m ddipp.guard MODULE [ARGS...]` starts the ipyparallel controller and engines of a
group. Nothing else ties them to the notebook kernel: if the kernel is SIGKILLed, its children
are re-parented and would run forever. A daemon thread here notices the change of parent.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

POLL_S = 0.5
TERM_GRACE_S = 3.0


def _end_orphaned(parent: int) -> None:
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
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(TERM_GRACE_S)
    os._exit(1)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m ddipp.guard MODULE [ARGS...]")
    module = sys.argv[1]
    threading.Thread(target=_end_orphaned, args=(os.getppid(),), name="ddipp-guard", daemon=True).start()
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
