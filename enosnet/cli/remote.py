"""Commands and file copies on many hosts: ``enosnet run / push / pull / script / lrun``.

Output: hosts with identical output share one header (ClusterShell ``-b``
style) unless ``--no-group``; headers are green on success, yellow on success
with stderr, red on failure. The last lines are ``N succeeded, M failed, T
total`` and the failed hosts, one per line. Exit code 0 only if every host
succeeded.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from enosnet.cli.common import EnvOption, JsonOption, console, err_console, find_env
from enosnet.environment import Environment
from enosnet.errors import EnvironmentNotFound, UsageError
from enosnet.model import Host, Roles
from enosnet.remote import fanout
from enosnet.remote.results import HostResult, Results, Status, describe_failure

RoleOption = Annotated[list[str] | None, typer.Option(
    "--role", "-r", metavar="ROLE", help="Only hosts of this role (repeatable).")]
HostsFileOption = Annotated[Path | None, typer.Option(
    "--hosts-file", "-f", metavar="HOSTS_FILE",
    help="Plain hosts file ([user@]address[:port] per line, # comments); no environment needed.")]
KeyOption = Annotated[Path | None, typer.Option(
    "--identity", "-i", metavar="KEY", help="SSH private key for hosts from -f.")]
SshOption = Annotated[list[str] | None, typer.Option(
    "--ssh-option", "-o", metavar="OPTION",
    help="An OpenSSH option for every host, e.g. -o UserKnownHostsFile=kh (repeatable; wins over the host's own).")]
AttemptsOption = Annotated[int, typer.Option("--attempts", "-a", min=1, help="Tries per host on connection failures.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", "-t", min=0, help="Seconds per host (0: none).")]
ParallelOption = Annotated[int, typer.Option("--parallel", "-p", min=1, help="Hosts handled at once.")]
NoGroupOption = Annotated[bool, typer.Option("--no-group", help="One block per host, even when outputs are equal.")]
CommandArg = Annotated[list[str], typer.Argument(
    metavar="CMD", help="The command (after --); {host} becomes each host's name.")]
LocalCommandArg = Annotated[list[str], typer.Argument(
    metavar="CMD", help="A local command (after --); {host} and {address} work.")]
LocalFilesArg = Annotated[list[Path], typer.Argument(
    metavar="LOCAL_FILE", help="Local files or folders (after --); {host} works in them.")]
RemoteFilesArg = Annotated[list[str], typer.Argument(
    metavar="REMOTE_FILE", help="Remote files, folders or globs (after --).")]
RemoteDirOption = Annotated[str, typer.Option(
    "--dir", "-d", metavar="REMOTE_DIR", help="Remote folder, created if missing ({host} works).")]
LocalDirOption = Annotated[str, typer.Option(
    "--dir", "-d", metavar="LOCAL_DIR", help="Local folder; put {host} in it for one per host.")]
ScriptsArg = Annotated[list[Path], typer.Argument(
    metavar="SCRIPT", help="Local scripts (after --), run in order; {host} in their text.")]

CONTEXT = {"allow_interspersed_args": False}


def register(app: typer.Typer) -> None:
    app.command("run", context_settings=CONTEXT)(run)
    app.command("push", context_settings=CONTEXT)(push)
    app.command("pull", context_settings=CONTEXT)(pull)
    app.command("script", context_settings=CONTEXT)(script)
    app.command("lrun", context_settings=CONTEXT)(lrun)


def run(
    command: CommandArg,
    env: EnvOption = None, role: RoleOption = None, hosts_file: HostsFileOption = None, identity: KeyOption = None,
    ssh_option: SshOption = None, attempts: AttemptsOption = fanout.DEFAULT_ATTEMPTS,
    timeout: TimeoutOption = fanout.DEFAULT_TIMEOUT,
    parallel: ParallelOption = fanout.DEFAULT_CONCURRENCY, as_json: JsonOption = False, no_group: NoGroupOption = False,
) -> None:
    """Run a shell command on every host: enosnet run -r server -- uname -r"""
    text = " ".join(command)
    targets, environment = _targets(env, hosts_file, identity, ssh_option)
    with _progress(as_json) as tick:
        results = fanout.run_command(text, roles=targets, role=role or None, timeout=timeout, attempts=attempts,
                                     concurrency=parallel, on_result=tick, env=environment)
    _report(results, what={"run": text}, as_json=as_json, group=not no_group)


def push(
    files: LocalFilesArg,
    remote_dir: RemoteDirOption,
    env: EnvOption = None, role: RoleOption = None, hosts_file: HostsFileOption = None, identity: KeyOption = None,
    ssh_option: SshOption = None, attempts: AttemptsOption = fanout.DEFAULT_ATTEMPTS,
    timeout: TimeoutOption = fanout.DEFAULT_TIMEOUT,
    parallel: ParallelOption = fanout.DEFAULT_CONCURRENCY, as_json: JsonOption = False, no_group: NoGroupOption = False,
) -> None:
    """Copy local files to every host: enosnet push -d /opt/tool -- tool.conf"""
    targets, environment = _targets(env, hosts_file, identity, ssh_option)
    with _progress(as_json) as tick:
        results = fanout.push(files, remote_dir, roles=targets, role=role or None, timeout=timeout,
                              attempts=attempts, concurrency=parallel, on_result=tick, env=environment)
    _report(results, what={"push": [str(f) for f in files], "dir": remote_dir}, as_json=as_json, group=not no_group)


def pull(
    files: RemoteFilesArg,
    local_dir: LocalDirOption,
    env: EnvOption = None, role: RoleOption = None, hosts_file: HostsFileOption = None, identity: KeyOption = None,
    ssh_option: SshOption = None, attempts: AttemptsOption = fanout.DEFAULT_ATTEMPTS,
    timeout: TimeoutOption = fanout.DEFAULT_TIMEOUT,
    parallel: ParallelOption = fanout.DEFAULT_CONCURRENCY, as_json: JsonOption = False, no_group: NoGroupOption = False,
) -> None:
    """Copy files from every host: enosnet pull -d results/{host} -- /var/log/x"""
    targets, environment = _targets(env, hosts_file, identity, ssh_option)
    with _progress(as_json) as tick:
        results = fanout.pull(files, local_dir, roles=targets, role=role or None, timeout=timeout,
                              attempts=attempts, concurrency=parallel, on_result=tick, env=environment)
    _report(results, what={"pull": files, "dir": local_dir}, as_json=as_json, group=not no_group)


def script(
    scripts: ScriptsArg,
    env: EnvOption = None, role: RoleOption = None, hosts_file: HostsFileOption = None, identity: KeyOption = None,
    ssh_option: SshOption = None, attempts: AttemptsOption = fanout.DEFAULT_ATTEMPTS,
    timeout: TimeoutOption = fanout.DEFAULT_TIMEOUT,
    parallel: ParallelOption = fanout.DEFAULT_CONCURRENCY, as_json: JsonOption = False, no_group: NoGroupOption = False,
) -> None:
    """Run local scripts on every host without leaving them there: enosnet script -- setup.sh"""
    targets, environment = _targets(env, hosts_file, identity, ssh_option)
    with _progress(as_json) as tick:
        results = fanout.script(scripts, roles=targets, role=role or None, timeout=timeout, attempts=attempts,
                                concurrency=parallel, on_result=tick, env=environment)
    _report(results, what={"script": [str(s) for s in scripts]}, as_json=as_json, group=not no_group)


def lrun(
    command: LocalCommandArg,
    env: EnvOption = None, role: RoleOption = None, hosts_file: HostsFileOption = None,
    timeout: TimeoutOption = fanout.DEFAULT_TIMEOUT, parallel: ParallelOption = fanout.DEFAULT_CONCURRENCY,
    as_json: JsonOption = False, no_group: NoGroupOption = False,
) -> None:
    """Run a command here once per host: enosnet lrun -- ping -c1 {address}"""
    text = " ".join(command)
    targets, environment = _targets(env, hosts_file, None, None)
    with _progress(as_json) as tick:
        results = fanout.lrun(text, roles=targets, role=role or None, timeout=timeout, concurrency=parallel,
                              on_result=tick, env=environment)
    _report(results, what={"lrun": text}, as_json=as_json, group=not no_group)


# ── targets ─────────────────────────────────────────────────────────────────


def _targets(env: Path | None, hosts_file: Path | None, identity: Path | None,
             ssh_options: list[str] | None) -> tuple[Roles, Environment | None]:
    """Hosts from -f (no environment needed), else the environment's roles; -o options put first.

    The environment comes back too (None with -f): each run's results are recorded in its runs/.
    """
    roles, environment = _hosts(env, hosts_file, identity)
    if not ssh_options:
        return roles, environment
    first = shlex.join(arg for option in ssh_options for arg in ("-o", option))
    return Roles({role: [_with_options(h, first) for h in hosts] for role, hosts in roles.items()}), environment


def _with_options(host: Host, first: str) -> Host:
    own = str(host.extra.get("ansible_ssh_common_args", "") or "")
    return host.with_extra(ansible_ssh_common_args=f"{first} {own}".strip())


def _hosts(env: Path | None, hosts_file: Path | None, identity: Path | None) -> tuple[Roles, Environment | None]:
    if hosts_file is not None:
        from enosnet.providers.static import read_hosts_file

        hosts = read_hosts_file(hosts_file)
        if identity is not None:
            if not identity.is_file():
                raise UsageError(f"--identity {identity}: no such key file")
            hosts = [Host(h.address, user=h.user, port=h.port, keyfile=str(identity.absolute())) for h in hosts]
        return Roles({"hosts": hosts}), None
    if identity is not None:
        raise UsageError("--identity only applies to hosts from --hosts-file (an environment has its own key)")
    environment = find_env(env)
    deployed = environment.state().deployed
    if deployed is None:
        raise EnvironmentNotFound(f"{environment.root}: no hosts acquired (run `enosnet deploy` first)")
    return deployed, environment


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[HostResult], None]]:
    """A 'done/total' spinner on stderr when it is a terminal; yields the per-result callback."""
    if quiet or not sys.stderr.isatty():
        yield lambda result: None
        return
    done = [0]
    with err_console.status("running…") as status:
        def tick(result: HostResult) -> None:
            done[0] += 1
            status.update(f"{done[0]} hosts done, last {result.host.name}")

        yield tick


# ── output ──────────────────────────────────────────────────────────────────


def _report(results: Results[HostResult], *, what: dict[str, Any], as_json: bool, group: bool) -> None:
    failed = [h.name for h in results.failed]
    if as_json:
        doc = {**what, "hosts": [r.to_dict() for r in results.values()],
               "summary": {"succeeded": len(results.ok), "failed": len(failed), "total": len(results)},
               "failed": failed}
        typer.echo(json.dumps(doc, indent=2))
    else:
        for members in _blocks(results.values(), group):
            _print_block(members)
        console.print(f"{len(results.ok)} succeeded, {len(failed)} failed, {len(results)} total",
                      markup=False, highlight=False, soft_wrap=True)
        for name in failed:
            console.print(name, markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _blocks(results: Iterable[HostResult], group: bool) -> list[list[HostResult]]:
    """Results gathered by identical outcome (status, rc, output, message), in first-host order."""
    if not group:
        return [[r] for r in results]
    blocks: dict[tuple[Any, ...], list[HostResult]] = {}
    for r in results:
        message = r.message.replace(r.host.address, "{address}") if r.message else ""
        blocks.setdefault((r.status, r.rc, r.stdout, r.stderr, message), []).append(r)
    return list(blocks.values())


def _print_block(members: list[HostResult]) -> None:
    first = members[0]
    style = "red" if not first.ok else "yellow" if first.stderr.strip() else "green"
    title = f"{fold_names([r.host.name for r in members])} ({len(members)})"
    if not first.ok:
        title += f": {_failure_detail(first)}"
    rule = "-" * min(len(title), 60)
    console.print(Text(f"{rule}\n{title}\n{rule}", style=style), soft_wrap=True)
    if first.stdout:
        console.print(Text(first.stdout.rstrip("\n")), soft_wrap=True, highlight=False)
    if first.stderr.strip() and first.status is not Status.UNREACHABLE:  # its message already says it
        console.print(Text(first.stderr.rstrip("\n"), style=style), soft_wrap=True, highlight=False)


def _failure_detail(result: HostResult) -> str:
    if result.status is Status.FAILED:
        return f"failed, rc={result.rc}, attempts={result.attempts}"
    return f"{result.status}: {describe_failure(result)}"


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def fold_names(names: list[str]) -> str:
    """Host names folded ClusterShell-style: numbered names sharing a prefix become one range.

    >>> fold_names(["client-0", "client-1", "client-2", "client-5", "server-0", "db"])
    'client-[0-2,5], server-0, db'
    """
    order: dict[str, list[str]] = {}
    for name in names:
        match = _NUMBERED.match(name)
        key = f"{match[1]}\0{len(match[2]) if match[2].startswith('0') and len(match[2]) > 1 else 0}" \
            if match else f"\1{name}"
        order.setdefault(key, []).append(name)
    return ", ".join(_fold_one(key, members) for key, members in order.items())


def _fold_one(key: str, members: list[str]) -> str:
    if key.startswith("\1") or len(members) == 1:
        return ", ".join(members)
    prefix = key.split("\0")[0]
    numbers = sorted({m[len(prefix):] for m in members}, key=int)
    spans: list[list[str]] = []
    for number in numbers:
        if spans and int(number) == int(spans[-1][-1]) + 1:
            spans[-1].append(number)
        else:
            spans.append([number])
    parts = [s[0] if len(s) == 1 else f"{s[0]}-{s[-1]}" for s in spans]
    return f"{prefix}[{','.join(parts)}]"
