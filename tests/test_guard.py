"""`ddipp.guard`: what it runs ends, and what it was told to remove is removed, once the process
that started it is gone, also when that happened before the guard started."""

from __future__ import annotations

import subprocess
import sys

# A module that runs for a minute unless ended.
LONG = ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)"]
GONE_S = 10.0  # the guard polls every 0.5 s, then gives SIGTERM (a bound against a hang)


def test_a_guard_whose_parent_is_gone_before_it_starts_ends_and_removes_its_paths(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # the kernel that asked for the process, dead before the process starts
    folder, file = tmp_path / "rendezvous", tmp_path / "cluster.json"
    folder.mkdir()
    (folder / "store-1").write_text("")
    file.write_text("{}")
    guarded = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ddipp.guard",
            "--parent",
            str(ended.pid),
            "--remove",
            str(folder),
            "--remove",
            str(file),
            *LONG,
        ]
    )
    try:
        assert guarded.wait(timeout=GONE_S) != 0  # ended by its guard's SIGTERM
    finally:
        guarded.kill()
        guarded.wait()
    assert list(tmp_path.iterdir()) == []
