"""`invoke doctor`'s one screen: the checks of toolkit.machine.doctor (a DoctorReport) as one
table of check, status and detail, grouped by machine, strategies, data and server."""
from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from toolkit.machine.console import human_size


def doctor_table(report: Any) -> Table:
    """The report as one rich table: check, status, detail."""
    table = Table(title="retrieval-race doctor", title_justify="left")
    for column in ("check", "status", "detail"):
        table.add_column(column, overflow="fold")

    def section(title: str) -> None:
        table.add_section()
        table.add_row(f"[bold]{title}[/bold]", "", "")

    section("machine")
    table.add_row("Python", report.python, escape(report.python_executable))
    table.add_row("torch", report.torch, report.torch_build)
    if report.gpus:
        for gpu in report.gpus:
            memory = f"{human_size(gpu.memory_bytes)} memory" if gpu.memory_bytes else ""
            table.add_row("GPU", f"[green]{escape(gpu.name)}[/green]", memory)
    else:
        table.add_row("GPU", "[yellow]no GPU[/yellow]", escape(report.gpu_note))
    cores = f"{report.cpu_cores} cores" + (f" ({report.usable_cores} usable)" if report.usable_cores != report.cpu_cores else "")
    table.add_row("CPU", cores, escape(report.architecture))
    if report.ram_total:
        table.add_row("RAM", human_size(report.ram_total),
                      f"{human_size(report.ram_available)} available" if report.ram_available else "")
    for folder, free, total in report.disks:
        colour = "green" if free > 20e9 else "yellow" if free > 5e9 else "red"
        table.add_row("disk", f"[{colour}]{human_size(free)} free[/{colour}]", f"of {human_size(total)}, at {escape(str(folder))}")

    section("strategies (weights on disk)")
    for check in report.strategies:
        status = "[green]available[/green]" if check.available else "[red]not available[/red]"
        table.add_row(escape(check.label), status, escape(check.detail))

    section(f"data ({escape(str(report.data_root))})")
    if not report.competitions:
        what = "no competition found" if report.data_root_exists else "no such folder"
        table.add_row(escape(str(report.data_root)), f"[yellow]{what}[/yellow]",
                      "get one with `invoke download URL`, or draw one with `invoke demo`")
    for competition in report.competitions:
        source = f" (from {competition.downloaded_from})" if competition.downloaded_from else ""
        name = escape(competition.folder.name or str(competition.folder))
        if competition.description:
            table.add_row(name, "[green]ready[/green]", escape(competition.description + source))
        else:
            table.add_row(name, "[red]layout problem[/red]", escape((competition.problem or "") + source))
    for path, size in report.partial_downloads:
        table.add_row(escape(path.name), "[yellow]interrupted download[/yellow]",
                      f"{human_size(size)} so far; run the same `invoke download` again to resume")

    section("competition server")
    server = report.server
    colour = {"answers": "green", "not configured": "yellow"}.get(server.state, "red")
    status = f"[{colour}]{server.state}[/{colour}]"
    table.add_row(escape(server.url or "server_url"), status, escape(server.detail))
    table.caption = f"checked in {report.seconds:.1f} s; nothing was downloaded"
    return table
