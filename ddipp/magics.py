"""The IPython magics: parse the line, then call the session. Nothing else knows IPython's magic API."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .cells import Route, route_cell
from .display import NotebookSink
from .errors import LocalRunFailed
from .fsm import Trigger
from .report import StatusReport
from .session import DipSession
from .spec import plan_group

PUSH_OR_PULL = "%dip needs --push NAMES or --pull NAMES (and %%dip runs a cell on the ranks)"
PUSH_AND_PULL = "%dip takes --push or --pull, not both at once"
RANK_WITHOUT_PULL = "%dip --rank goes with --pull"
BAD_SEE = "--see takes 'all' or rank numbers such as 0 or 0,2, not {value!r}"
BAD_BOOL = "--verbose takes True or False, not {value!r}"
BAD_SECONDS = "--timeout must be a positive number of seconds, not {value!r}"
KILL_AND_RESTART = "%makedip takes --kill or --restart, not both"
FLAGS_WITH_STOP = (
    "%makedip --{action} takes no other flags (found {flags}); --restart reuses the group's settings"
)
# What %makedip takes to describe a group (none of them goes with --kill or --restart).
GROUP_FLAGS = ("gpus", "n", "attach", "hosts", "engines", "config", "app", "verbose", "timeout", "backend")
LOCAL_FAILED = "%%dip --to both: the local run failed, so the ranks were not run"
LOCAL_ONLY_FAILED = "%%dip --to local: the cell raised {error} (traceback above)"
AUTODIP_USAGE = "%autodip takes on [%%dip flags], off, or nothing (to show the mode), not {line!r}"


def strip_comment(line: str) -> str:
    """`line` without a trailing `# comment`: a `#` that starts a word outside quotes.

    As in a shell, `#` inside quotes or inside a word (`a#b`) is part of an argument.
    """
    quote = ""
    for position, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position].rstrip()
    return line


def parse_bool(value: str) -> bool:
    """`True`/`False` (and yes/no, 1/0) as `--verbose` takes them."""
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise UsageError(BAD_BOOL.format(value=value))


def parse_ranks(value: str) -> frozenset[int] | None:
    """`--see`: None for all ranks, else the set of rank numbers."""
    cleaned = value.strip().strip("'\"")
    if cleaned.lower() == "all":
        return None
    parts = [p for p in cleaned.replace(",", " ").split() if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise UsageError(BAD_SEE.format(value=value))
    return frozenset(int(p) for p in parts)


def parse_seconds(value: str | None) -> float | None:
    """`--timeout` for cells: a positive number of seconds, or None."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(BAD_SECONDS.format(value=value)) from None
    if not 0 < seconds < float("inf"):
        raise UsageError(BAD_SECONDS.format(value=value))
    return seconds


@magic_arguments()
@argument("--push", nargs="+", metavar="NAME", help="send these notebook variables to every rank")
@argument("--pull", nargs="+", metavar="NAME", help="fetch these variables from a rank")
@argument("--rank", type=int, default=None, help="the rank to --pull from (default 0)")
def _dip_line_flags(line):
    """%dip --push NAMES... | --pull NAMES... [--rank R]"""


@magic_arguments()
@argument(
    "--to",
    choices=("remote", "local", "both"),
    default="remote",
    help="where the cell runs: the ranks (default), the notebook, or the notebook then the ranks",
)
@argument("--see", default="0", help="whose output is shown: 'all' or ranks such as 0,2 (default 0)")
@argument("--quiet", action="store_true", help="show no output, only errors at the end")
@argument("--timeout", default=None, help="fail the cell if the ranks take longer (seconds)")
def _dip_cell_flags(line):
    """%%dip [--to remote|local|both] [--see RANKS|all] [--quiet] [--timeout S]"""


class AutodipTransformer:
    """An `input_transformers_cleanup` entry: under autodip, a plain cell becomes `%%dip flags`."""

    def __init__(self, session: DipSession) -> None:
        self.session = session
        self.suspended = False

    def __call__(self, lines: list[str]) -> list[str]:
        autodip = self.session.autodip
        if self.suspended or not autodip.is_on or route_cell(lines) is not Route.REMOTE:
            return lines
        return [f"%%dip {autodip.flags}".rstrip() + "\n", *lines]


