"""Steps that write a host's files run once per host, run inside the ranks (no notebook-side imports).

A host step (`!pip install`, `%pip`, a download, `learn.save`) runs on the host's first rank, the
lowest rank on it (LOCAL_RANK 0 under torchrun and on CPU ranks), while the host's other ranks
wait for it and then continue. The others do not wait in a collective, which the group's timeout
(`%makedip -t`) would bound and an interrupt could not break: they poll the process group's store
for the key the first rank publishes when it is done, for up to `HOST_STEP_TIMEOUT_S`. If the
step fails there, the first rank publishes the failure and the others fail at once with it.

Keys are unique per call: every rank makes its host-step calls in the same order within a cell,
so the cell's execution count and a count of calls within it name the same call on every rank
(a rank that failed in an earlier cell cannot shift the keys of later ones). A call made inside
another host step runs plainly, without a key, as the first rank alone makes it.
"""

from __future__ import annotations

import functools
import os
import pickle
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .rankside import Patches, distributed

# A download on the first rank may take long; the others wait this long for it (not `-t`).
HOST_STEP_TIMEOUT_S = 3600.0
# How often a waiting rank looks at the store: short next to any download, cheap for the store.
POLL_S = 0.05

STEP_KEY = "ddipp/host-step/{leader}/{cell}/{call}"
LEADER_FAILED = "rank {leader}, which runs this step for its host, failed in it: {error}"
LEADER_DIED = "rank {leader} (pid {pid}), which runs this step for its host, died before finishing it"
LEADER_TOO_SLOW = "rank {leader}, which runs this step for its host, did not finish it within {timeout:g} s"
UNSENDABLE_RESULT = "its result could not be sent to the host's other ranks ({error})"
_DONE, _FAILED = "done", "failed"

_patches = Patches()
# (the process group it was gathered in, the leader's rank, the leader's pid)
_leader: tuple[Any, int, int] | None = None
_cell: int | None = None
_calls_in_cell = 0
# Host steps under way in this process: a call made inside one runs plainly (see the docstring).
_depth = 0


class HostStepFailed(RuntimeError):
    """The host's first rank failed in (or did not finish) a step the other ranks waited for."""


def host_leader() -> int:
    """The lowest rank on this host, the one that runs host steps (gathered once per group)."""
    return _host_leader()[1]


def _host_leader() -> tuple[Any, int, int]:
    global _leader
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _get_default_group

    group = _get_default_group()
    if _leader is None or _leader[0] is not group:  # a new group may place the ranks anew
        found: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(found, (socket.gethostname(), os.getpid()))
        hosts = [host for host, _ in found]
        leader = hosts.index(hosts[dist.get_rank()])
        _leader = (group, leader, found[leader][1])
    return _leader


def once_per_host(function: Callable) -> Callable:
    """`function` runs on the host's first rank only; the host's other ranks wait for it and return
    its result."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        global _depth
        if _depth or not distributed():
            return function(*args, **kwargs)
        step = _Step()
        _depth += 1
        try:
            if not step.runs_here:
                return step.wait()
            try:
                result = function(*args, **kwargs)
            except BaseException as error:
                step.publish(_FAILED, _describe(error))
                raise
            step.publish(_DONE, result)
            return result
        finally:
            _depth -= 1

    return wrapper


def rank0_first(function: Callable | None = None) -> Any:
    """`with rank0_first():` or `@rank0_first`: the host's first rank runs the code, the host's
    other ranks wait for it (however long it takes), then run it too and find its files in place.

    If it fails on the first rank, the others fail at once instead of running it.
    """
    if function is None:
        return _first_rank_first()
    return _first_rank_first()(function)


@contextmanager
def _first_rank_first() -> Iterator[None]:
    global _depth
    if _depth or not distributed():
        yield
        return
    step = _Step()
    _depth += 1
    try:
        if not step.runs_here:
            step.wait()
            yield
            return
        try:
            yield
        except BaseException as error:
            step.publish(_FAILED, _describe(error))
            raise
        step.publish(_DONE, None)
    finally:
        _depth -= 1


class _Step:
    """One host-step call: its key in the store, and whether this rank runs it."""

    def __init__(self) -> None:
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _get_default_store

        _, self.leader, self.leader_pid = _host_leader()
        self.runs_here = dist.get_rank() == self.leader
        self.store = _get_default_store()
        self.key = _next_key(self.leader)

    def publish(self, status: str, payload: Any) -> None:
        try:
            message = pickle.dumps((status, payload))
        except Exception as error:
            message = pickle.dumps((_FAILED, UNSENDABLE_RESULT.format(error=error)))
        self.store.set(self.key, message)

    def wait(self) -> Any:
        # Checking, then sleeping in Python: an interrupt stops the wait, and no store timeout
        # (the group's -t) applies to it.
        deadline = time.monotonic() + HOST_STEP_TIMEOUT_S
        while not self.store.check([self.key]):
            if not _alive(self.leader_pid):  # on this host: a death is seen at once
                raise HostStepFailed(LEADER_DIED.format(leader=self.leader, pid=self.leader_pid))
            if time.monotonic() > deadline:
                raise HostStepFailed(LEADER_TOO_SLOW.format(leader=self.leader, timeout=HOST_STEP_TIMEOUT_S))
            time.sleep(POLL_S)
        status, payload = pickle.loads(self.store.get(self.key))
        if status == _FAILED:
            raise HostStepFailed(LEADER_FAILED.format(leader=self.leader, error=payload))
        return payload


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _next_key(leader: int) -> str:
    global _cell, _calls_in_cell
    cell = _execution_count()
    if cell != _cell:
        _cell, _calls_in_cell = cell, 0
    _calls_in_cell += 1
    return STEP_KEY.format(leader=leader, cell=cell, call=_calls_in_cell)


def _execution_count() -> int:
    shell = _shell()
    return shell.execution_count if shell is not None else 0


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def apply_patches() -> None:
    """Shell escapes (`!cmd`, `%pip`, `%conda`) run once per host; called on entering `patched`."""
    if _patches or not distributed():
        return
    host_leader()  # gathered now, while every rank sets up, not inside a later step
    shell = _shell()
    if shell is not None:
        patch_shell(shell, _patches)


def undo_patches() -> None:
    """Put the shell back; called on each rank when the group is torn down."""
    _patches.undo()


def patch_shell(shell: Any, patches: Patches) -> None:
    """`shell.system`, which runs `!cmd` and IPython's `%pip`, `%conda` and `%uv`, runs once per host;
    the other ranks get its exit code."""
    original = shell.system

    def run(command: str) -> Any:
        original(command)
        return shell.user_ns.get("_exit_code")

    run_once = once_per_host(run)

    def system(command: str) -> None:
        shell.user_ns["_exit_code"] = run_once(command)

    system.__doc__ = original.__doc__
    patches.replace(shell, "system", system)
