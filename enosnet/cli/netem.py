"""``enosnet netem apply|clear|show``: network emulation on the environment's hosts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from enosnet.cli.common import EnvOption, JsonOption, console, find_env
from enosnet.environment import Environment
from enosnet.errors import ConfigError, EnvironmentNotFound
from enosnet.model import Roles
from enosnet.yamlfile import parse_yaml

if TYPE_CHECKING:  # the emulation layer loads when a netem command runs, not with every enosnet command
    from enosnet.netem import RttCheck

netem_app = typer.Typer(name="netem", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                        help="Emulate delay, loss and rate limits between the environment's hosts (tc netem).")


def register(app: typer.Typer) -> None:
    app.add_typer(netem_app)


def _roles(environment: Environment) -> Roles:
    deployed = environment.state().deployed
    if deployed is None:
        raise EnvironmentNotFound(f"{environment.root}: no hosts acquired; run `enosnet deploy` first")
    return deployed


@netem_app.command("apply")
def apply_command(
    spec: Annotated[Path, typer.Argument(help="YAML: device, interfaces [{hosts, delay, jitter, loss, rate, ingress}], "
                                              "between [{from, to, delay, jitter, loss, rate, symmetric}].")],
    env: EnvOption = None,
    validate: Annotated[bool, typer.Option("--validate", help="Then ping each constrained pair and show the "
                                                              "measured RTT and loss next to the requested.")] = False,
    count: Annotated[int, typer.Option("--count", min=1, max=1000, help="Pings per pair for --validate.")] = 20,
) -> None:
    """Make the hosts' emulation exactly SPEC (hosts it does not name are cleared)."""
    from enosnet.netem import from_spec

    environment = find_env(env)
    try:
        document = parse_yaml(spec.read_text(), str(spec))
    except OSError as exc:
        raise ConfigError(f"{spec}: cannot read: {exc.strerror}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{spec}: expected a mapping with device, interfaces, between")
    netem = from_spec(_roles(environment), document, where=str(spec))
    with console.status("applying network emulation"):
        results = netem.apply(env=environment)
    changed = sum(r.changed for r in results.values())
    console.print(f"[green]applied[/green] on {len(results)} hosts ({changed} changed)")
    if validate:
        with console.status("measuring RTT with ping"):
            checks = netem.validate(count=count, env=environment)
        print_checks(checks)


def print_checks(checks: list[RttCheck]) -> None:
    table = Table("from", "to", "RTT asked (extra)", "RTT measured", "loss asked", "loss measured", "pings")
    for c in checks:
        got = "no reply" if c.measured_ms is None else f"{c.measured_ms:.2f} ms"
        table.add_row(c.source, c.target, f"+{c.requested_ms:g} ms", got, f"{c.requested_loss:.2f} %",
                      f"{c.measured_loss:.2f} %", str(c.sent))
    console.print(table)


@netem_app.command("clear")
def clear_command(env: EnvOption = None) -> None:
    """Remove exactly the emulation enosnet applied (qdiscs, filters, ifb devices)."""
    from enosnet.netem import clear

    environment = find_env(env)
    with console.status("clearing network emulation"):
        results = clear(_roles(environment), env=environment)
    changed = [h.name for h, r in results.items() if r.changed]
    console.print(f"[green]cleared[/green] {len(changed)} of {len(results)} hosts")


@netem_app.command("show")
def show_command(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """What enosnet's emulation put on each host (tc qdiscs and classes)."""
    from enosnet.netem import show

    environment = find_env(env)
    shown = show(_roles(environment), env=environment)
    if as_json:
        console.print_json(json.dumps(shown))
        return
    for host, devices in shown.items():
        if not devices:
            console.print(f"[bold]{host}[/bold]: no emulation")
        for device, text in devices.items():
            console.print(f"[bold]{host}[/bold] {device}:")
            console.print(escape(text), soft_wrap=True)
