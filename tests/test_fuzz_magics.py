"""Hypothesis fuzzes sequences of magics against the transition table as its model.

The same state machine drives a fake group (hundreds of sequences in seconds) and, in the
slow tier, real CPU ranks.
"""

from __future__ import annotations

import contextlib
import threading

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from ddipp.errors import DdippError, InvalidSequence, LaunchFailed, PullError, PushError
from ddipp.fsm import State, Trigger, next_state
from ddipp.magics import AutodipTransformer, DipMagics
from ddipp.session import DipSession
from tests.fakes import FakeProcessTable, FakeRanks
from tests.processes import descendants_alive, sigkill_and_wait

VALID_STARTS = ["-n 1 -a torch", "-n 2 -a torch", "-n 3 -a none", "-n 2 -a torch --verbose False"]
INVALID_STARTS = [
    "-n 0",
    "-n two -a torch",
    "-n 2 -a nosuch",
    "-g 99 -a torch",
    "-n 2 --backend nccl",
    "--bogus",
    "-n 2 -g 0",
    "--kill -n 2",
    "--kill --restart",
    "-n 2 -t -1",
]
DOCUMENTED_ERRORS = (UsageError, DdippError)
LOCAL_VALUES = {"a": 1, "b": [1, 2, 3], "c": {"k": "v"}}
# Every call of the fake group that can meet a fault, and the magics that run into them.
FAULTY_CALLS = ["start", "run_setup", "submit", "push", "pull", "release", "reform", "stop", "memory"]
MAGICS_UNDER_FAULT = {
    "start": ("makedip", "-n 2 -a torch"),
    "kill": ("makedip", "--kill"),
    "restart": ("makedip", "--restart"),
    "push": ("dip", "--push a b"),
    "pull": ("dip", "--pull a"),
    "cell": ("dip", None),
    "cell that breaks the group": ("dip", None),
    "status": ("dipstatus", ""),
}
STABLE_STATES = (State.IDLE, State.PATCHED, State.FAILED)


def make_shell() -> InteractiveShell:
    shell = InteractiveShell.instance()
    shell.user_ns.update(LOCAL_VALUES, lock=threading.Lock())
    return shell


