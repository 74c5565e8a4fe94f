"""The orchestrator: one DDP group per notebook, every request checked against the lifecycle."""

from __future__ import annotations

import functools
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from .apps import get_app
from .cluster import CellRun, IpyparallelRanks, RankCluster, RankDeath, RankInfo
from .errors import CellTimeout, GroupFailed, InvalidSequence, LaunchFailed, PullError, PushError
from .fsm import (
    GROUP_TRIGGERS_THAT_END_AUTODIP,
    TRANSIENT_STATES,
    Autodip,
    GroupLifecycle,
    State,
    Trigger,
)
from .hosts import AttachedRanks
from .launchers import BatchRanks, SshRanks
from .router import OutputRouter, RankMessage, RankResult, Sink
from .spec import GroupSpec

# The cluster wakes the loop when a cell ends; polling only bounds deadline checks.
POLL_S = 0.1
# How long a rank that raised may wait for the others before it is taken out of the group.
RELEASE_GRACE_S = 0.5
INTERRUPT_GRACE_S = 2.0
# How many times a stop is tried when something (an interrupt, an error) breaks into it.
STOP_ATTEMPTS = 3

UNDEFINED_NAMES = "%dip --push: {names} not defined in the notebook; nothing was pushed"
BAD_RANK = "{magic}: rank {rank} does not exist; this group has ranks 0..{last}"
RANK_DIED = "rank {rank} (pid {pid}) died: {how}"
ATTACHED_RANK_DIED = "rank {rank} (pid {pid} on {host}) died: {how}"
ATTACHED = (
    "  engines: attached from {path}, not started by ddipp (%makedip --kill leaves them running; "
    "--restart forms the group again on the engines still registered)"
)
STARTED_OVER_SSH = (
    "  engines on {host}: {count}, started by ddipp over ssh (ipyparallel's SSH launcher); "
    "%makedip --kill stops them and removes their files there"
)
STARTED_BY_LAUNCHER = (
    "  engines on {host}: {count}, started by ddipp with ipyparallel's {launcher} launcher; "
    "%makedip --kill stops them"
)
GROUP_BROKEN_ADVICE = "Use %makedip --restart for a fresh group, or %makedip --kill."
CELL_TIMED_OUT = "%%dip: the cell ran past --timeout {timeout:g} s on the ranks"
INTERRUPT_IGNORED = "the ranks did not stop within {grace:g} s of the interrupt"
REFORM_FAILED = "the process group could not be re-formed after rank(s) {ranks} failed: {error}"
GROUP_REFORMED = (
    "ddipp: the process group broke (rank(s) {ranks} failed); it was formed again on every rank. "
    "Variables on the ranks are kept; DDP models and groups built before must be built again "
    "(wrap the model in DistributedDataParallel again)"
)
STALE_GROUP = (
    "ddipp: rank(s) {ranks} used a DDP model or process group built before the group was formed "
    "again; build it again (wrap the model in DistributedDataParallel again)"
)
INTERRUPTED = "{magic} was interrupted"
BROKE = "{magic} failed: {error}"
STOP_FAILED = "ddipp: stopping the group raised {error!r}; processes still running: {pids}"
AUTODIP_WITHOUT_GROUP = "ddipp: autodip is off: no group is running (state: {state})"
AUTODIP_ENDED = {
    Trigger.KILL: "ddipp: autodip is off: the group was stopped",
    Trigger.GROUP_BROKEN: "ddipp: autodip is off: the group failed",
    Trigger.LAUNCH_FAILED: "ddipp: autodip is off: the group did not start again",
    Trigger.PATCH_FAILED: "ddipp: autodip is off: the group did not start again",
}


CUDA_MEMORY = (
    "; cuda {cuda_allocated_mb:.0f} MB allocated, {cuda_reserved_mb:.0f} MB reserved; "
    "device {device_used_mb:.0f} of {device_total_mb:.0f} MB in use"
)


