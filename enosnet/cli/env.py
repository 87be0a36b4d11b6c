"""Environment lifecycle commands: deploy, status, inventory, destroy."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from enosnet.cli.common import EnvOption, JsonOption, console, err_console, find_env
from enosnet.environment import Environment
from enosnet.errors import UsageError

if TYPE_CHECKING:  # providers (pydantic, boto3) load when a command needs them
    from enosnet.providers.base import HostStatus, Provider
    from enosnet.providers.ec2 import Ec2Provider


def register(app: typer.Typer) -> None:
    app.command()(deploy)
    app.command()(status)
    app.command()(inventory)
    app.command()(destroy)


def deploy(
    config: Annotated[Path, typer.Option("--config", "-c", help="Environment config file (YAML).")],
    env: EnvOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be created (on EC2 with the "
                                                            "hourly cost estimate); create nothing.")] = False,
    keep_on_error: Annotated[bool, typer.Option("--keep-on-error", help="When deploy fails, keep what it "
                                                "acquired (to investigate) instead of releasing it.")] = False,
    no_install: Annotated[bool, typer.Option("--no-install", help="Only acquire hosts; skip installing tools "
                                             "and the agent (playbooks/deploy.yml).")] = False,
    netbench_dir: Annotated[Path | None, typer.Option("--netbench-dir", help="Push prebuilt s2n-netbench "
                                                      "binaries from this folder to every host.")] = None,
) -> None:
    """Acquire the hosts a config asks for (reusing what exists), write the inventory, install tools and agents."""
    from enosnet.cli.install import build_for_deploy, run_install
    from enosnet.installer import InstallOptions
    from enosnet.providers import make_provider
    from enosnet.testbed import acquire, as_config

    cfg = as_config(config)
    environment = Environment(env) if env else Environment.for_name(cfg.name)
    if dry_run:
        _print_plan(make_provider(cfg, environment))
        return
    options = InstallOptions(agent_port=cfg.agent.port, netbench_dir=netbench_dir)
    if cfg.install.netbench is not None and not no_install and netbench_dir is None:
        # before any host is acquired: a first build takes minutes, and a failed one should cost nothing
        options = dataclasses.replace(build_for_deploy(cfg.install.netbench, base=config.parent),
                                      agent_port=cfg.agent.port)
    with console.status(f"acquiring hosts ({cfg.kind} provider)"):
        testbed = acquire(cfg, env=environment, keep=keep_on_error)
    environment.mark_current()
    counts = ", ".join(f"{role}: {len(hosts)}" for role, hosts in testbed.roles.items())
    console.print(f"[green]deployed[/green] {len(testbed.roles.all())} hosts ({counts}) in {environment.root}")
    console.print(f"inventory: {environment.inventory_file}")
    if not no_install and not testbed.provider.waits_for_ssh:
        console.print("install skipped: the provider does not wait for SSH (wait_ssh: false), "
                      "so the hosts may not be reachable")
    elif not no_install:
        run_install(testbed, options)


def status(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """Show hosts, roles, addresses, whether each answers on SSH, and its agent (state, clock, datagrams)."""
    from enosnet.testbed import attach

    environment = find_env(env)
    provider = attach(environment).provider
    rows = provider.status()
    from enosnet.cli.agents import agents_of, print_agents

    agents = agents_of(environment, rows)
    if as_json:
        doc: dict[str, object] = {"environment": str(environment.root), "hosts": [_row(r) for r in rows],
                                  "agents": [a.to_dict() for a in agents]}
        if (ec2 := _ec2(provider)) is not None:
            doc["cost"] = dataclasses.asdict(ec2.cost())
        console.print_json(json.dumps(doc))
        return
    table = Table("host", "roles", "address", "ssh", "detail", title=str(environment.root))
    for r in rows:
        table.add_row(r.host.name, ",".join(r.roles), r.host.address,
                      "[green]up[/green]" if r.reachable else "[red]down[/red]", r.detail)
    console.print(table)
    print_agents(console, agents)
    up = sum(r.reachable for r in rows)
    console.print(f"{up} reachable, {len(rows) - up} unreachable, {len(rows)} total")
    if (ec2 := _ec2(provider)) is not None:
        console.print(f"cost: {ec2.cost()}")
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
                                                     "even without state (with --provider ec2: every EC2 "
                                                     "resource enosnet created from here, found by tag).")] = False,
    provider: Annotated[str, typer.Option("--provider", help="With --all: local or ec2.")] = "local",
    region: Annotated[str | None, typer.Option("--region", help="With --all --provider ec2: the region "
                                               "(default: AWS_DEFAULT_REGION / the profile's).")] = None,
    expired: Annotated[bool, typer.Option("--expired", help="With --all --provider ec2: only what passed its "
                                          "maximum lifetime.")] = False,
    any_owner: Annotated[bool, typer.Option("--any-owner", help="With --all --provider ec2: every enosnet "
                                            "resource of the account, whoever created it (asks first).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Release everything the environment's state names (idempotent)."""
    if not all_ and (provider != "local" or region or expired or any_owner):
        raise UsageError("--provider, --region, --expired and --any-owner go with --all")
    if all_ and provider == "ec2":
        _sweep_ec2(region=region, expired=expired, any_owner=any_owner, yes=yes)
        return
    if all_ and (provider != "local" or region or expired or any_owner):
        raise UsageError(f"--all --provider {provider}: choose local or ec2 (--region, --expired and "
                         "--any-owner are for ec2)")
    if all_:
        from enosnet.providers.local import destroy_all

        removed = destroy_all()
        console.print(f"removed {len(removed)} local namespaces and bridges")
        return
    environment = find_env(env)
    if environment.state().config is None:
        console.print(f"nothing to release in {environment.root}")
        return
    from enosnet.testbed import attach

    attach(environment).destroy()
    console.print(f"[green]released[/green] everything of {environment.root}")


def _ec2(provider: Provider) -> Ec2Provider | None:
    """The provider as an EC2 provider, or None (boto3 is imported only when EC2 is used)."""
    if provider.kind != "ec2":
        return None
    from enosnet.providers.ec2 import Ec2Provider

    return provider if isinstance(provider, Ec2Provider) else None


def _print_plan(provider: Provider) -> None:
    if (ec2 := _ec2(provider)) is not None:
        lines = ec2.plan().lines()
    else:
        lines = [f"{spec.count} {provider.kind} hosts for role {role}" for role, spec in provider.config.roles.items()]
    console.print(f"plan for {provider.env.root} (dry run: nothing created)", soft_wrap=True)
    for line in lines:
        console.print(f"  {escape(line)}", soft_wrap=True)


def _sweep_ec2(*, region: str | None, expired: bool, any_owner: bool, yes: bool) -> None:
    from enosnet.providers import ec2_resources as res
    from enosnet.providers.ec2_aws import Aws

    aws = Aws(region)
    owner = None if any_owner else res.owner_id()
    found, problems = res.find(aws, res.tag_filters(owner=owner), expired_at=datetime.now(UTC) if expired else None)
    whose = "every owner" if any_owner else owner
    console.print(f"found in {aws.region} ({whose}{', expired only' if expired else ''}): {found.summary()}")
    if any_owner and found and not yes:
        typer.confirm("Release all of these, whoever created them?", abort=True)
    report = res.release(aws, found, deadline=time.monotonic() + 600)
    console.print(f"[green]released[/green] {report.released.summary()}")
    for problem in [*problems, *report.problems]:
        err_console.print(f"[red]not released:[/red] {escape(problem)}", soft_wrap=True)
    if problems or report.problems:
        raise typer.Exit(1)
