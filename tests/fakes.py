"""A fake group of ranks: namespaces in this process, pids in a fake process table."""

from __future__ import annotations

import contextlib
import io
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ddipp.cluster import UNLOADABLE, UNSENDABLE, RankDeath, RankInfo
from ddipp.errors import LaunchFailed, PullError, PushError
from ddipp.router import RankMessage
from ddipp.spec import GroupSpec


@dataclass
class FakeProcessTable:
    """Every fake process that is alive, shared by all the fake clusters of a test."""

    alive: set[int] = field(default_factory=set)
    killed: dict[int, str] = field(default_factory=dict)
    fail_next_start: bool = False
    next_pid: int = 10_000
    # Faults to inject: the next call of the named method raises this (once).
    faults: dict[str, BaseException] = field(default_factory=dict)
    faults_raised: int = 0

    def maybe_fail(self, method: str) -> None:
        """Raise the fault planned for `method`, if any (each planned fault fires once)."""
        fault = self.faults.pop(method, None)
        if fault is not None:
            self.faults_raised += 1
            raise fault

    def spawn(self) -> int:
        self.next_pid += 1
        self.alive.add(self.next_pid)
        return self.next_pid

    def kill(self, pid: int, how: str = "signal SIGKILL") -> None:
        self.alive.discard(pid)
        self.killed[pid] = how


class FakeCellRun:
    """A run that finished before `submit` returned."""

    def notes(self) -> list[str]:
        return []

    def done(self) -> bool:
        return True

    def failures(self) -> dict[int, tuple[str, str, list[str]]]:
        return {}

    def interrupt(self) -> None:
        pass

    def finished_ranks(self) -> set[int]:
        return set(range(self.world_size))

    def dead_ranks(self) -> set[int]:
        return set()

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size


class FakeRanks:
    """Implements the session's `RankCluster` protocol without processes."""

    def __init__(self, table: FakeProcessTable) -> None:
        self.table = table
        self.ranks: list[RankInfo] = []
        self.namespaces: list[dict[str, Any]] = []
        self._pids: list[int] = []
        self.released: list[int] = []
        self.reformed = 0
        # Values a rank cannot load (its class lives in a module only the notebook has).
        self.cannot_load: dict[str, set[int]] = {}
        self.broken = False

    def start(self, spec: GroupSpec) -> list[RankInfo]:
        self.table.maybe_fail("start")
        if self.table.fail_next_start:
            self.table.fail_next_start = False
            raise LaunchFailed("the group could not start: injected start-up failure")
        controller = self.table.spawn()
        self._pids = [controller]
        for rank in range(spec.world_size):
            pid = self.table.spawn()
            self._pids.append(pid)
            self.ranks.append(RankInfo(rank, rank, pid, "cpu", "fake"))
            self.namespaces.append({"__rank__": rank, "break_group": self._break_group})
        return self.ranks

    def run_setup(self, code: str) -> None:
        self.table.maybe_fail("run_setup")
        for namespace in self.namespaces:
            exec(code, namespace)

    def submit(
        self, code: str, on_message: Callable[[RankMessage], None], cell_number: int | None = None
    ) -> FakeCellRun:
        self.table.maybe_fail("submit")
        for rank, namespace in enumerate(self.namespaces):
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(code, "<cell>", "exec"), namespace)
            except Exception as error:
                lines = traceback.format_exception_only(type(error), error)
                on_message(
                    RankMessage(
                        rank,
                        "error",
                        {
                            "ename": type(error).__name__,
                            "evalue": str(error),
                            "traceback": lines,
                        },
                    )
                )
            if out.getvalue():
                on_message(RankMessage(rank, "stream", {"name": "stdout", "text": out.getvalue()}))
        return FakeCellRun(len(self.namespaces))

    def late_output(self) -> list[RankMessage]:
        return []

    def pack(self, namespace: dict[str, Any]) -> dict[str, bytes]:
        packed = {}
        for name, value in namespace.items():
            try:
                packed[name] = pickle.dumps(value)
            except Exception as error:
                raise PushError(UNSENDABLE.format(name=name, error=error)) from None
        return packed

    def push(self, packed: dict[str, bytes]) -> None:
        self.table.maybe_fail("push")
        staged = []
        for rank, _ in enumerate(self.namespaces):
            values = {}
            for name, blob in packed.items():
                if rank in self.cannot_load.get(name, ()):
                    raise PushError(UNLOADABLE.format(name=name, rank=rank, error="ModuleNotFoundError"))
                values[name] = pickle.loads(blob)
            staged.append(values)
        for rank_namespace, values in zip(self.namespaces, staged, strict=True):
            rank_namespace.update(values)

    def pull(self, names: list[str], rank: int) -> list[Any]:
        self.table.maybe_fail("pull")
        missing = [n for n in names if n not in self.namespaces[rank]]
        if missing:
            raise PullError(f"%dip --pull: name {missing[0]!r} is not defined on rank {rank}")
        return [self.namespaces[rank][n] for n in names]

    def release(self, ranks: list[int]) -> None:
        self.table.maybe_fail("release")
        self.released.extend(ranks)

    def reform(self) -> None:
        self.table.maybe_fail("reform")
        self.reformed += 1
        self.broken = False

    def group_healthy(self) -> bool:
        return not self.broken

    def _break_group(self) -> None:
        """Called by a cell: the process group breaks, as after a failed collective."""
        self.broken = True
        raise RuntimeError("a collective failed")

    def stale_group_ranks(self, ranks: list[int]) -> list[int]:
        return []

    def dead_ranks(self) -> list[RankDeath]:
        return [
            RankDeath(info.rank, info.pid, self.table.killed.get(info.pid, "gone"))
            for info in self.ranks
            if info.pid not in self.table.alive
        ]

    def memory(self) -> list[dict]:
        self.table.maybe_fail("memory")
        return [{"rss_mb": 1.0} for _ in self.ranks]

    def pids(self) -> frozenset[int]:
        return frozenset(pid for pid in self._pids if pid in self.table.alive)

    def stop(self) -> None:
        self.table.maybe_fail("stop")
        for pid in self._pids:
            self.table.alive.discard(pid)
        self._pids, self.ranks, self.namespaces = [], [], []
