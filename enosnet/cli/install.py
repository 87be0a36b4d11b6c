"""Rendering the install step of ``enosnet deploy``: per-host progress, then a recap table."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.status import Status as Spinner
from rich.table import Table

from enosnet.cli.common import console
from enosnet.config import NetbenchInstall
from enosnet.errors import HostsFailed
from enosnet.installer import InstallOptions, InstallReport, build_netbench
from enosnet.remote import EventKind, HostEvent
from enosnet.testbed import Testbed

COLOURS = {EventKind.CHANGED: "yellow", EventKind.FAILED: "red", EventKind.UNREACHABLE: "red"}


class Progress:
    """Shows the current task and how many hosts finished it; prints changed and failed hosts as they come."""

    def __init__(self, spinner: Spinner, hosts: int) -> None:
        self.spinner = spinner
        self.hosts = hosts
        self.task = ""
        self.done = 0

    def __call__(self, event: HostEvent) -> None:
        if event.kind is EventKind.TASK:
            self.task, self.done = event.task, 0
        elif event.host is not None:
            self.done += 1
            colour = COLOURS.get(event.kind)
            if colour:
                detail = f": {event.message}" if event.message else ""
                console.print(f"  [{colour}]{event.kind}[/{colour}] {event.host.name} "
                              f"{escape(event.task)}{escape(detail)}")
        self.spinner.update(f"installing: {escape(self.task)} ({self.done}/{self.hosts} hosts)")


def build_for_deploy(spec: NetbenchInstall, *, base: Path) -> InstallOptions:
    """Build s2n-netbench on this machine (once: later deploys reuse the cache), showing cargo's progress."""
    with console.status("s2n-netbench: looking in this machine's build cache") as spinner:
        def progress(line: str) -> None:
            spinner.update("s2n-netbench: building on this machine, once (later deploys reuse it): "
                           f"{escape(line.strip()[:80])}")
        built, options = build_netbench(spec, base=base, on_output=progress)
    if built.built:
        console.print(f"s2n-netbench: built {', '.join(built.built)} in {built.seconds:.0f} s, cached in "
                      f"{built.bin_dir.parent.parent}; later deploys reuse it")
    else:
        console.print(f"s2n-netbench: reused this machine's build of {', '.join(built.reused)}")
    return options


def run_install(testbed: Testbed, options: InstallOptions) -> None:
    """Install on every host, printing progress and the recap; a failed host raises ``HostsFailed``."""
    with console.status("installing") as spinner:
        report = testbed.install(options, on_event=Progress(spinner, len(testbed.roles.all())), strict=False)
    print_recap(report)
    failed = [r for r in report.recap() if r.failed]
    if failed:
        raise HostsFailed(report.results, "install failed on " + "; ".join(
            f"{r.host}: {r.message}" for r in failed))


def print_recap(report: InstallReport) -> None:
    for warning in report.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(warning)}")
    table = Table("host", "status", "ok", "changed", "skipped", "failed", "message",
                  title=f"install recap ({report.duration:.1f} s)")
    for row in report.recap():
        status = "[green]ok[/green]" if not row.failed else f"[red]{row.status}[/red]"
        table.add_row(row.host, status, str(row.ok), str(row.changed), str(row.skipped), str(row.failed),
                      escape(row.message))
    console.print(table)
    hosts = len(report.results)
    bad = len(report.results.failed)
    console.print(f"{hosts - bad} succeeded, {bad} failed, {hosts} total; {report.changed} changes")