@dataclass(frozen=True, slots=True)
class Status:
    """What `%dipstatus` reports."""

    state: State
    spec: GroupSpec | None
    ranks: tuple[RankInfo, ...]
    dead: frozenset[int]
    reason: str
    memory: tuple[dict, ...] = ()

    def rank_table(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        """Column names and one row per rank, as text: the plain and the HTML view both show these."""
        header = ("rank", "engine", "pid", "host", "device", "alive", "memory")
        rows = []
        for info in self.ranks:
            alive = "no" if info.rank in self.dead else "yes"
            rows.append(
                (
                    str(info.rank),
                    str(info.engine_id),
                    str(info.pid),
                    info.host,
                    info.device,
                    alive,
                    self._memory_of(info.rank),
                )
            )
        return header, rows

    def group_lines(self) -> list[str]:
        """What the report says above the table: the group, and whose engines they are."""
        if self.spec is None or not self.ranks:
            return []
        lines = [f"group: {self.spec.describe()}"]
        if self.spec.attach is not None:
            lines.append(ATTACHED.format(path=self.spec.attach).strip())
        for host, count in self.spec.hosts:
            lines.append(STARTED_OVER_SSH.format(host=host, count=count).strip())
        if self.spec.engines is not None:
            per_host = Counter(info.host for info in self.ranks)
            for host, count in per_host.items():
                line = STARTED_BY_LAUNCHER.format(host=host, count=count, launcher=self.spec.engines)
                lines.append(line.strip())
        return lines

    def render(self) -> str:
        """The report as plain text (what a terminal shows)."""
        lines = [f"ddipp: state {self.state.value}"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        if self.spec is not None and self.ranks:
            lines.extend(f"  {line}" for line in self.group_lines())
            header, rows = self.rank_table()
            widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]
            for row in (header, *rows):
                lines.append("  " + "  ".join(map(str.ljust, row, widths)).rstrip())
        return "\n".join(lines)

    def _memory_of(self, rank: int) -> str:
        memory = self.memory[rank] if rank < len(self.memory) else {}
        used = f"{memory['rss_mb']:.0f} MB" if "rss_mb" in memory else "-"
        if "cuda_allocated_mb" in memory:
            # What nvidia-smi counts: torch's cache (reserved) and every process on the GPU.
            used += CUDA_MEMORY.format(**memory)
        return used


def _settles(magic: str) -> Callable:
    """Whatever breaks into the decorated request (an error, any number of interrupts), the
    group ends in a state the table can leave, with the reason recorded."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def settled(self: DipSession, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except BaseException as error:
                if self.state in TRANSIENT_STATES:
                    reason = INTERRUPTED if isinstance(error, KeyboardInterrupt) else BROKE
                    self._settle(reason.format(magic=magic, error=error))
                # e.g. a restart interrupted between stopping the old group and starting anew
                if self.state not in (State.PATCHED, State.RUNNING) and self.autodip.end_with_group():
                    self._say(AUTODIP_WITHOUT_GROUP.format(state=self.state.value))
                raise

        return settled

    return decorate


class DipSession:
    """Owns the lifecycle machine and the group's processes; the magics call into it."""

    def __init__(
        self,
        cluster_factory: Callable[[GroupSpec], RankCluster] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.lifecycle = GroupLifecycle()
        self.spec: GroupSpec | None = None
        self._cluster_factory = cluster_factory or ranks_for
        # What %makedip asked for; `spec` is the group it gave (attached: every engine counted).
        self._asked: GroupSpec | None = None
        self._cluster: RankCluster | None = None
        self._say = say
        self.autodip = Autodip()
        self.lifecycle.listeners.append(self._report_step)
        self.lifecycle.listeners.append(self._end_autodip_with_group)
        self.lifecycle.listeners.append(self._undo_app_patches)

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def cluster(self) -> RankCluster | None:
        return self._cluster

    # --- group lifecycle -------------------------------------------------------------

    @_settles("%makedip")
    def start(self, spec: GroupSpec, magic: str = "%makedip") -> None:
        """Start a group as `spec` says; on failure nothing is left running and state is idle."""
        self.check_health()
        self.lifecycle.require(Trigger.START, magic)
        self.spec = self._asked = spec
        self.lifecycle.fire(Trigger.START)
        began = time.perf_counter()
        self._cluster = self._cluster_factory(spec)
        try:
            ranks = self._cluster.start(spec)
        except BaseException as error:
            interrupted = self._stop_processes()
            self.lifecycle.fire(Trigger.LAUNCH_FAILED)
            _raise_launch_failure(interrupted or error, "")
        if not spec.devices:  # attached to every registered engine: now it is known how many
            self.spec = replace(spec, devices=(None,) * len(ranks))
        self.lifecycle.fire(Trigger.GROUP_FORMED)
        try:
            setup = get_app(spec.app).rank_setup
            if setup:
                self._cluster.run_setup(setup)
        except BaseException as error:
            interrupted = self._stop_processes()
            self.lifecycle.fire(Trigger.PATCH_FAILED)
            _raise_launch_failure(interrupted or error, f"app {spec.app!r} failed to set up the ranks: ")
        self.lifecycle.fire(Trigger.PATCHES_APPLIED)
        if spec.verbose:
            self._say(f"ddipp: {self.spec.describe()} ready in {time.perf_counter() - began:.1f} s")

    @_settles("%makedip --kill")
    def kill(self, magic: str = "%makedip --kill") -> None:
        """Stop the group and every process it has, from any state that has them; back to idle."""
        self.check_health()
        self.lifecycle.require(Trigger.KILL, magic)
        self.lifecycle.fire(Trigger.KILL)
        interrupted = self._stop_processes()
        self.lifecycle.fire(Trigger.DRAINED)
        if interrupted is not None:
            raise interrupted

    @_settles("%makedip --restart")
    def restart(self, magic: str = "%makedip --restart") -> None:
        """Stop the group and start a fresh one with the same settings."""
        self.check_health()
        self.lifecycle.require(Trigger.RESTART, magic)
        spec = self._asked
        self.lifecycle.fire(Trigger.RESTART)
        interrupted = self._stop_processes()
        self.lifecycle.fire(Trigger.DRAINED)
        if interrupted is not None:
            raise interrupted
        self.start(spec, magic)

    def shutdown(self) -> None:
        """Stop whatever runs, from any state (extension unload, interpreter exit)."""
        if self.state is State.IDLE:
            self._stop_processes()
            return
        if self.lifecycle.allows(Trigger.KILL):
            self.lifecycle.fire(Trigger.KILL)
        self._settle("the extension was unloaded")

    def _settle(self, reason: str) -> None:
        """Leave a transient state by the table's own rows: a request was broken into.

        Each step may itself be interrupted (a user pressing stop again): it is then retried,
        so that the group always ends idle, patched or failed.
        """
        for _ in range(4 * STOP_ATTEMPTS):
            try:
                state = self.state
                if state is State.RUNNING:
                    self.lifecycle.fire(Trigger.GROUP_BROKEN, reason=reason)
                elif state in (State.LAUNCHING, State.NCCL_READY, State.DRAINING):
                    self._stop_processes()
                    ended = {
                        State.LAUNCHING: Trigger.LAUNCH_FAILED,
                        State.NCCL_READY: Trigger.PATCH_FAILED,
                        State.DRAINING: Trigger.DRAINED,
                    }[state]
                    self.lifecycle.fire(ended)
                else:
                    return
            except KeyboardInterrupt:
                continue

    def _stop_processes(self) -> KeyboardInterrupt | None:
        """Stop the group's processes, retrying through interrupts and errors; the first
        interrupt that broke in, for the caller to raise once the state is settled."""
        cluster, self._cluster = self._cluster, None
        if cluster is None:
            return None
        interrupted: KeyboardInterrupt | None = None
        failure: Exception | None = None
        for _ in range(STOP_ATTEMPTS):
            try:
                cluster.stop()
            except KeyboardInterrupt as error:
                interrupted = interrupted or error
                continue
            except Exception as error:
                failure = error
                continue
            failure = None
            break
        if failure is not None:
            self._say(STOP_FAILED.format(error=failure, pids=sorted(cluster.pids()) or "none"))
        return interrupted

    # --- health ------------------------------------------------------------------------

    def check_health(self) -> None:
        """Notice ranks that died since the last request: the group becomes `failed`."""
        if self._cluster is None or self.state not in (State.PATCHED, State.RUNNING):
            return
        dead = self._cluster.dead_ranks()
        if dead:
            self.lifecycle.fire(Trigger.GROUP_BROKEN, reason=_death_reason(dead))

    def _begin(self, magic: str) -> RankCluster:
        self.check_health()
        self.lifecycle.require(Trigger.RUN, magic)
        self.lifecycle.fire(Trigger.RUN)
        assert self._cluster is not None
        return self._cluster

    def _reform_after(self, released: set[int]) -> str:
        """Re-form the process group if ranks were released from it; the reason if that failed."""
        if not released or self._cluster is None:
            return ""
        dead = self._cluster.dead_ranks()
        if dead:  # a rank died: nothing to re-form, the group has failed
            return _death_reason(dead)
        ranks = ", ".join(map(str, sorted(released)))
        try:
            self._cluster.reform()
        except Exception as error:
            return REFORM_FAILED.format(ranks=ranks, error=error)
        self._say(GROUP_REFORMED.format(ranks=ranks))
        return ""

    def _fail_request(self, magic: str, error: Exception) -> NoReturn:
        """A request broke on the ranks: the group fails, with a rank's death as the reason if any."""
        assert self._cluster is not None
        dead = self._cluster.dead_ranks()
        reason = _death_reason(dead) if dead else f"{magic} failed on the ranks: {error}"
        self._end(broken=reason)
        raise GroupFailed(f"{reason}. {GROUP_BROKEN_ADVICE}") from error

    def _end(self, broken: str = "") -> None:
        if broken:
            self.lifecycle.fire(Trigger.GROUP_BROKEN, reason=broken)
            return
        self.lifecycle.fire(Trigger.CELL_DONE)
        self.check_health()

    # --- namespaces --------------------------------------------------------------------

    @_settles("%dip --push")
    def push(self, names: Iterable[str], namespace: MutableMapping[str, Any]) -> None:
        """Send notebook variables to every rank: all of them, or none if one cannot go or
        cannot be loaded on some rank (the group stays usable)."""
        names = list(dict.fromkeys(names))
        self.check_health()
        self.lifecycle.require(Trigger.RUN, "%dip --push")
        missing = [name for name in names if name not in namespace]
        if missing:
            raise PushError(UNDEFINED_NAMES.format(names=", ".join(map(repr, missing))))
        cluster = self._cluster
        assert cluster is not None
        packed = cluster.pack({name: namespace[name] for name in names})
        cluster = self._begin("%dip --push")
        try:
            cluster.push(packed)
        except (PushError, KeyboardInterrupt):
            self._end()  # no rank kept any of it: the group is as it was
            raise
        except Exception as error:
            self._fail_request("%dip --push", error)
        self._end()

    @_settles("%dip --pull")
    def pull(self, names: Iterable[str], rank: int, namespace: MutableMapping[str, Any]) -> None:
        """Fetch variables from `rank` into the notebook: all of them, or none."""
        names = list(dict.fromkeys(names))
        self.check_health()
        self.lifecycle.require(Trigger.RUN, "%dip --pull")
        assert self.spec is not None
        if not 0 <= rank < self.spec.world_size:
            raise InvalidSequence(
                BAD_RANK.format(magic="%dip --pull", rank=rank, last=self.spec.world_size - 1)
            )
        cluster = self._begin("%dip --pull")
        try:
            values = cluster.pull(names, rank)
        except (PullError, KeyboardInterrupt):
            self._end()  # a pull changes nothing on the ranks
            raise
        except Exception as error:
            self._fail_request("%dip --pull", error)
        self._end()
        namespace.update(zip(names, values, strict=True))

    # --- cells -------------------------------------------------------------------------

    @_settles("%%dip")
    def run_cell(
        self,
        code: str,
        sink: Sink,
        see: frozenset[int] | None = None,
        quiet: bool = False,
        timeout: float | None = None,
        cell_number: int | None = None,
    ) -> RankResult | None:
        """Run `code` on every rank, routing output live; raise if any rank raised.

        `cell_number` is the notebook's execution count: the ranks run the cell under it, so
        their tracebacks name the notebook's cell.
        """
        self.lifecycle.require(Trigger.RUN, "%%dip")
        assert self.spec is not None
        self._check_ranks(see, "%%dip --see")
        world_size = self.spec.world_size
        shown = frozenset(range(world_size)) if see is None else see
        cluster = self._begin("%%dip")
        router = OutputRouter(sink, shown, quiet)
        messages: queue.SimpleQueue[RankMessage] = queue.SimpleQueue()
        released: set[int] = set()

        def release(ranks: set[int]) -> None:
            if ranks - released:
                cluster.release(sorted(ranks - released))
                released.update(ranks)

        run = cluster.submit(code, messages.put, cell_number)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            _show_late_output(cluster, router)
            finished = _pump(run, messages, router, deadline, release, world_size)
        except KeyboardInterrupt:
            stopped = _wait_for_interrupted(run, messages, router, release, world_size)
            broken = INTERRUPT_IGNORED.format(grace=INTERRUPT_GRACE_S)
            if stopped:
                broken = _through_interrupts(lambda: self._reform_after(released))
            self._end(broken=broken)
            raise
        if not finished:
            self._end(broken=CELL_TIMED_OUT.format(timeout=timeout))
            raise CellTimeout(f"{CELL_TIMED_OUT.format(timeout=timeout)}. {GROUP_BROKEN_ADVICE}")
        _show_late_output(cluster, router)  # of earlier cells, arrived while this one ran
        for rank, (ename, evalue, traceback) in run.failures().items():
            if rank not in router.failed_ranks:
                router.add_failure(rank, ename, evalue, traceback)
        for note in run.notes():
            self._say(note)
        error = router.error()
        dead = cluster.dead_ranks() if error is not None else []
        if dead:  # a rank that died shows up as a failure: say which, and how it ended
            self._end(broken=_death_reason(dead))
            raise GroupFailed(f"{self.lifecycle.reason}. {GROUP_BROKEN_ADVICE}")
        stale: list[int] = []
        if error is not None and not released:
            # Whether the group still works is asked of the group, not read from messages.
            if cluster.group_healthy():
                stale = cluster.stale_group_ranks(sorted(router.failed_ranks))
            else:
                released = set(range(world_size))
        self._end(broken=self._reform_after(released))
        if self.state is State.FAILED:
            raise GroupFailed(f"{self.lifecycle.reason}. {GROUP_BROKEN_ADVICE}")
        if stale:
            self._say(STALE_GROUP.format(ranks=", ".join(map(str, stale))))
        if error is not None:
            raise error
        return None if quiet else router.result

    # --- inspection --------------------------------------------------------------------

    def status(self) -> Status:
        """The state, the group and each rank; notices dead ranks first."""
        self.check_health()
        cluster = self._cluster
        ranks = tuple(cluster.ranks) if cluster is not None else ()
        dead = frozenset(d.rank for d in cluster.dead_ranks()) if cluster is not None else frozenset()
        memory: tuple[dict, ...] = ()
        if cluster is not None and self.state is State.PATCHED and not dead:
            try:
                memory = tuple(cluster.memory())
            except Exception as error:  # the status is still worth showing
                self._say(f"ddipp: could not read the ranks' memory: {error}")
        return Status(self.state, self.spec, ranks, dead, self.lifecycle.reason, memory)

    # --- autodip -------------------------------------------------------------------------

    def autodip_on(self, flags: str, see: frozenset[int] | None) -> None:
        """Run every plain cell as `%%dip flags` from now on; needs a running group."""
        self.check_health()
        self.lifecycle.require(Trigger.RUN, "%autodip on")
        self._check_ranks(see, "%autodip on --see")
        self.autodip.enable(flags)

    def autodip_off(self) -> bool:
        """Cells run in the notebook again; True if autodip was on."""
        return self.autodip.disable()

    def _undo_app_patches(self, source: State, dest: State, trigger: Trigger) -> None:
        """Leaving `patched` for good: the app's patches are undone on every rank (best effort)."""
        if source is not State.PATCHED or dest is not State.DRAINING or self._cluster is None:
            return
        teardown = get_app(self.spec.app).rank_teardown if self.spec is not None else ""
        if teardown:
            try:
                self._cluster.run_setup(teardown)
            except Exception as error:  # the ranks are stopped next in any case
                self._say(f"ddipp: could not undo the {self.spec.app} patches on the ranks: {error}")

    def _end_autodip_with_group(self, source: State, dest: State, trigger: Trigger) -> None:
        if trigger in GROUP_TRIGGERS_THAT_END_AUTODIP and self.autodip.end_with_group():
            self._say(AUTODIP_ENDED[trigger])

    def _check_ranks(self, ranks: frozenset[int] | None, magic: str) -> None:
        assert self.spec is not None
        for rank in sorted(ranks or ()):
            if rank >= self.spec.world_size:
                raise InvalidSequence(BAD_RANK.format(magic=magic, rank=rank, last=self.spec.world_size - 1))

    def _report_step(self, source: State, dest: State, trigger: Trigger) -> None:
        if self.spec is not None and self.spec.verbose and trigger not in (Trigger.RUN, Trigger.CELL_DONE):
            self._say(f"ddipp: {source.value} -> {dest.value} ({trigger.value})")


def ranks_for(spec: GroupSpec) -> RankCluster:
    """The rank processes for `spec`: engines attached to, started by a batch system or over ssh,
    or started here."""
    if spec.attach is not None:
        return AttachedRanks()
    if spec.engines is not None:
        return BatchRanks()
    return SshRanks() if spec.hosts else IpyparallelRanks()


def _raise_launch_failure(error: BaseException, prefix: str) -> NoReturn:
    """Re-raise what broke a start: interrupts as they are, errors as `LaunchFailed`."""
    if isinstance(error, LaunchFailed) and not prefix:
        raise error
    if isinstance(error, Exception):
        raise LaunchFailed(f"{prefix or 'the group could not start: '}{error}") from error
    raise error


def _show_late_output(cluster: RankCluster, router: OutputRouter) -> None:
    for message in cluster.late_output():
        router.feed(message)


def _death_reason(dead: list[RankDeath]) -> str:
    return "; ".join(
        (ATTACHED_RANK_DIED if d.host else RANK_DIED).format(rank=d.rank, pid=d.pid, how=d.how, host=d.host)
        for d in dead
    )


def _wait_for_interrupted(
    run: CellRun,
    messages: queue.SimpleQueue,
    router: OutputRouter,
    release: Callable[[set[int]], None],
    world_size: int,
) -> bool:
    """After an interrupt, route output until the ranks stop (True) or the grace ends (False).

    Further interrupts (a user pressing stop again) are passed on to the ranks, not to the
    notebook: the first one is already on its way out.
    """
    deadline = time.monotonic() + INTERRUPT_GRACE_S
    return _through_interrupts(
        lambda: (run.interrupt(), _pump(run, messages, router, deadline, release, world_size))[1]
    )


def _through_interrupts(step: Callable[[], Any]) -> Any:
    """Run `step` to its end; an interrupt that breaks into it (the user pressing stop again
    while the first one is being handled) runs it again instead of escaping half-way."""
    while True:
        try:
            return step()
        except KeyboardInterrupt:
            continue


def _pump(
    run: CellRun,
    messages: queue.SimpleQueue,
    router: OutputRouter,
    deadline: float | None,
    release: Callable[[set[int]], None],
    world_size: int,
) -> bool:
    """Route messages until `run` is done (True) or `deadline` passes (False).

    A rank that has raised and finished while others still run is released from the process
    group at once, so peers waiting for it in a collective fail now instead of at the
    backend's timeout.
    """
    waiting_since: float | None = None
    while True:
        if run.done():
            while True:
                try:
                    router.feed(messages.get_nowait())
                except queue.Empty:
                    return True
        finished = run.finished_ranks()
        if len(finished) < world_size and run.dead_ranks():
            # Peers of a rank that is gone may wait for it in a collective: a lost host sends
            # them no "connection closed". Cut them loose; the cell then ends now.
            release(set(range(world_size)) - finished)
        failed_and_finished = router.failed_ranks & finished
        if failed_and_finished and len(finished) < world_size:
            # Others may just be finishing the same cell: give them a moment first.
            now = time.monotonic()
            waiting_since = now if waiting_since is None else waiting_since
            if now - waiting_since >= RELEASE_GRACE_S:
                release(failed_and_finished)
        if deadline is not None and time.monotonic() > deadline:
            return False
        try:
            router.feed(messages.get(timeout=POLL_S))
        except queue.Empty:
            pass
