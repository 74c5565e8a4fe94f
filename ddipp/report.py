"""What `%dipstatus` displays: an HTML table in Jupyter, the plain-text report everywhere else."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from .session import Status

REPORT_HTML = '<div class="ddipp-status">\n{lines}\n{table}\n<p>{autodip}</p>\n</div>'
LINE_HTML = "<p>{label}: <code>{value}</code></p>"


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The group's status and the autodip mode; front ends choose the HTML or the text form."""

    status: Status
    autodip: str

    def text(self) -> str:
        """The report as plain text: the status, then the autodip mode."""
        return f"{self.status.render()}\n{self.autodip}"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        status = self.status
        lines = [("state", status.state.value)]
        if status.reason:
            lines.append(("reason", status.reason))
        table = ""
        if status.spec is not None and status.ranks:
            lines.extend(tuple(line.split(": ", 1)) for line in status.group_lines())
            header, rows = status.rank_table()
            head = "".join(f"<th>{escape(name)}</th>" for name in header)
            body = "".join(
                "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
            )
            table = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"
        return REPORT_HTML.format(
            lines="\n".join(LINE_HTML.format(label=label, value=escape(value)) for label, value in lines),
            table=table,
            autodip=escape(self.autodip),
        )
