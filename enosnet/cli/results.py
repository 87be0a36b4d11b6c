"""Results commands: report, backup, export."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.markup import escape

from enosnet.cli.common import EnvOption, console, err_console, find_env
from enosnet.environment import Environment
from enosnet.errors import EnosnetError, UsageError

if TYPE_CHECKING:  # boto3 loads only when a backup goes to S3
    from enosnet.results.s3 import S3Location

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="A results database file to read instead of the environment's."),
]
ExperimentOption = Annotated[
    str | None,
    typer.Option("--experiment", help="Experiment name or id (default: the latest in the database)."),
]


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(compare)
    app.command()(backup)
    app.command()(export)


def parse_threshold(text: str) -> float:
    """``5%`` or ``0.05`` → 0.05; a bare number of 1 or more is ambiguous and refused."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*", text)
    if not match:
        raise UsageError(f"--threshold {text!r}: expected a percentage like 5% or a fraction like 0.05")
    value = float(match.group(1))
    if match.group(2):
        return value / 100
    if value >= 1:
        raise UsageError(f"--threshold {text!r}: ambiguous; write {text}% or {value / 100:g}")
    return value


def _database(env: Path | None, db: Path | None) -> Path:
    if db is not None:
        if env is not None:
            raise UsageError("give --env or --db, not both")
        return db
    return find_env(env).db_file


def report(
    env: EnvOption = None,
    db: DbOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: report/ beside the "
                                                                   "database).")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="Metric to analyse (repeatable; "
                                                                            "default: all, headline first).")] = None,
    threshold: Annotated[str, typer.Option(help="Smallest relative difference that matters, e.g. 5% or 0.05.")] = "5%",
    experiment: ExperimentOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
) -> None:
    """Statistics, plots and a self-contained report.html, computed from the results database only."""
    from enosnet.results.report import build_report
    from enosnet.results.stats import StatsOptions

    options = StatsOptions(threshold=parse_threshold(threshold), seed=seed)
    with console.status("analysing and plotting"):
        result = build_report(_database(env, db), out, experiment=experiment, metrics=metric or (),
                              options=options)
    analysis = result.analysis
    significant = [c for c in analysis.comparisons if c.practically_significant]
    console.print(f"[bold]{escape(analysis.experiment.name)}[/bold]: {len(analysis.runs)} runs, "
                  f"{len(analysis.comparisons)} comparisons, {len(significant)} practically significant")
    for c in significant[:12]:
        console.print(f"  • {escape(c.sentence)}")
    if len(significant) > 12:
        console.print(f"  … and {len(significant) - 12} more in the report")
    for w in analysis.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(w.kind)}: {escape(w.message)}", soft_wrap=True)
    console.print(f"markdown: {result.markdown}")
    console.print(str(result.html), soft_wrap=True)


def compare(
    baseline: Annotated[str, typer.Argument(help="Environment folder, results database, or DB:EXPERIMENT.",
                                            show_default=False)],
    candidate: Annotated[str | None, typer.Argument(help="The same for the side under test (not with --builds).",
                                                    show_default=False)] = None,
    builds: Annotated[str | None, typer.Option("--builds", help="Two builds of BASELINE's experiment, e.g. "
                                                                 "base,mine (its builds: labels).")] = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="Metric to compare (repeatable; "
                                                                            "default: the headline one).")] = None,
    threshold: Annotated[str, typer.Option(help="Smallest relative difference that matters, e.g. 5% or 0.05.")] = "5%",
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    md: Annotated[Path | None, typer.Option("--md", help="Also write it as Markdown to this file.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write it as HTML to this file.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
) -> None:
    """Is CANDIDATE better or worse than BASELINE? Runs paired by parameters; exit 1 on a regression."""
    from enosnet.results.compare import compare as compare_sides
    from enosnet.results.compare import dumps
    from enosnet.results.stats import StatsOptions

    result = compare_sides(baseline, candidate, builds=builds, metrics=metric or (),
                           options=StatsOptions(threshold=parse_threshold(threshold), seed=seed))
    if md is not None:
        result.write_markdown(md)
    if html is not None:
        result.write_html(html)
    if as_json:
        print(dumps(result))
    else:
        sides = result.candidate.label, result.baseline.label
        console.print(f"[bold]{escape(sides[0])}[/bold] against [bold]{escape(sides[1])}[/bold] "
                      f"({len(result.rows)} comparisons, threshold {result.threshold * 100:g} %):")
        for row in result.rows:
            mark = {"worse": "[red]✗ worse[/red]", "better": "[green]✓ better[/green]"}.get(row.verdict, "  =")
            console.print(f"  {mark} {escape(row.sentence)}", soft_wrap=True)
    for line in [*result.unpaired, *result.warnings]:
        err_console.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True)
    if result.regressions:
        names = "; ".join(r.sentence for r in result.regressions)
        err_console.print(f"[red]regression:[/red] {escape(names)}", soft_wrap=True)
        raise typer.Exit(1)


