"""The ranks as processes: one ipyparallel engine per rank, torch.distributed formed across them."""

from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from .errors import LaunchFailed, PullError, PushError
from .placement import place_host, threads_per_rank
from .router import RankMessage
from .spec import GroupSpec

LOOPBACK = "127.0.0.1"
# The controller's heartbeat period bounds how fast engines register (~4 s at the default).
CONTROLLER_ARGS = ["--HeartMonitor.period=500"]
# How long a controller that is still starting gets to finish before it is stopped.
SETTLE_S = 10.0
# Seconds a process gets after SIGTERM before SIGKILL: ranks first, then the controller.
STOP_GRACE_S = 2.0
KILL_GRACE_S = 3.0
EXIT_STATUS_WAIT_S = 1.0
# How long the ranks get to show that their process group still works after a failed cell.
PROBE_S = 2.0
# Finished requests whose late output (written after the cell ended) is still looked for.
LATE_OUTPUT_REQUESTS = 256
# ipyparallel's messages go to a logger of ddipp's own: in Jupyter its default is the kernel's.
LOGGER = "ddipp.ipyparallel"

# Not output: tells whoever reads the messages that the run has ended.
WAKE = RankMessage(-1, "wake", {})
# iopub messages that carry no output; not handed to the reader at all.
NOT_OUTPUT = frozenset({"status", "execute_input"})

RANK_DID_NOT_JOIN = "rank {rank} did not join the process group: {error}"
RENDEZVOUS_TIMEOUT = "the process group did not form within {timeout:g} s (raise it with %makedip -t SECONDS)"
NOT_DEFINED_ON_RANK = "%dip --pull: {error} on rank {rank}"
UNSENDABLE = "%dip --push: {name!r} cannot be sent to the ranks ({error}); nothing was pushed"
UNLOADABLE = (
    "%dip --push: {name!r} cannot be loaded on rank {rank} ({error}); nothing was pushed, the "
    "group is as it was. Define it on the ranks instead (for example import its module there)"
)
OUTPUT_CUT = "ddipp: rank {rank} ended before its output did; what it wrote last may be missing"
NOT_LOADABLE = "%dip --pull: the values from rank {rank} cannot be loaded in the notebook: {error}"


@dataclass(frozen=True, slots=True)
class RankInfo:
    """One rank as `%dipstatus` shows it."""

    rank: int
    engine_id: int
    pid: int
    device: str
    host: str


@dataclass(frozen=True, slots=True)
class RankDeath:
    """A rank process that is gone, how it ended, and its host when the group spans hosts."""

    rank: int
    pid: int
    how: str
    host: str = ""


class CellRun(Protocol):
    """A cell submitted to every rank."""

    def done(self) -> bool: ...

    def failures(self) -> dict[int, tuple[str, str, list[str]]]:
        """Per rank, a failure that arrived as a result rather than as an iopub error."""
        ...

    def interrupt(self) -> None: ...

    def finished_ranks(self) -> set[int]:
        """Ranks whose execution has ended (successfully or not)."""
        ...

    def dead_ranks(self) -> set[int]:
        """Ranks whose process is gone (or, across hosts, no longer registered)."""
        ...

    def notes(self) -> list[str]:
        """What the notebook should be told about the run (output that may be missing)."""
        ...


class RankCluster(Protocol):
    """What the session needs of a group of rank processes; a fake one serves the fuzzer."""

    ranks: list[RankInfo]

    def start(self, spec: GroupSpec) -> list[RankInfo]: ...

    def run_setup(self, code: str) -> None: ...

    def submit(
        self, code: str, on_message: Callable[[RankMessage], None], cell_number: int | None = None
    ) -> CellRun: ...

    def late_output(self) -> list[RankMessage]:
        """Output the ranks wrote after their cell had ended, not shown yet."""
        ...

    def pack(self, namespace: dict[str, Any]) -> Any:
        """Serialise values for `push`, once; `PushError` names a value that cannot be sent."""
        ...

    def push(self, packed: Any) -> None:
        """Every rank gets every value, or none does (`PushError` names the value and rank)."""
        ...

    def pull(self, names: list[str], rank: int) -> list[Any]: ...

    def release(self, ranks: list[int]) -> None:
        """Take `ranks` out of the process group so no peer waits for them."""
        ...

    def reform(self) -> None:
        """Form the process group again on every rank (same ranks, devices, backend)."""
        ...

    def group_healthy(self) -> bool:
        """Whether the process group still works on every rank (asked of the group itself)."""
        ...

    def stale_group_ranks(self, ranks: list[int]) -> list[int]:
        """Which of `ranks` failed by using an object built on a group since re-formed."""
        ...

    def dead_ranks(self) -> list[RankDeath]: ...

    def memory(self) -> list[dict]: ...

    def pids(self) -> frozenset[int]: ...

    def stop(self) -> None: ...


