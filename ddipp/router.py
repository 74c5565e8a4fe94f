"""Rank-aware output routing, as pure logic: rank messages in, notebook display calls out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import RankError

RANK_LABEL = "[rank {rank}]\n"
LATE_LABEL = "[rank {rank}, written after its cell had ended]\n"
_CELL_NUMBER = re.compile(r"(Cell In\s*)\[\d+\]|(In\s*)\[\d+\]")


@dataclass(frozen=True, slots=True)
class RankMessage:
    """One iopub message of one rank, reduced to what routing needs."""

    rank: int
    msg_type: str
    content: Mapping[str, Any]
    late: bool = False  # written after the rank's cell had ended, shown in a later cell


class Sink(Protocol):
    """Where routed output goes: the notebook (see `ddipp.display`) or a test's recorder."""

    def stream(self, name: str, text: str) -> None: ...

    def display(self, data: Mapping, metadata: Mapping, display_id: str | None, update: bool) -> None: ...

    def clear_output(self, wait: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class RankResult:
    """Rank 0's `execute_result`, returned as the cell's value so it shows as `Out[n]`."""

    data: Mapping[str, Any]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return dict(self.data), dict(self.metadata)

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<result on rank 0>"))


class OutputRouter:
    """Decides, message by message, what of the ranks' output the notebook shows.

    `shown` are the ranks whose output appears (errors from every rank are always kept).
    Output of a rank other than 0, or of any rank when several are shown, comes after a
    `[rank N]` label each time the source changes.
    """

    def __init__(self, sink: Sink, shown: frozenset[int], quiet: bool = False) -> None:
        self._sink = sink
        self._shown = shown
        self._quiet = quiet
        self._label_all = shown != frozenset({0})
        self._last_source: int | None = None
        self._late_source: int | None = None
        self._at_line_start = True
        self._errors: dict[tuple, list] = {}
        self.result: RankResult | None = None

    def feed(self, message: RankMessage) -> None:
        """Route one message."""
        kind, content, rank = message.msg_type, message.content, message.rank
        if kind == "error":
            self.add_failure(
                rank,
                content.get("ename", "Error"),
                content.get("evalue", ""),
                list(content.get("traceback", [])),
            )
            return
        if self._quiet or rank not in self._shown:
            return
        if message.late and self._late_source != rank:
            self._label(rank, LATE_LABEL)
        self._late_source = rank if message.late else None
        if kind == "stream":
            self._label(rank)
            text = content.get("text", "")
            self._sink.stream(content.get("name", "stdout"), text)
            if text:
                self._at_line_start = text.endswith(("\n", "\r"))
        elif kind in ("display_data", "update_display_data"):
            self._label(rank)
            transient = content.get("transient") or {}
            display_id = transient.get("display_id")
            if display_id is not None and rank != 0:
                display_id = f"{display_id}-rank{rank}"
            self._sink.display(
                content.get("data", {}),
                content.get("metadata", {}),
                display_id,
                kind == "update_display_data",
            )
        elif kind == "clear_output":
            self._sink.clear_output(bool(content.get("wait", False)))
        elif kind == "execute_result":
            if rank == 0:
                self.result = RankResult(content.get("data", {}), content.get("metadata", {}))
            else:
                self._label(rank)
                self._sink.display(content.get("data", {}), content.get("metadata", {}), None, False)

    def add_failure(self, rank: int, ename: str, evalue: str, traceback: list[str]) -> None:
        """Record that `rank` raised; identical tracebacks of several ranks are merged."""
        normalised = tuple(_CELL_NUMBER.sub(r"\1\2[]", line) for line in traceback)
        key = (ename, evalue, normalised)
        entry = self._errors.setdefault(key, [[], ename, evalue, traceback])
        if rank not in entry[0]:
            entry[0].append(rank)

    @property
    def failed_ranks(self) -> set[int]:
        """Every rank that has raised so far."""
        return {rank for entry in self._errors.values() for rank in entry[0]}

    def error(self) -> RankError | None:
        """One `RankError` for all failures, each distinct traceback once; None if none."""
        if not self._errors:
            return None
        # In the order they arrived: the first failure is usually the cause of the others.
        failures = [
            (tuple(sorted(ranks)), ename, evalue, traceback)
            for ranks, ename, evalue, traceback in self._errors.values()
        ]
        return RankError(failures)

    def _label(self, rank: int, label: str = "") -> None:
        if not label and (not (self._label_all or rank != 0) or rank == self._last_source):
            self._last_source = rank
            return
        prefix = "" if self._at_line_start else "\n"
        self._sink.stream("stdout", prefix + (label or RANK_LABEL).format(rank=rank))
        self._at_line_start = True
        self._last_source = rank