def backup(
    env: EnvOption = None,
    s3: Annotated[str | None, typer.Option("--s3", help="Also upload to s3://BUCKET/PREFIX (or, with --verify, "
                                                        "check there).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check the latest (or --name) backup against its "
                                                          "checksums instead of making one.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="With --verify or --s3 alone: which backup "
                                                            "(folder name under backup/).")] = None,
    playbook: Annotated[Path | None, typer.Option("--playbook", help="Playbook fetching host logs and agent state "
                                                                     "(default: playbooks/backup.yml).")] = None,
) -> None:
    """Back up the database, runs, experiment and config files, and host logs to backup/<UTC time>/."""
    environment = find_env(env)
    from enosnet.results.s3 import S3Location

    location = S3Location.parse(s3) if s3 else None
    if verify:
        _verify(environment, name, location)
        return
    if name is not None:
        if location is None:
            raise UsageError("--name without --verify needs --s3: it uploads (or resumes uploading) that backup")
        from enosnet.results.backup import find_backup

        _upload(environment, find_backup(environment, name), location)
        return
    from enosnet.results.backup import DEFAULT_PLAYBOOK, make_backup, playbook_collector

    book = playbook or DEFAULT_PLAYBOOK
    with console.status("backing up"):
        made = make_backup(environment, collect_hosts=playbook_collector(environment, book))
    console.print(f"[green]backup[/green] {made.path}: {made.files} files, {made.new_files} new "
                  f"({made.new_bytes / 1e6:.1f} MB), {made.linked_files} unchanged (hard links to "
                  f"{made.previous.name if made.previous else '—'})")
    for note in made.notes:
        console.print(f"  note: {escape(note)}")
    if location is not None:
        _upload(environment, made.path, location)


def _upload(environment: Environment, path: Path, location: S3Location) -> None:
    from enosnet.results.backup import agent_keys
    from enosnet.results.s3 import upload_backup

    try:
        with console.status(f"uploading to {location}"):
            up = upload_backup(path, location, keep_out=agent_keys(environment))
    except EnosnetError as exc:
        raise type(exc)(f"{exc}\nresume with: enosnet backup --s3 {location} --name {path.name}") from None
    console.print(f"[green]uploaded[/green] to {location}: {up.uploaded} objects sent "
                  f"({up.bytes_sent / 1e6:.1f} MB), {up.copied} unchanged copied in S3 from the previous backup, "
                  f"{up.skipped} already there, {up.parts_reused} parts of an interrupted upload kept")


def _verify(environment: Environment, name: str | None, location: S3Location | None) -> None:
    from enosnet.results.backup import find_backup, verify_backup
    from enosnet.results.s3 import verify_s3

    path = find_backup(environment, name)
    results = [verify_backup(path)]
    if location is not None:
        with console.status(f"checking {location}"):
            results.append(verify_s3(path, location))
    for result in results:
        colour = "green" if result.ok else "red"
        console.print(f"[{colour}]{'OK' if result.ok else 'BAD'}[/{colour}] {path.name} "
                      f"{escape(result.describe())}", soft_wrap=True)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def export(
    env: EnvOption = None,
    db: DbOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: export/ beside the "
                                                                   "database).")] = None,
    csv: Annotated[bool, typer.Option("--csv", help="CSV files (the default).")] = False,
    parquet: Annotated[bool, typer.Option("--parquet", help="Parquet files (needs pyarrow).")] = False,
) -> None:
    """Write every table of the results database, plus a flat results table, as CSV or parquet."""
    from enosnet.results.store import ResultsStore
    from enosnet.results.store import export as export_tables

    if csv and parquet:
        raise UsageError("give --csv or --parquet, not both")
    fmt: Literal["csv", "parquet"] = "parquet" if parquet else "csv"
    path = _database(env, db)
    with ResultsStore.open(path, create=False) as store:
        written = export_tables(store, out or path.parent / "export", fmt=fmt)
    for file in written:
        console.print(str(file))