class MagicSequences(RuleBasedStateMachine):
    """Rules act on the real session through IPython and on the table-driven model."""

    real = False

    def __init__(self) -> None:
        super().__init__()
        self.table = FakeProcessTable()
        self.faults_met = 0
        factory = (
            (lambda spec: __import__("ddipp.cluster").cluster.IpyparallelRanks())
            if self.real
            else (lambda spec: FakeRanks(self.table))
        )
        self.session = DipSession(cluster_factory=factory, say=lambda text: None)
        self.shell = make_shell()
        self.transformer = AutodipTransformer(self.session)
        self.shell.register_magics(DipMagics(self.shell, self.session, self.transformer))
        self.shell.input_transformers_cleanup.append(self.transformer)
        self.state = State.IDLE
        self.autodip = False
        self.remote: dict[str, object] = {}
        self.world_size = 0
        self.rank_died = False
        self.counter = 0

    # --- the model -----------------------------------------------------------------

    def notice_deaths(self) -> None:
        """Every ddipp magic first notices ranks that died: a running group fails."""
        if self.rank_died and self.state is State.PATCHED:
            self.state = State.FAILED
            self.autodip = False
        self.rank_died = False

    def expect(self, trigger: Trigger, action, on_success) -> None:
        self.notice_deaths()
        allowed = next_state(self.state, trigger) is not None
        note(f"{trigger.value} in {self.state.value}: {'allowed' if allowed else 'rejected'}")
        if not allowed:
            with pytest.raises(InvalidSequence):
                action()
            return
        action()
        on_success()

    # --- rules -----------------------------------------------------------------------

    @rule(flags=st.sampled_from(VALID_STARTS))
    def start(self, flags: str) -> None:
        def started() -> None:
            self.state = State.PATCHED
            self.remote = {}
            self.world_size = int(flags.split()[1])

        self.expect(Trigger.START, lambda: self.shell.run_line_magic("makedip", flags), started)

    @rule(flags=st.sampled_from(INVALID_STARTS))
    def start_with_bad_flags(self, flags: str) -> None:
        self.notice_deaths()
        with pytest.raises(DOCUMENTED_ERRORS):
            self.shell.run_line_magic("makedip", flags)

    @precondition(lambda self: not self.real)
    @rule()
    def start_that_fails(self) -> None:
        self.table.fail_next_start = True
        self.notice_deaths()
        if next_state(self.state, Trigger.START) is None:
            with pytest.raises(InvalidSequence):
                self.shell.run_line_magic("makedip", "-n 2 -a torch")
            self.table.fail_next_start = False
            return
        with pytest.raises(LaunchFailed):
            self.shell.run_line_magic("makedip", "-n 2 -a torch")
        self.state = State.IDLE

    @rule()
    def kill(self) -> None:
        def killed() -> None:
            self.state = State.IDLE
            self.remote = {}
            self.autodip = False

        self.expect(Trigger.KILL, lambda: self.shell.run_line_magic("makedip", "--kill"), killed)

    @rule()
    def restart(self) -> None:
        def restarted() -> None:
            self.state = State.PATCHED
            self.remote = {}

        self.expect(Trigger.RESTART, lambda: self.shell.run_line_magic("makedip", "--restart"), restarted)

    @rule(names=st.lists(st.sampled_from([*LOCAL_VALUES, "undefined_name", "lock"]), min_size=1, max_size=3))
    def push(self, names: list[str]) -> None:
        bad = [n for n in names if n not in LOCAL_VALUES]
        self.notice_deaths()
        run = lambda: self.shell.run_line_magic("dip", "--push " + " ".join(names))  # noqa: E731
        if next_state(self.state, Trigger.RUN) is None:
            with pytest.raises(InvalidSequence):
                run()
        elif bad:
            with pytest.raises(PushError):
                run()
        else:
            run()
            self.remote.update({n: LOCAL_VALUES[n] for n in names})

    @rule(name=st.sampled_from([*LOCAL_VALUES, "v", "never_defined"]), rank=st.integers(0, 2))
    def pull(self, name: str, rank: int) -> None:
        self.notice_deaths()
        self.shell.user_ns.pop("v", None)
        run = lambda: self.shell.run_line_magic("dip", f"--pull {name} --rank {rank}")  # noqa: E731
        if next_state(self.state, Trigger.RUN) is None:
            with pytest.raises(InvalidSequence):
                run()
        elif rank >= self.world_size:
            with pytest.raises(InvalidSequence):
                run()
        elif name not in self.remote:
            with pytest.raises(PullError):
                run()
        else:
            run()
            assert self.shell.user_ns[name] == self.remote[name]
        self.shell.user_ns.update(LOCAL_VALUES)

    @rule(raises=st.booleans())
    def cell(self, raises: bool) -> None:
        self.counter += 1
        value = self.counter
        code = f"v = {value}\n" + ("raise ValueError('planned')\n" if raises else "")
        self.notice_deaths()
        run = lambda: self.shell.run_cell_magic("dip", "--quiet", code)  # noqa: E731
        if next_state(self.state, Trigger.RUN) is None:
            with pytest.raises(InvalidSequence):
                run()
            return
        if raises:
            with pytest.raises(DdippError):
                run()
        else:
            run()
        self.remote["v"] = value

    @rule(
        flags=st.sampled_from(["", "--quiet", "--see all", "--see 0", "--see 7", "--timeout 30", "--bogus"])
    )
    def autodip_on(self, flags: str) -> None:
        if flags == "--bogus":
            self.notice_deaths()
            with pytest.raises(UsageError):
                self.shell.run_line_magic("autodip", f"on {flags}")
            return

        def turned_on() -> None:
            if flags == "--see 7":
                raise AssertionError("--see 7 names no rank of these groups and must be rejected")
            self.autodip = True

        action = lambda: self.shell.run_line_magic("autodip", f"on {flags}")  # noqa: E731
        if flags == "--see 7" and next_state(self.state, Trigger.RUN) is not None:
            self.notice_deaths()
            if self.state is State.PATCHED:
                with pytest.raises(InvalidSequence, match="rank 7 does not exist"):
                    action()
                return
        self.expect(Trigger.RUN, action, turned_on)

    @rule()
    def autodip_off(self) -> None:
        self.notice_deaths()
        self.shell.run_line_magic("autodip", "off")
        self.autodip = False

    @rule(local_marker=st.booleans())
    def plain_cell(self, local_marker: bool) -> None:
        self.counter += 1
        self.shell.user_ns.pop("marker", None)
        code = ("#dip_locally\n" if local_marker else "") + f"marker = {self.counter}\n"
        goes_remote = self.autodip and not local_marker
        if goes_remote:  # a local cell touches no ddipp magic, so notices nothing
            self.notice_deaths()
        outcome = self.shell.run_cell(code, store_history=False)
        note(f"plain cell {'remote' if goes_remote else 'local'}: {code!r}")
        if not goes_remote:
            assert outcome.success
            assert self.shell.user_ns["marker"] == self.counter
        elif self.state is not State.PATCHED:
            assert isinstance(outcome.error_in_exec, InvalidSequence)
        else:
            assert outcome.success, outcome.error_in_exec
            assert "marker" not in self.shell.user_ns
            self.remote["marker"] = self.counter

    @rule()
    def status(self) -> None:
        self.notice_deaths()
        self.shell.run_line_magic("dipstatus", "")

    @precondition(lambda self: not self.real)
    @rule(
        call=st.sampled_from(FAULTY_CALLS),
        interrupt=st.booleans(),
        magic=st.sampled_from(sorted(MAGICS_UNDER_FAULT)),
    )
    def a_magic_meets_a_fault(self, call: str, interrupt: bool, magic: str) -> None:
        """Any call of the group may raise an error or KeyboardInterrupt: whatever happens, the
        group ends in a state the table can leave, and a push is all or nothing."""
        self.notice_deaths()
        self.table.faults = {call: KeyboardInterrupt() if interrupt else RuntimeError(f"{call} broke")}
        name, line = MAGICS_UNDER_FAULT[magic]
        cluster_before = self.session.cluster
        self.counter += 1
        before = [dict(ns) for ns in cluster_before.namespaces] if cluster_before is not None else []
        note(f"{magic} meets a fault in {call} ({'interrupt' if interrupt else 'error'})")
        with contextlib.suppress(KeyboardInterrupt, RuntimeError, *DOCUMENTED_ERRORS):
            if name == "dip" and line is None:
                breaks = magic == "cell that breaks the group"
                code = f"v = {self.counter}\n" + ("break_group()\n" if breaks else "")
                self.shell.run_cell_magic("dip", "--quiet", code)
            else:
                self.shell.run_line_magic(name, line)
        fired = call not in self.table.faults
        self.table.faults.clear()
        note(f"fault {'fired' if fired else 'did not fire'}; state {self.session.state.value}")
        self.faults_met += fired
        # The outcome is the session's to choose among the table's stable states; adopt it.
        assert self.session.state in STABLE_STATES, self.session.state
        self.state = self.session.state
        self.autodip = self.session.autodip.is_on
        if self.session.cluster is not cluster_before:
            self.remote = {}
            self.world_size = len(self.session.cluster.ranks) if self.session.cluster else 0
        elif magic == "push" and self.state is State.PATCHED:
            after = [{k: ns.get(k) for k in LOCAL_VALUES} for ns in self.session.cluster.namespaces]
            kept = [{k: ns.get(k) for k in LOCAL_VALUES} for ns in before]
            pushed = [
                {k: (LOCAL_VALUES[k] if k in "ab" else ns.get(k)) for k in LOCAL_VALUES} for ns in before
            ]
            assert after == kept or after == pushed, "a push is all or nothing on every rank"
            if after == pushed:
                self.remote.update(a=LOCAL_VALUES["a"], b=LOCAL_VALUES["b"])
        elif magic.startswith("cell") and self.state is State.PATCHED:
            self.remote.pop("v", None)  # the cell may or may not have run before the fault
            for namespace in self.session.cluster.namespaces:
                namespace.pop("v", None)

    @precondition(lambda self: self.state is State.PATCHED and not self.rank_died)
    @rule(rank=st.integers(0, 2))
    def a_rank_dies(self, rank: int) -> None:
        info = self.session.cluster.ranks[rank % self.world_size]
        if self.real:
            sigkill_and_wait(info.pid)
        else:
            self.table.kill(info.pid)
        self.rank_died = True

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def the_state_matches_the_model(self) -> None:
        assert self.session.state is self.state

    @invariant()
    def the_state_is_one_the_table_can_leave(self) -> None:
        assert self.session.state in STABLE_STATES
        assert self.session.state is State.IDLE or next_state(self.session.state, Trigger.KILL)

    @invariant()
    def processes_exist_exactly_while_a_group_does(self) -> None:
        has_group = self.state in (State.PATCHED, State.FAILED)
        assert (self.session.cluster is not None) == has_group
        if self.real:
            if not has_group:
                assert descendants_alive() == []
        else:
            owned = self.session.cluster.pids() if has_group else frozenset()
            assert self.table.alive == owned
            assert bool(owned) == has_group

    @invariant()
    def autodip_matches_the_model_and_needs_a_group(self) -> None:
        assert self.session.autodip.is_on == self.autodip
        if self.autodip:
            assert self.state is State.PATCHED

    @invariant()
    def every_rank_holds_what_was_sent(self) -> None:
        if self.real or self.state is not State.PATCHED:
            return
        for namespace in self.session.cluster.namespaces:
            for name, value in self.remote.items():
                assert namespace[name] == value

    def teardown(self) -> None:
        self.shell.input_transformers_cleanup.remove(self.transformer)
        self.session.shutdown()
        if self.real:
            assert descendants_alive() == []


class RealMagicSequences(MagicSequences):
    real = True


TestMagicSequencesOnAFakeGroup = MagicSequences.TestCase
TestMagicSequencesOnAFakeGroup.settings = settings(
    max_examples=300,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestMagicSequencesOnRealRanks = pytest.mark.slow(RealMagicSequences.TestCase)
TestMagicSequencesOnRealRanks.settings = settings(
    max_examples=4,
    stateful_step_count=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


class ManyMagicSequences(MagicSequences):
    """The same rules and faults, many more sequences (the slow tier)."""


TestTenThousandSequencesOnAFakeGroup = pytest.mark.slow(ManyMagicSequences.TestCase)
TestTenThousandSequencesOnAFakeGroup.settings = settings(
    max_examples=10_000,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
