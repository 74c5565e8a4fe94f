"""Errors that ddipp raises to the notebook, each with a message that says what to do."""

from __future__ import annotations


class DdippError(Exception):
    """Base of every error ddipp reports; shown in the notebook as its message alone."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a Python traceback: the message is what matters,
        # ddipp's own frames would only hide it.
        return [f"{type(self).__name__}: {self}"]


class InvalidSequence(DdippError):
    """A magic that the group's current state does not allow; nothing was done."""


class LaunchFailed(DdippError):
    """The group could not be started; everything that was started has been stopped."""


class PushError(DdippError):
    """`%dip --push` found a name that is undefined or cannot be sent; nothing was pushed."""


class PullError(DdippError):
    """`%dip --pull` could not fetch a name from a rank."""


class GroupFailed(DdippError):
    """A rank died or the group stopped being consistent; the group is now `failed`."""


class CellTimeout(DdippError):
    """A cell ran past its `--timeout` on the ranks; the group is now `failed`."""


class LocalRunFailed(DdippError):
    """`%%dip --to both`: the local run raised, so the ranks were not run."""


class RankError(DdippError):
    """One or more ranks raised while running a cell; each distinct traceback is kept once."""

    def __init__(self, failures: list[tuple[tuple[int, ...], str, str, list[str]]]) -> None:
        self.failures = failures
        summary = "; ".join(
            f"{_ranks_phrase(ranks)}: {ename}: {evalue}" for ranks, ename, evalue, _ in failures
        )
        super().__init__(summary)

    def __reduce__(self):
        return (type(self), (self.failures,))

    def _render_traceback_(self) -> list[str]:
        lines: list[str] = []
        for ranks, ename, evalue, traceback in self.failures:
            lines.append(f"--- {_ranks_phrase(ranks)} raised {ename}: {evalue}")
            lines.extend(traceback or [f"{ename}: {evalue}"])
        return lines


def _ranks_phrase(ranks: tuple[int, ...]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(str(r) for r in ranks)
