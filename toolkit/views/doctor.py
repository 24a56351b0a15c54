"""`invoke doctor`'s one screen: the checks of toolkit.machine.doctor (a DoctorReport) as one
table of check, status and detail, grouped by machine, strategies, data and server, fitted to the
width (toolkit.views.fit): the detail wraps, long paths shortened (site-packages/, ~), a detail
the row above has already given said once."""
from __future__ import annotations

import re
from typing import Any

from rich.text import Text

from toolkit.machine.console import human_size
from toolkit.views.fit import Column, FittedTable, Row
from toolkit.views.text import compact_paths

DOCTOR_COLUMNS = (Column("check", kind="text", justify="left", min_width=16),
                  Column("status", justify="left"), Column("detail", kind="text", justify="left"))
SHORT_CLAUSE = 20        # a repeated detail keeps its first clause when it is this short


def doctor_table(report: Any) -> FittedTable:
    """The report as one table: check, status, detail."""
    rows: list[Row] = []

    def section(title: str, about: str = "") -> None:
        if rows:
            rows[-1].end_section = True
        rows.append(Row({"check": Text(title, style="bold"), "detail": Text(compact_paths(about), style="bold")}))

    def add(check: str, status: str, detail: str = "", colour: str = "") -> None:
        rows.append(Row({"check": check, "status": Text(status, style=colour), "detail": compact_paths(detail)}))

    section("machine")
    add("Python", report.python, report.python_executable)
    add("torch", report.torch, report.torch_build)
    if report.gpus:
        for gpu in report.gpus:
            add("GPU", gpu.name, f"{human_size(gpu.memory_bytes)} memory" if gpu.memory_bytes else "", "green")
    else:
        add("GPU", "no GPU", report.gpu_note, "yellow")
    usable = f" ({report.usable_cores} usable)" if report.usable_cores != report.cpu_cores else ""
    add("CPU", f"{report.cpu_cores} cores{usable}", report.architecture)
    if report.ram_total:
        add("RAM", human_size(report.ram_total), f"{human_size(report.ram_available)} available" if report.ram_available else "")
    for folder, free, total in report.disks:
        colour = "green" if free > 20e9 else "yellow" if free > 5e9 else "red"
        add("disk", f"{human_size(free)} free", f"of {human_size(total)}, at {folder}", colour)

    section("strategies", "weights on disk")
    said: dict[str, str] = {}
    for check in report.strategies:
        detail = _said_before(check.detail, said.get(check.detail))
        said.setdefault(check.detail, check.label)
        add(check.label, "available" if check.available else "not available", detail,
            "green" if check.available else "red")

    section("data", str(report.data_root))
    if not report.competitions:
        add(str(report.data_root), "no competition found" if report.data_root_exists else "no such folder",
            "get one with `invoke download URL`, or draw one with `invoke demo`", "yellow")
    for competition in report.competitions:
        source = f" (from {competition.downloaded_from})" if competition.downloaded_from else ""
        name = competition.folder.name or str(competition.folder)
        if competition.description:
            add(name, "ready", competition.description + source, "green")
        else:
            add(name, "layout problem", (competition.problem or "") + source, "red")
    for path, size in report.partial_downloads:
        add(path.name, "interrupted download", f"{human_size(size)} so far; run the same `invoke download` again to resume",
            "yellow")

    section("server", "the competition server")
    server = report.server
    add(server.url or "server_url", server.state, server.detail,
        {"answers": "green", "not configured": "yellow"}.get(server.state, "red"))
    return FittedTable(DOCTOR_COLUMNS, rows, title="retrieval-race doctor", title_justify="left",
                       caption=f"checked in {report.seconds:.1f} s; nothing was downloaded")


def _said_before(detail: str, where: str | None) -> str:
    """A detail the check `where` has given already: 'as for' that check, after the detail's first
    clause when that is short ('not cached; downloads to ...' -> 'not cached, as for clip-ft'); a
    new one whole."""
    if where is None:
        return detail
    head = re.split(r"[;:]", detail, maxsplit=1)[0].strip()
    return f"{head}, as for {where}" if len(head) <= SHORT_CLAUSE and head != detail.strip() else f"as for {where}"
