"""A fake group of ranks: namespaces in this process, pids in a fake process table."""

from __future__ import annotations

import contextlib
import io
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ddipp.cluster import RankDeath, RankInfo
from ddipp.errors import LaunchFailed, PullError
from ddipp.router import RankMessage
from ddipp.spec import GroupSpec


@dataclass
class FakeProcessTable:
    """Every fake process that is alive, shared by all the fake clusters of a test."""

    alive: set[int] = field(default_factory=set)
    killed: dict[int, str] = field(default_factory=dict)
    fail_next_start: bool = False
    next_pid: int = 10_000

    def spawn(self) -> int:
        self.next_pid += 1
        self.alive.add(self.next_pid)
        return self.next_pid

    def kill(self, pid: int, how: str = "signal SIGKILL") -> None:
        self.alive.discard(pid)
        self.killed[pid] = how


class FakeCellRun:
    """A run that finished before `submit` returned."""

    def done(self) -> bool:
        return True

    def failures(self) -> dict[int, tuple[str, str, list[str]]]:
        return {}

    def interrupt(self) -> None:
        pass

    def finished_ranks(self) -> set[int]:
        return set(range(self.world_size))

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

    def start(self, spec: GroupSpec) -> list[RankInfo]:
        if self.table.fail_next_start:
            self.table.fail_next_start = False
            raise LaunchFailed("the group could not start: injected start-up failure")
        controller = self.table.spawn()
        self._pids = [controller]
        for rank in range(spec.world_size):
            pid = self.table.spawn()
            self._pids.append(pid)
            self.ranks.append(RankInfo(rank, rank, pid, "cpu", "fake"))
            self.namespaces.append({"__rank__": rank})
        return self.ranks

    def run_setup(self, code: str) -> None:
        for namespace in self.namespaces:
            exec(code, namespace)

    def submit(self, code: str, on_message: Callable[[RankMessage], None]) -> FakeCellRun:
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

    def check_serializable(self, value: Any) -> None:
        pickle.dumps(value)

    def push(self, namespace: dict[str, Any]) -> None:
        for rank_namespace in self.namespaces:
            rank_namespace.update(pickle.loads(pickle.dumps(namespace)))

    def pull(self, names: list[str], rank: int) -> list[Any]:
        missing = [n for n in names if n not in self.namespaces[rank]]
        if missing:
            raise PullError(f"%dip --pull: name {missing[0]!r} is not defined on rank {rank}")
        return [self.namespaces[rank][n] for n in names]

    def release(self, ranks: list[int]) -> None:
        self.released.extend(ranks)

    def reform(self) -> None:
        self.reformed += 1

    def dead_ranks(self) -> list[RankDeath]:
        return [
            RankDeath(info.rank, info.pid, self.table.killed.get(info.pid, "gone"))
            for info in self.ranks
            if info.pid not in self.table.alive
        ]

    def memory(self) -> list[dict]:
        return [{"rss_mb": 1.0} for _ in self.ranks]

    def pids(self) -> frozenset[int]:
        return frozenset(pid for pid in self._pids if pid in self.table.alive)

    def stop(self) -> None:
        for pid in self._pids:
            self.table.alive.discard(pid)
        self._pids, self.ranks, self.namespaces = [], [], []
