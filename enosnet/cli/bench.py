"""``enosnet bench``: run an experiment file on the environment's hosts, with progress and a report at the end."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from enosnet.cli.common import EnvOption, console, find_env
from enosnet.errors import EnosnetError

if TYPE_CHECKING:  # the bench layer loads when the command runs, not with every enosnet command
    from enosnet.bench.events import Event, RunFinished
    from enosnet.bench.plan import Plan
    from enosnet.bench.runner import BenchResult
    from enosnet.bench.spec import Experiment
    from enosnet.results.store import CheckResult


def register(app: typer.Typer) -> None:
    app.command()(bench)


def bench(
    experiment: Annotated[Path, typer.Argument(help="Experiment file (YAML).", show_default=False)],
    env: EnvOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs in order with the estimated time "
                                                            "(with --resume: those not committed yet); run "
                                                            "nothing.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip runs already committed to the database.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Only runs with parameter K equal to V (K=V, "
                                                                  "repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Measure even if environment checks fail (recorded, "
                                                        "and flagged in the report).")] = False,
    strict_fidelity: Annotated[bool, typer.Option("--strict-fidelity", help="Fail runs whose testbed did not keep "
                                                  "up (saturated CPUs or quota, late or excess emulation drops) "
                                                  "instead of flagging them.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Build the HTML report at the end.")] = True,
) -> None:
    """Run every combination of an experiment's parameters, store everything, then build the report."""
    from enosnet.bench.plan import make_plan
    from enosnet.bench.runner import BenchOptions, committed_keys, run_experiment
    from enosnet.bench.spec import load_experiment

    spec = load_experiment(experiment)
    plan = make_plan(spec, only=only or [])
    if dry_run:
        if resume:
            plan = plan.without(committed_keys(find_env(env), spec))
        _print_plan(plan, resumed=resume)
        _print_capacity(spec, env)
        return
    environment = find_env(env)
    view = _View()
    try:
        with view.progress:
            options = BenchOptions(resume=resume, force=force, only=tuple(only or ()),
                                   strict_fidelity=strict_fidelity)
            result = run_experiment(environment, spec, options=options, on_event=view.on_event)
    finally:
        if view.failed_checks:
            _print_checks(view.failed_checks, title="failed environment checks")
    _print_end(result)
    if report and result.done:
        _build_report(environment.db_file, result)
    if result.failed and not result.done:
        raise typer.Exit(1)  # every run failed: nothing was measured


def _print_capacity(spec: Experiment, env: Path | None) -> None:
    """On local hosts: whether the machine has the cores the busiest run asks for (nothing when not deployed)."""
    from enosnet.bench.capacity import advice, for_local_testbed
    from enosnet.testbed import attach

    try:
        testbed = attach(find_env(env))
    except EnosnetError:
        return
    capacity = for_local_testbed(spec, testbed)
    if capacity is None:
        return
    console.print(f"capacity: the busiest run keeps about {capacity.demand:g} threads busy; the hosts have "
                  f"{capacity.cores} cores")
    warning = advice(capacity)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def _print_plan(plan: Plan, *, resumed: bool = False) -> None:
    left = " left to run" if resumed else ""
    table = Table("#", "position", "parameters", "repetition", "key", title=f"{plan.experiment.name}: "
                  f"{len(plan.runs)} runs{left}, order {plan.order}, seed {plan.seed}")
    for index, run in enumerate(plan.runs):
        params = " ".join(f"{k}={v}" for k, v in run.params.items())
        table.add_row(str(index), str(run.position), escape(params), str(run.repetition), run.key)
    console.print(table)
    minutes, seconds = divmod(round(plan.estimate_s()), 60)
    console.print(f"estimated time: {minutes} min {seconds:02d} s ({plan.experiment.duration_s:g} s per run "
                  "plus overhead)")


class _View:
    """Renders bench events: a progress bar, one line per run."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("[green]{task.fields[ok]} ok[/green] [red]{task.fields[failed]} "
                                            "failed[/red]"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.task = self.progress.add_task("checks", total=None, ok=0, failed=0)
        self.failed_checks: list[CheckResult] = []

    def on_event(self, event: Event) -> None:
        from enosnet.bench.events import ChecksDone, ExperimentFinished, ExperimentStarted, RunFinished, RunStarted

        out = self.progress.console
        if isinstance(event, ChecksDone):
            bad = [c for c in event.results if not c.ok]
            self.failed_checks = bad
            note = f", {len(bad)} failed but forced" if event.forced and bad else ""
            out.print(f"environment checks: {len(event.results) - len(bad)} passed{note}")
        elif isinstance(event, ExperimentStarted):
            skipped = f" ({event.skipped} already committed, skipped)" if event.skipped else ""
            out.print(f"[bold]{escape(event.name)}[/bold]: {event.total} runs{skipped}, order {event.order} "
                      f"(seed {event.seed}), estimated {event.estimate_s / 60:.1f} min")
            self.progress.update(self.task, description=event.name, total=event.total)
        elif isinstance(event, RunStarted):
            self.progress.update(self.task, description=f"run {event.index + 1}/{event.total}")
        elif isinstance(event, RunFinished):
            self._run_line(event)
        elif isinstance(event, ExperimentFinished):
            self.progress.update(self.task, description="done")

    def _run_line(self, event: RunFinished) -> None:
        fields = self.progress.tasks[0].fields
        key = "ok" if event.status == "ok" else "failed"
        self.progress.update(self.task, advance=1, **{key: fields[key] + 1})
        mark = "[green]✓[/green]" if event.status == "ok" else "[red]✗[/red]"
        headline = ""
        if event.headline is not None:
            name, value, unit = event.headline
            headline = f"  {name} {human(value, unit)}"
        reason = f"  [red]{escape((event.reason or '')[:200])}[/red]" if event.status != "ok" else ""
        if event.status == "ok" and event.fidelity:
            reason = f"  [yellow]flagged: {escape('; '.join(event.fidelity)[:200])}[/yellow]"
        self.progress.console.print(f"{mark} {event.index + 1:>3}/{event.total} {escape(event.label)}{headline}"
                                    f"  ({event.seconds:.1f} s){reason}")


def human(value: float, unit: str) -> str:
    """``9.41 Gbit/s`` from ``9.41e9, 'bit/s'``.

    >>> human(9.41e9, "bit/s"), human(12.0, "ms")
    ('9.41 Gbit/s', '12 ms')
    """
    if unit.endswith("/s"):
        for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= factor:
                return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _print_checks(results: list[CheckResult], *, title: str) -> None:
    table = Table("check", "host", "detail", title=title)
    for r in results:
        table.add_row(r.name, r.host or "—", escape(r.detail))
    console.print(table)


def _print_end(result: BenchResult) -> None:
    skipped = f", {result.skipped} skipped (already committed)" if result.skipped else ""
    console.print(f"[bold]{escape(result.name)}[/bold]: {result.done} runs ok, {result.failed} failed{skipped} "
                  f"in {result.seconds:.0f} s")
    console.print(f"results database: {result.database}")
    console.print(f"raw outputs:      {result.runs_dir}")


def _build_report(database: Path, result: BenchResult) -> None:
    try:
        from enosnet.results.report import build_report
    except ImportError:
        return
    try:
        with console.status("building the report"):
            built = build_report(database, experiment=result.experiment_id)
    except EnosnetError as exc:
        console.print(f"[yellow]report not built:[/yellow] {escape(str(exc))} (try `enosnet report`)")
        return
    console.print(f"report:           {built.html}")
    if built.netbench is not None and built.netbench.index is not None:
        console.print(f"netbench report:  {built.netbench.index}")
