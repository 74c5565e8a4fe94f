"""`%dipstatus` as rich output: an HTML table for Jupyter, the plain-text report for terminals."""

from __future__ import annotations

from html.parser import HTMLParser

from IPython.core.formatters import DisplayFormatter

from ddipp.cluster import RankInfo
from ddipp.fsm import State
from ddipp.report import StatusReport
from ddipp.session import Status
from ddipp.spec import GroupSpec

AUTODIP = "autodip is on: cells run as %%dip --see all"


def two_ranks(reason: str = "") -> Status:
    ranks = (RankInfo(0, 4, 1201, "cpu", "node-a"), RankInfo(1, 5, 1202, "cpu", "node-a"))
    spec = GroupSpec(devices=(None, None), backend="gloo", app="torch")
    return Status(State.PATCHED, spec, ranks, frozenset({1}), reason, ({"rss_mb": 310.4}, {}))


class TableCells(HTMLParser):
    """The text of every `<th>` and `<td>` of an HTML fragment, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "tr":
            self.rows.append([])
        self._in_cell = tag in ("th", "td")
        if self._in_cell:
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.rows[-1][-1] += data


def test_jupyter_gets_a_table_of_the_ranks_and_a_terminal_the_text_report():
    status = two_ranks()
    formats, _ = DisplayFormatter().format(StatusReport(status, AUTODIP))
    assert formats["text/plain"] == f"{status.render()}\n{AUTODIP}"
    parser = TableCells()
    parser.feed(formats["text/html"])
    header, rows = status.rank_table()
    assert parser.rows == [list(header), *map(list, rows)]
    assert "host" in header and parser.rows[2][header.index("alive")] == "no"
    assert "patched" in formats["text/html"] and AUTODIP in formats["text/html"]


def test_the_plain_report_has_a_column_for_each_column_of_the_table():
    status = two_ranks()
    header, rows = status.rank_table()
    lines = status.render().splitlines()
    assert lines[-3].split() == list(header)
    assert lines[-2].split() == ["0", "4", "1201", "node-a", "cpu", "yes", "310", "MB"]


def test_text_from_the_ranks_is_escaped_in_the_html():
    formats, _ = DisplayFormatter().format(StatusReport(two_ranks(reason="rank 1 <b>died</b>"), AUTODIP))
    assert "rank 1 &lt;b&gt;died&lt;/b&gt;" in formats["text/html"]
    assert "<b>died</b>" not in formats["text/html"]