@magics_class
class DipMagics(Magics):
    """`%makedip`, `%dip`/`%%dip`, `%autodip` and `%dipstatus`."""

    def __init__(self, shell, session: DipSession, transformer: AutodipTransformer | None = None) -> None:
        super().__init__(shell)
        self.session = session
        self.transformer = transformer or AutodipTransformer(session)

    @magic_arguments()
    @argument(
        "-g",
        "--gpus",
        default=None,
        help=(
            "'all' or GPU ids (0,1,3 or \"0 1 3\"): one rank per GPU, in this order. With --hosts "
            "or --engines, GPU ranks on those hosts, each taking GPU LOCAL_RANK of its host (-g "
            "all, with --hosts gpu-a:8,gpu-b:8) or the LOCAL_RANK-th id listed (-g 0,1 with "
            "--hosts gpu-a,gpu-b: one rank per id on every host), GPUs counted on each host"
        ),
    )
    @argument(
        "-n",
        "--n",
        dest="n",
        default=None,
        help=(
            "number of CPU ranks (gloo); with --attach, how many of the registered engines "
            "(default all); with --engines, how many ranks the launcher starts (GPU ranks with -g)"
        ),
    )
    @argument(
        "--attach",
        default=None,
        metavar="FILE",
        help=(
            "form the group on engines already running, on this host or others: FILE is the "
            "ipyparallel cluster file or client connection file of their controller. Ranks of a "
            "host are contiguous (rank 0 on the host of the first engine); --kill leaves the "
            "engines running; --restart forms the group again on the engines still registered"
        ),
    )
    @argument(
        "--hosts",
        default=None,
        metavar="HOST:RANKS,...",
        help=(
            "start ranks on other machines over ssh with ipyparallel's SSH launcher, e.g. "
            "node1:2,node2:2 (HOST as ssh takes it: an alias of your ssh config, user@host; "
            "CPU ranks, or GPU ranks with -g). "
            "Ranks of a host are contiguous, rank 0 on the first host; the controller listens "
            "on this machine's address toward the first host, encrypted (CurveZMQ); --kill "
            "stops every engine and removes their files on every host"
        ),
    )
    @argument(
        "--engines",
        default=None,
        metavar="LAUNCHER",
        help=(
            "start -n N ranks (CPU, or GPU with -g) with one of ipyparallel's launchers: slurm, "
            "pbs, sge, lsf, htcondor or mpi (tested: slurm, mpi), configured by --config (batch "
            "template, partition, engine_cmd; mpi_args for mpiexec). The controller listens, "
            "encrypted (CurveZMQ), on the address this machine's name resolves to, or "
            "c.Cluster.controller_ip; ranks of a host are contiguous (in the job's node order, or "
            "MPI's rank order); --kill stops the job or mpiexec"
        ),
    )
    @argument(
        "--config",
        default=None,
        metavar="FILE",
        help=(
            "with --hosts or --engines: an ipyparallel config file (.py or .json) for the "
            "launcher, e.g. c.SSHEngineSetLauncher.ssh_args, .remote_python (default: this "
            "python), c.SlurmEngineSetLauncher.batch_template, c.MPILauncher.mpi_args, "
            "c.Cluster.controller_ip"
        ),
    )
    @argument(
        "-a",
        "--app",
        default=None,
        help="fastai_v1, fastai, torch or none (default: the installed fastai's, else torch)",
    )
    @argument(
        "--verbose",
        nargs="?",
        const="True",
        default=None,
        help="report each lifecycle step (bare --verbose means True)",
    )
    @argument(
        "-t",
        "--timeout",
        default=None,
        help="seconds a rank waits for the others: to start, and in any collective (default 120)",
    )
    @argument("--backend", default=None, help="torch.distributed backend (nccl on GPUs, gloo on CPU)")
    @argument("--restart", action="store_true", help="stop the group and start it again as it was")
    @argument(
        "--kill",
        action="store_true",
        help="stop the group; nothing it started is left running (attached engines keep running)",
    )
    @line_magic
    def makedip(self, line: str) -> None:
        """Start, restart or stop the DDP group."""
        self.session.check_health()
        args = parse_argstring(self.makedip, strip_comment(line))
        if args.kill or args.restart:
            if args.kill and args.restart:
                raise UsageError(KILL_AND_RESTART)
            action = "kill" if args.kill else "restart"
            given = [f"--{name}" for name in GROUP_FLAGS if getattr(args, name) is not None]
            if given:
                raise UsageError(FLAGS_WITH_STOP.format(action=action, flags=", ".join(given)))
            if args.kill:
                self.session.kill()
            else:
                self.session.restart()
            return
        # Say what state forbids before looking at GPUs, apps and versions.
        self.session.lifecycle.require(Trigger.START, "%makedip")
        spec, notices = plan_group(
            gpus=args.gpus,
            n=args.n,
            app=args.app,
            backend=args.backend,
            timeout=args.timeout,
            verbose=parse_bool(args.verbose) if args.verbose is not None else False,
            attach=args.attach,
            hosts=args.hosts,
            config=args.config,
            engines=args.engines,
        )
        for notice in notices:
            print(notice)
        self.session.start(spec)

    @line_cell_magic
    def dip(self, line: str, cell: str | None = None):
        """%dip --push NAMES... | --pull NAMES... [--rank R]; %%dip [flags] runs the cell on every rank.

        %%dip [--to remote|local|both] [--see RANKS|all] [--quiet] [--timeout S]
        """
        if cell is None:
            return self._dip_line(line)
        return self._dip_cell(line, cell)

    def _dip_line(self, line: str) -> None:
        args = parse_argstring(_dip_line_flags, strip_comment(line))
        if args.push and args.pull:
            raise UsageError(PUSH_AND_PULL)
        if args.push:
            if args.rank is not None:
                raise UsageError(RANK_WITHOUT_PULL)
            self.session.push(args.push, self.shell.user_ns)
        elif args.pull:
            self.session.pull(args.pull, args.rank or 0, self.shell.user_ns)
        else:
            raise UsageError(PUSH_OR_PULL)

    def _dip_cell(self, line: str, cell: str):
        args = parse_argstring(_dip_cell_flags, strip_comment(line))
        see = parse_ranks(args.see)
        timeout = parse_seconds(args.timeout)
        if args.to == "local":
            error = self._run_locally(cell)
            if error is not None:  # the cell fails, as a local cell would: Run All stops
                raise LocalRunFailed(LOCAL_ONLY_FAILED.format(error=_describe(error)))
            return None
        if args.to == "both":  # check the group before the local half runs
            self.session.check_health()
            self.session.lifecycle.require(Trigger.RUN, "%%dip --to both")
            if self._run_locally(cell) is not None:
                raise LocalRunFailed(LOCAL_FAILED)
        return self.session.run_cell(
            cell,
            NotebookSink(),
            see=see,
            quiet=args.quiet,
            timeout=timeout,
            cell_number=_current_cell_number(self.shell),
        )

    def _run_locally(self, cell: str) -> BaseException | None:
        """Run `cell` in the notebook, as a cell of its own but without autodip; what it raised."""
        self.transformer.suspended = True
        try:
            result = self.shell.run_cell(cell, store_history=False)
        finally:
            self.transformer.suspended = False
        return result.error_before_exec or result.error_in_exec

    @line_magic
    def autodip(self, line: str) -> None:
        """%autodip on [%%dip flags] | %autodip off | %autodip: run every cell on the ranks, or not."""
        self.session.check_health()
        mode, _, flags = strip_comment(line).strip().partition(" ")
        flags = flags.strip()
        if not mode:
            print(self.session.autodip.describe())
        elif mode == "on":
            args = parse_argstring(_dip_cell_flags, flags)
            parse_seconds(args.timeout)
            self.session.autodip_on(flags, parse_ranks(args.see))
            print(f"ddipp: {self.session.autodip.describe()} (#dip_locally keeps a cell here)")
        elif mode == "off" and not flags:
            if self.session.autodip_off():
                print("ddipp: autodip is off")
        else:
            raise UsageError(AUTODIP_USAGE.format(line=line))

    @line_magic
    def dipstatus(self, line: str) -> None:
        """Show the group's state, its ranks (pid, host, device, alive, memory) and the autodip mode."""
        if strip_comment(line).strip():
            raise UsageError("%dipstatus takes no arguments")
        display(StatusReport(self.session.status(), self.session.autodip.describe()))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _current_cell_number(shell) -> int:
    """The execution count of the cell running now (`In[n]`).

    IPython stores a cell's input before running it, but increments `execution_count` before
    the cell in some versions and after it in others: the input history says which cell runs.
    """
    return max(len(shell.history_manager.input_hist_parsed) - 1, 1)
