"""Environment lifecycle commands: deploy, status, inventory, destroy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from enosnet.cli.common import EnvOption, JsonOption, console, find_env
from enosnet.config import load_config
from enosnet.environment import Environment
from enosnet.errors import UsageError
from enosnet.providers import make_provider, provider_class
from enosnet.providers.base import HostStatus


def register(app: typer.Typer) -> None:
    app.command()(deploy)
    app.command()(status)
    app.command()(inventory)
    app.command()(destroy)


def deploy(
    config: Annotated[Path, typer.Option("--config", "-c", help="Environment config file (YAML).")],
    env: EnvOption = None,
) -> None:
    """Acquire the hosts a config asks for (reusing what exists) and write the inventory."""
    cfg = load_config(config)
    environment = Environment(env) if env else Environment.for_name(cfg.name)
    provider = make_provider(cfg, environment)
    with console.status(f"acquiring hosts ({cfg.kind} provider)"):
        roles, _ = provider.init()
    environment.mark_current()
    counts = ", ".join(f"{role}: {len(hosts)}" for role, hosts in roles.items())
    console.print(f"[green]deployed[/green] {len(roles.all())} hosts ({counts}) in {environment.root}")
    console.print(f"inventory: {environment.inventory_file}")


def _provider_for(environment: Environment):  # type: ignore[no-untyped-def]
    state = environment.load_state() or {}
    from enosnet.config import EnvConfig

    cfg = EnvConfig.model_validate(state["config"])
    return make_provider(cfg, environment)


def status(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """Show hosts, roles, addresses and whether each answers on SSH."""
    environment = find_env(env)
    rows = _provider_for(environment).status()
    if as_json:
        console.print_json(json.dumps({"environment": str(environment.root), "hosts": [_row(r) for r in rows]}))
        return
    table = Table("host", "roles", "address", "ssh", "detail", title=str(environment.root))
    for r in rows:
        table.add_row(r.host.name, ",".join(r.roles), r.host.address,
                      "[green]up[/green]" if r.reachable else "[red]down[/red]", r.detail)
    console.print(table)
    up = sum(r.reachable for r in rows)
    console.print(f"{up} reachable, {len(rows) - up} unreachable, {len(rows)} total")
    if up < len(rows):
        raise typer.Exit(1)


def _row(r: HostStatus) -> dict[str, object]:
    return {"name": r.host.name, "roles": list(r.roles), "address": r.host.address, "port": r.host.port,
            "reachable": r.reachable, "detail": r.detail}


def inventory(env: EnvOption = None) -> None:
    """Print the environment's Ansible inventory (YAML, usable with ansible-playbook -i)."""
    environment = find_env(env)
    if not environment.inventory_file.exists():
        raise UsageError(f"{environment.root}: no inventory (no hosts acquired)")
    typer.echo(environment.inventory_file.read_text(), nl=False)


def destroy(
    env: EnvOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every enosnet local host on this machine, "
                                                     "even without state.")] = False,
) -> None:
    """Release everything the environment's state names (idempotent)."""
    if all_:
        from enosnet.providers.local import destroy_all

        removed = destroy_all()
        console.print(f"removed {len(removed)} local namespaces and bridges")
        return
    environment = find_env(env)
    state = environment.load_state() or {}
    if not state.get("config"):
        console.print(f"nothing to release in {environment.root}")
        return
    provider_class(state.get("kind", "local"))
    _provider_for(environment).destroy()
    console.print(f"[green]released[/green] everything of {environment.root}")