def describe_exit(returncode: int | None) -> str:
    """`exit code 3` or `signal SIGKILL` for a finished process's return code."""
    if returncode is None:
        return "ended (exit status unknown)"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class IpyparallelCellRun:
    """A cell on every rank through ipyparallel; done once each rank's output has ended."""

    def __init__(self, async_result, interrupt: Callable[[], None], is_dead: Callable[[int], bool]) -> None:
        self._result = async_result
        self._interrupt = interrupt
        self._is_dead = is_dead
        self._cut: list[int] = []

    def done(self) -> bool:
        # The request futures themselves, not the AsyncResult's own resolution (a callback
        # that may not have run yet when the reader is woken).
        children = self._result._children
        if not all(child.done() for child in children):
            return False
        # ipyparallel resolves a request's `output` future at the rank's final `idle`, which
        # comes after everything the rank wrote for the cell: wait for it, however late,
        # unless the rank is gone (a dead rank sends no `idle`).
        waiting = [rank for rank, child in enumerate(children) if not child.output.done()]
        if any(not self._is_dead(rank) for rank in waiting):
            return False
        self._cut = waiting
        return True

    def notes(self) -> list[str]:
        return [OUTPUT_CUT.format(rank=rank) for rank in self._cut]

    def failures(self) -> dict[int, tuple[str, str, list[str]]]:
        found = {}
        for rank, child in enumerate(self._result._children):
            error = child.exception() if child.done() else None
            if error is not None:
                traceback = getattr(error, "traceback", None) or ""
                ename = getattr(error, "ename", type(error).__name__)
                evalue = getattr(error, "evalue", str(error))
                found[rank] = (ename, evalue, traceback.splitlines())
        return found

    def finished_ranks(self) -> set[int]:
        return {rank for rank, child in enumerate(self._result._children) if child.done()}

    def dead_ranks(self) -> set[int]:
        # A request to a rank that is gone fails (ipyparallel's EngineError): only those are asked.
        return {rank for rank in self.finished_ranks() if self._is_dead(rank)}

    def interrupt(self) -> None:
        self._interrupt()


class IpyparallelRanks:
    """A real group on this machine: controller and engines on loopback, one engine per rank."""

    def __init__(self) -> None:
        self.ranks: list[RankInfo] = []
        self._cluster = None
        self._client = None
        self._view = None
        self._engine_ids: list[int] = []
        self._processes: list[psutil.Process] = []
        self._spec: GroupSpec | None = None
        self._rendezvous_dir: str | None = None
        self._formations = 0
        # (msg_id, rank) of finished cells: output that arrives for them later is late output.
        self._finished: deque[tuple[str, int]] = deque(maxlen=LATE_OUTPUT_REQUESTS)
        self._open: list[tuple[str, int]] = []

    def start(self, spec: GroupSpec) -> list[RankInfo]:
        """Start the processes and form the group; on any failure stop all and raise."""
        self._spec = spec
        try:
            self._launch(spec)
            self.ranks = self._form_group(spec)
        except BaseException as error:
            self.stop()
            if isinstance(error, LaunchFailed):
                raise
            if isinstance(error, Exception):
                raise LaunchFailed(f"the group could not start: {error}") from error
            raise
        return self.ranks

    def _launch(self, spec: GroupSpec) -> None:
        import ipyparallel as ipp

        cluster = ipp.Cluster(
            n=spec.world_size,
            controller_ip=LOOPBACK,
            controller_args=CONTROLLER_ARGS,
            delay=0,
            engine_timeout=math.ceil(spec.timeout),
            log=own_logger(),
            # the session stops the group at exit itself, and waits for every process
            shutdown_atexit=False,
        )
        self._cluster = cluster
        self._rendezvous_dir = tempfile.mkdtemp(prefix="ddipp-rendezvous-")
        _start_controller(cluster, self._rendezvous_dir)
        self._adopt(cluster.controller.process.pid)
        # Set at start, before any library sizes its thread pool; each rank's own environment
        # comes with the group (`_form_group`).
        threads = threads_per_rank(spec.world_size, os.environ)
        environment = {} if threads is None else {"OMP_NUM_THREADS": threads}
        cluster.start_engines_sync(
            n=spec.world_size, environment=environment, engine_cmd=_guarded("ipyparallel.engine")
        )
        for engine_set in cluster.engines.values():
            for launcher in engine_set.launchers.values():
                self._adopt(launcher.process.pid)
        client = self._client = cluster.connect_client_sync()
        try:
            client.wait_for_engines(spec.world_size, timeout=spec.timeout, interactive=False)
        except TimeoutError:
            raise LaunchFailed(
                f"only {len(client.ids)} of {spec.world_size} ranks registered within "
                f"{spec.timeout:g} s (raise it with %makedip -t SECONDS)"
            ) from None
        self._engine_ids = sorted(client.ids)[: spec.world_size]
        self._view = client[self._engine_ids]
        self._view.use_cloudpickle()
        # ipyparallel writes the cluster file readable by all; it names the connection files.
        if os.path.exists(cluster.cluster_file):
            os.chmod(cluster.cluster_file, 0o600)

    def release(self, ranks: list[int]) -> None:
        from . import rank as rank_side

        for rank in ranks:
            engine_id = self._engine_ids[rank]
            peer_pids, across_hosts = self._abort_arguments(rank)
            # At once, on the engine's control channel: served even while the rank's main
            # thread is blocked in a collective (a peer that is gone). Not waited for.
            content = {"peer_pids": peer_pids, "across_hosts": across_hosts}
            self._client._send_control_request([engine_id], rank_side.RELEASE_REQUEST, content, block=False)
            # The group itself is taken apart (NCCL aborted) when it is formed again (`reform`).

    def reform(self) -> None:
        from . import rank as rank_side

        if self._spec is None:
            raise LaunchFailed("no group to re-form")
        # Every rank leaves the old group for good first, so nothing built on it can hang.
        pending = [
            self._client[engine_id].apply_async(rank_side.abort_group, *self._abort_arguments(rank))
            for rank, engine_id in enumerate(self._engine_ids)
        ]
        for result in pending:
            result.get()
        self.ranks = self._form_group(self._spec)

    def _abort_arguments(self, rank: int) -> tuple[list[int], bool]:
        """What `rank_side.abort_group` needs on `rank` to find its connections to the peers:
        the peers' pids, and whether the group spans hosts."""
        return [info.pid for info in self.ranks], False

    def group_healthy(self) -> bool:
        from . import rank as rank_side

        try:
            return all(self._view.apply_sync(rank_side.probe_group, PROBE_S))
        except Exception:
            return False

    def stale_group_ranks(self, ranks: list[int]) -> list[int]:
        from . import rank as rank_side

        if self._formations < 2:
            return []
        try:
            found = self._client[[self._engine_ids[r] for r in ranks]].apply_sync(
                rank_side.last_error_used_a_retired_group
            )
        except Exception:  # only a hint is lost: the cell's own error is what matters
            return []
        return [rank for rank, stale in zip(ranks, found, strict=True) if stale]

    def _form_group(self, spec: GroupSpec) -> list[RankInfo]:
        from . import rank as rank_side

        self._formations += 1
        # A fresh store file for each formation: keys of an earlier one must not be seen.
        store_path = os.path.join(self._rendezvous_dir, f"store-{self._formations}")
        port = _free_port()
        placements = place_host(spec.devices, master_addr=LOOPBACK, master_port=port, inherited=os.environ)
        pending = [
            self._client[engine_id].apply_async(
                rank_side.form_group,
                rank,
                spec.world_size,
                LOOPBACK,
                port,
                store_path,
                spec.backend,
                placements[rank].device,
                dict(placements[rank].environment),
                spec.timeout,
            )
            for rank, engine_id in enumerate(self._engine_ids)
        ]
        return self._joined(pending, [placement.label for placement in placements], spec.timeout)

    def _joined(self, pending: list, labels: list[str], timeout: float) -> list[RankInfo]:
        """Each rank's `form_group` result, waited for within `timeout` in all; `LaunchFailed`
        naming the first rank that did not join."""
        deadline = time.monotonic() + timeout
        infos = []
        for rank, result in enumerate(pending):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                info = result.get(timeout=remaining)
            except TimeoutError:
                raise LaunchFailed(RENDEZVOUS_TIMEOUT.format(timeout=timeout)) from None
            except Exception as error:
                raise LaunchFailed(RANK_DID_NOT_JOIN.format(rank=rank, error=error)) from error
            infos.append(RankInfo(rank, self._engine_ids[rank], info["pid"], labels[rank], info["host"]))
        return infos

    def _adopt(self, pid: int) -> None:
        try:
            self._processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass

    def run_setup(self, code: str) -> None:
        """Run `code` on every rank, raising the first rank's error."""
        self._view.execute(code, block=True)

    def submit(
        self, code: str, on_message: Callable[[RankMessage], None], cell_number: int | None = None
    ) -> IpyparallelCellRun:
        from ipyparallel.client.asyncresult import AsyncResult

        from . import rank as rank_side

        client = self._client
        idents, targets = client._build_targets(self._engine_ids)
        if cell_number is not None:
            code = f"{rank_side.CELL_NUMBER_MARKER}{cell_number}\n{code}"
        # The previous cell has ended: from now on, what arrives for it is late output.
        self._finished.extend(self._open)

        def relay(rank: int, msg: dict) -> None:
            kind = msg["header"]["msg_type"]
            if kind not in NOT_OUTPUT:
                on_message(RankMessage(rank, kind, msg.get("content", {})))

        futures = []
        for rank, ident in enumerate(idents):
            # The hook runs before the request is sent, so no output can be missed.
            futures.append(
                client.send_execute_request(
                    self._view._socket,
                    code,
                    silent=False,
                    ident=ident,
                    message_future_hook=lambda future, rank=rank: future.iopub_callbacks.append(
                        lambda msg, rank=rank: relay(rank, msg)
                    ),
                )
            )
        result = AsyncResult(client, futures, fname="execute", targets=targets, owner=True)

        def wake_when_all_done(_) -> None:
            # The reader then need not poll for the end; one hand-off per cell, not per event.
            if all(future.done() and future.output.done() for future in futures):
                on_message(WAKE)

        for future in futures:
            future.add_done_callback(wake_when_all_done)
            future.output.add_done_callback(wake_when_all_done)
        self._open = [(future.msg_id, rank) for rank, future in enumerate(futures)]
        return IpyparallelCellRun(result, self._interrupt_ranks, self._rank_is_dead)

    def _interrupt_ranks(self) -> None:
        """SIGINT to every rank (their pids are on this machine)."""
        for info in self.ranks:
            try:
                os.kill(info.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def late_output(self) -> list[RankMessage]:
        # ipyparallel forgets a request once its reply and `idle` are in, and keeps what
        # arrives for it later in `Client.metadata` (a fresh entry): that is late output.
        found = []
        for msg_id, rank in list(self._finished):
            # (`in` first: the metadata is a defaultdict, a plain lookup would add an entry)
            if msg_id not in self._client.metadata:
                continue
            metadata = self._client.metadata.pop(msg_id, {})
            for name in ("stdout", "stderr"):
                if metadata.get(name):
                    text = {"name": name, "text": metadata[name]}
                    found.append(RankMessage(rank, "stream", text, late=True))
            for output in metadata.get("outputs", []):
                found.append(RankMessage(rank, "display_data", output, late=True))
        return found

    def _rank_is_dead(self, rank: int) -> bool:
        process = self._rank_process(self.ranks[rank].pid)
        return process is None or not _is_alive(process)

    def pack(self, namespace: dict[str, Any]) -> tuple[list[tuple[str, int]], list[Any]]:
        import cloudpickle

        layout, frames = [], []
        for name, value in namespace.items():
            buffers: list[pickle.PickleBuffer] = []
            try:
                # Pickle protocol 5 keeps large arrays out of band: nothing is copied here.
                header = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
            except Exception as error:
                raise PushError(UNSENDABLE.format(name=name, error=error)) from None
            layout.append((name, len(buffers)))
            frames.extend([memoryview(header), *(buffer.raw() for buffer in buffers)])
        return layout, frames

    def push(self, packed: tuple[list[tuple[str, int]], list[Any]]) -> None:
        from . import rank as rank_side

        layout, frames = packed
        token = uuid.uuid4().hex
        try:
            problems = self._view.apply_sync(rank_side.stage_push, token, layout, *frames)
            for rank, problem in enumerate(problems):
                if problem is not None:
                    name, error = problem
                    raise PushError(UNLOADABLE.format(name=name, rank=rank, error=error))
        except BaseException:
            self._view.apply_async(rank_side.discard_push, token)  # no rank keeps any of it
            raise
        # Once staged everywhere, the push completes: an interrupt now would leave some ranks
        # with the values and others without, so the commit is waited for through interrupts.
        while True:
            try:
                self._view.apply_sync(rank_side.commit_push, token)
                return
            except KeyboardInterrupt:
                continue

    def pull(self, names: list[str], rank: int) -> list[Any]:
        """The values of `names` on `rank`, with their tensors on the CPU (see `rank.pickle_on_cpu`)."""
        from ipyparallel.error import RemoteError

        from . import rank as rank_side

        try:
            frames = self._client[self._engine_ids[rank]].apply_sync(rank_side.pickle_on_cpu, names)
        except RemoteError as error:
            raise PullError(NOT_DEFINED_ON_RANK.format(error=error.evalue, rank=rank)) from None
        try:
            return rank_side.unpickle_pulled(frames)
        except Exception as error:  # the rank is fine: only this notebook cannot load the values
            raise PullError(NOT_LOADABLE.format(rank=rank, error=error)) from error

    def dead_ranks(self) -> list[RankDeath]:
        dead = []
        for info in self.ranks:
            process = self._rank_process(info.pid)
            if process is not None and _is_alive(process):
                continue
            status = self._exit_status(process) if process is not None else None
            dead.append(RankDeath(info.rank, info.pid, describe_exit(status)))
        return dead

    def _rank_process(self, pid: int) -> psutil.Process | None:
        """ipyparallel's handle on the engine process `pid` (the one its watcher reaps)."""
        for engine_set in self._cluster.engines.values() if self._cluster is not None else ():
            for launcher in engine_set.launchers.values():
                if launcher.process is not None and launcher.process.pid == pid:
                    return launcher.process
        return None

    @staticmethod
    def _exit_status(process: psutil.Process) -> int | None:
        """The exit status of an ended engine process, if it can still be known."""
        # ipyparallel's watcher thread reaps its engines, and psutil keeps the status it got on
        # the shared Process object. Reaping here too would race it (the loser gets no status),
        # so wait for the pid to be reaped, then read the kept status.
        deadline = time.monotonic() + EXIT_STATUS_WAIT_S
        while psutil.pid_exists(process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(5):
            try:
                status = process.wait(timeout=0)
            except (psutil.TimeoutExpired, psutil.NoSuchProcess):
                status = None
            if status is not None:
                return status
            time.sleep(0.02)
        return None

    def memory(self) -> list[dict]:
        from . import rank as rank_side

        return self._view.apply_sync(rank_side.memory_in_use)

    def pids(self) -> frozenset[int]:
        alive = set()
        for process in self._family():
            alive.add(process.pid)
        return frozenset(alive)

    def _family(self) -> list[psutil.Process]:
        """The processes we started and all their descendants, as far as they still run."""
        family: dict[int, psutil.Process] = {}
        for process in self._processes:
            try:
                if process.is_running():
                    family[process.pid] = process
                    for child in process.children(recursive=True):
                        family[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        return [p for p in family.values() if _is_alive(p)]

    def stop(self) -> None:
        """Stop every process we started; those that linger past a grace period are killed."""
        self._let_controller_settle()
        family = self._family()
        self._remove_rendezvous_dir()  # first: see there
        if self._view is not None and self.ranks:
            from . import rank as rank_side

            try:
                self._view.apply_async(rank_side.leave_group).get(timeout=2)
            except Exception:
                pass  # best effort: the processes are stopped below either way
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.log.setLevel(logging.ERROR)  # see `_stop_local`
        # The ranks have left the group: end them (and the nannies that would otherwise
        # linger for seconds) by pid, then let ipyparallel stop its controller.
        _end_processes(family, STOP_GRACE_S)
        self._stop_local()

    def _remove_rendezvous_dir(self) -> None:
        """Remove the group's folder, first thing in a stop: a kernel ended during its shutdown
        (Jupyter waits 5 s for it) then leaves no folder."""
        if self._rendezvous_dir is not None:
            shutil.rmtree(self._rendezvous_dir, ignore_errors=True)
            self._rendezvous_dir = None

    def _let_controller_settle(self) -> None:
        """Before the controller is stopped: until it handles SIGTERM. It forks its schedulers
        first, and a SIGTERM that comes before (a start that failed, or was interrupted, at once)
        ends it alone, leaving those it forked running, ours no longer."""
        process = getattr(getattr(self._cluster, "controller", None), "process", None)
        if process is not None:
            _wait_until_stoppable(process.pid, SETTLE_S)

    def _stop_failed(self, error: Exception) -> None:
        """ipyparallel could not stop what it started: here, nothing to say (it is ended by pid)."""

    def _stop_local(self) -> None:
        """Let ipyparallel stop what it started, then end what is left of it here, by pid."""
        # Known before ipyparallel stops anything: children of a controller it ends (the
        # schedulers) are no longer ours to find.
        self._let_controller_settle()
        family = self._family()
        self._remove_rendezvous_dir()  # first: see there
        if self._cluster is not None:
            # Ranks ended on purpose exit non-zero; ipyparallel would then dump their logs.
            # The logger is ddipp's own (see `own_logger`), so this silences nothing else.
            self._cluster.log.setLevel(logging.ERROR)
            try:
                self._cluster.stop_cluster_sync()
            except Exception as error:
                self._stop_failed(error)  # anything still running here is ended below
        _end_processes([p for p in {*family, *self._family()} if _is_alive(p)], KILL_GRACE_S)
        self._cluster = self._client = self._view = None
        self._engine_ids = []
        self._processes = []
        self.ranks = []


def own_logger() -> logging.Logger:
    """ddipp's logger for ipyparallel's messages, at WARNING, printing to stderr."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stderr))
    return logger


def _free_port() -> int:
    """A port free on loopback now: MASTER_PORT for code that forms a group of its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _start_controller(cluster, folder: str) -> None:
    """Start `cluster`'s controller under `ddipp.guard`: if the kernel is SIGKILLed, the guard
    also removes what stopping the group would have removed (`folder`, the cluster file)."""
    left_behind = (folder, cluster.cluster_file)
    cluster.start_controller_sync(controller_cmd=_guarded("ipyparallel.controller", left_behind))


def _guarded(module: str, remove: tuple[str, ...] = ()) -> list[str]:
    """The command that runs `module` under `ddipp.guard`, so it ends if the kernel dies, and the
    paths in `remove` (what stopping the group removes) are removed then."""
    removed = (part for path in remove for part in ("--remove", path))
    return [sys.executable, "-m", "ddipp.guard", "--parent", str(os.getpid()), *removed, module]


def _wait_until_stoppable(pid: int, timeout: float) -> None:
    """Until process `pid` handles SIGTERM, for `timeout` seconds at most (then it is stopped as
    it is)."""
    caught = 1 << (signal.SIGTERM - 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as file:
                status = dict(line.split(":", 1) for line in file if ":" in line)
            ended = status["State"].split()[0] in ("Z", "X")
            handles = int(status["SigCgt"], 16) & caught
        except (OSError, KeyError, ValueError, IndexError):
            return  # gone (nothing of it left to miss), or no /proc to tell
        if ended or handles:
            return
        time.sleep(0.01)


def _end_processes(processes: list[psutil.Process], grace: float) -> None:
    """SIGTERM `processes`, then SIGKILL those still running after `grace` seconds."""
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, lingering = psutil.wait_procs(processes, timeout=grace)
    for process in lingering:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(lingering, timeout=grace)


def _is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie (one read of /proc: this is on every request's path)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
