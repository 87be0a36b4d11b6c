"""Ansible from Python through ansible-runner: playbooks, and module calls collected in a block.

Runs go through ``ansible_runner.run`` (its documented interface); per-host,
per-task results come from its event stream. Defaults that make Ansible fast:
pipelining, forks sized to the hosts (capped), the fan-out's SSH connection
sharing (ControlMaster/ControlPersist), no fact gathering unless asked, and the
Python interpreter set explicitly. With an environment, each run's artifacts
(and ``events.jsonl``) are kept in a fresh folder of its ``runs/``.

Example (needs reachable hosts)::

    with actions(roles=roles, role="server", env=env) as a:
        a.apt(name="iperf3", state="present")
        a.community.general.modprobe(name="tcp_bbr")
    print(a.results.ok)

    run_playbook("playbooks/site.yml", roles=roles, env=env, extra_vars={"x": 1})
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from enosnet.environment import Environment
from enosnet.errors import ConfigError, RemoteError
from enosnet.inventory import host_vars
from enosnet.model import FrozenVars, Host, Roles
from enosnet.remote.results import (
    AnsibleHostResult,
    AnsibleResults,
    EventKind,
    HostEvent,
    Status,
    TaskResult,
)
from enosnet.remote.ssh import SshOptions, ansible_ssh_args, ensure_control_dir
from enosnet.remote.targets import HostsLike, RoleSelector, as_roles, select_hosts

EventCallback = Callable[[HostEvent], None]


def bundled(*parts: str) -> Path:
    """A file or folder shipped in the package's ``playbooks/`` (its playbooks, and ``roles/`` beside them).

    Found with :mod:`importlib.resources`, so it is the same from a checkout, an
    editable install or a wheel. Ansible reads the files itself, so they must
    be on a file system (not inside a zip).

    >>> bundled("deploy.yml").name, bundled("roles", "iperf3").is_dir()
    ('deploy.yml', True)
    """
    found = importlib.resources.files("enosnet").joinpath("playbooks", *parts)
    if not isinstance(found, Path):
        raise ConfigError(f"enosnet/playbooks/{'/'.join(parts)}: enosnet is installed where Ansible cannot read "
                          "its playbooks (inside a zip); install it as files (pip install, not a zipapp)")
    return found


@dataclass(frozen=True)
class AnsibleOptions:
    """Knobs of an Ansible run.

    ``max_forks`` caps the forks (one per host otherwise); ``task_timeout`` and
    ``timeout`` (the whole run) are in seconds, 0 for none; ``ssh_retries`` is
    Ansible's own retry of failed connections.
    """

    max_forks: int = 100
    pipelining: bool = True
    gather_facts: bool = False
    python: str = "/usr/bin/python3"
    ssh_retries: int = 3
    task_timeout: int = 0
    timeout: int = 0
    verbosity: int = 0
    roles_path: tuple[Path, ...] = ()
    envvars: Mapping[str, str] = field(default_factory=FrozenVars)


def _private_vars_file(extra_vars: Mapping[str, Any]) -> str | None:
    """Extra variables in a fresh 0600 file (None when there are none), removed once the run ends.

    ansible-runner would put them on ``ansible-playbook``'s command line, which
    any local user can read in ``/proc`` and which it saves in the run's
    artifacts: the agents' secret is among them.
    """
    if not extra_vars:
        return None
    fd, path = tempfile.mkstemp(prefix="enosnet-vars-", suffix=".json")  # 0600, a name no one can predict
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(extra_vars), handle, default=str)
    return path


def run_playbook(path: str | Path, *, roles: HostsLike, role: RoleSelector = None,
                 extra_vars: Mapping[str, Any] | None = None, env: Environment | None = None,
                 tags: Sequence[str] = (), on_event: EventCallback | None = None, strict: bool = True,
                 options: AnsibleOptions | None = None, ssh: SshOptions | None = None) -> AnsibleResults:
    """Run the playbook at ``path`` on ``roles`` (narrowed to ``role``) and return per-host results.

    The inventory has one group per role, so plays can say ``hosts: server``.
    With ``strict`` (the default) a failed or unreachable host raises
    ``HostsFailed`` carrying the results. Roles are looked up in ``roles/``
    beside the playbook's folder and its parent, then ``options.roles_path``.

    >>> run_playbook("/nonexistent.yml", roles=[Host("198.18.0.2")])
    Traceback (most recent call last):
    ...
    enosnet.errors.ConfigError: /nonexistent.yml: no such playbook
    """
    playbook = Path(path).absolute()
    if not playbook.is_file():
        raise ConfigError(f"{path}: no such playbook")
    hosts = select_hosts(roles, role=role)
    options = options or AnsibleOptions()
    search = (playbook.parent / "roles", playbook.parent.parent / "roles", *options.roles_path)
    job = _Job(hosts, as_roles(roles), options, ssh or SshOptions(), on_event)
    limit = ",".join(h.name for h in hosts) if role is not None else None
    results = job.run(str(playbook), env=env, kind="playbook", extra_vars=extra_vars, tags=tags,
                      roles_path=[p for p in search if p.is_dir()], limit=limit)
    return results.raise_for_failures() if strict else results


class Actions:
    """Module calls collected in an ``actions`` block: ``a.<module>(**args)``.

    Any module works, including collection modules by dotted name
    (``a.ansible.posix.sysctl(...)``) or by string (``a.call("ansible.posix.sysctl", {...})``).
    A positional string is the module's free-form argument (``a.shell("uname -r")``).
    ``task_name=`` names the task (default ``<module> #<n>``); ``task=`` adds task
    keywords (``{"become": True, "when": "..."}``). ``results`` is set when the block ends.
    """

    def __init__(self) -> None:
        self.tasks: list[dict[str, Any]] = []
        self.results: AnsibleResults | None = None

    def call(self, module: str, args: Mapping[str, Any] | str | None = None, /, *, task_name: str | None = None,
             task: Mapping[str, Any] | None = None) -> str:
        """Add one module call; returns the task's name."""
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", module):
            raise ConfigError(f"{module!r}: not an Ansible module name")
        name = task_name or f"{module} #{len(self.tasks) + 1}"
        entry: dict[str, Any] = {"name": name, **(task or {})}
        if isinstance(args, str):
            entry[module] = args
        else:
            entry[module] = dict(args or {})
        self.tasks.append(entry)
        return name

    def __getattr__(self, name: str) -> _Module:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Module(self, name)


class _Module:
    """A module name being spelled out (``a.community.general.x``), called to add the task."""

    def __init__(self, actions: Actions, name: str) -> None:
        self._actions = actions
        self._name = name

    def __getattr__(self, part: str) -> _Module:
        if part.startswith("_"):
            raise AttributeError(part)
        return _Module(self._actions, f"{self._name}.{part}")

    def __call__(self, free_form: str | None = None, /, *, task_name: str | None = None,
                 task: Mapping[str, Any] | None = None, **args: Any) -> str:
        if free_form is not None:
            entry: Mapping[str, Any] | str = free_form
            if args:
                task = {**(task or {}), "args": args}
        else:
            entry = args
        return self._actions.call(self._name, entry, task_name=task_name, task=task)


@contextmanager
def actions(*, roles: HostsLike, role: RoleSelector = None, env: Environment | None = None,
            extra_vars: Mapping[str, Any] | None = None, gather_facts: bool = False,
            on_event: EventCallback | None = None, strict: bool = True,
            options: AnsibleOptions | None = None, ssh: SshOptions | None = None) -> Iterator[Actions]:
    """Collect module calls in a block and run them as one play when it ends without an exception.

    If the block raises, nothing runs. After the block ``a.results`` holds the
    per-host, per-task results; with ``strict`` (the default) a failed host
    raises ``HostsFailed``.

    >>> with actions(roles=[Host("198.18.0.2")]) as a:
    ...     raise KeyError("changed my mind")
    Traceback (most recent call last):
    ...
    KeyError: 'changed my mind'
    """
    hosts = select_hosts(roles, role=role)
    collected = Actions()
    yield collected
    if not collected.tasks:
        collected.results = AnsibleResults({h: AnsibleHostResult(h, Status.OK) for h in hosts})
        return
    options = options or AnsibleOptions()
    play = {"name": "enosnet actions", "hosts": "all", "gather_facts": gather_facts, "tasks": collected.tasks}
    job = _Job(hosts, Roles({"targets": hosts}), options, ssh or SshOptions(), on_event)
    collected.results = job.run([play], env=env, kind="actions", extra_vars=extra_vars,
                                roles_path=list(options.roles_path))
    if strict:
        collected.results.raise_for_failures()


# ── one ansible-runner job ──────────────────────────────────────────────────

_OUTCOMES = {
    "runner_on_ok": Status.OK,
    "runner_on_failed": Status.FAILED,
    "runner_on_unreachable": Status.UNREACHABLE,
    "runner_on_skipped": Status.SKIPPED,
}


class _Job:
    """Builds the inventory and settings, runs ansible-runner, and turns its events into results."""

    def __init__(self, hosts: Sequence[Host], roles: Roles, options: AnsibleOptions, ssh: SshOptions,
                 on_event: EventCallback | None) -> None:
        self.hosts = tuple(hosts)
        self.roles = roles
        self.options = options
        self.ssh = ssh
        self.on_event = on_event
        self.by_name = {h.name: h for h in roles.all()}
        self.tasks: dict[Host, list[TaskResult]] = {h: [] for h in self.hosts}
        self.events_file: TextIO | None = None

    def run(self, playbook: str | list[dict[str, Any]], *, env: Environment | None, kind: str,
            extra_vars: Mapping[str, Any] | None = None, tags: Sequence[str] = (),
            roles_path: Sequence[Path] = (), limit: str | None = None) -> AnsibleResults:
        import ansible_runner  # heavy: imported only when Ansible actually runs

        ensure_control_dir(self.ssh)
        folder = env.new_run_dir(kind) if env else Path(tempfile.mkdtemp(prefix="enosnet-ansible-"))
        vars_file = _private_vars_file(extra_vars or {})
        try:
            with open(folder / "events.jsonl", "w") as self.events_file:
                runner = ansible_runner.run(
                    private_data_dir=str(folder), playbook=playbook, inventory=self.inventory(),
                    envvars=self.envvars(roles_path), forks=self.forks(),
                    cmdline=f"-e @{shlex.quote(vars_file)}" if vars_file else None,
                    limit=limit, tags=",".join(tags) or None, quiet=True,
                    verbosity=self.options.verbosity or None, timeout=self.options.timeout or None,
                    event_handler=self.handle, suppress_env_files=True, ident="ansible")
            return self.results(runner, folder if env else None)
        finally:
            self.events_file = None
            if vars_file:
                os.unlink(vars_file)
            if env is None:
                shutil.rmtree(folder, ignore_errors=True)

    def forks(self) -> int:
        return max(1, min(len(self.hosts), self.options.max_forks))

    def inventory(self) -> dict[str, Any]:
        hosts = {h.name: self.host_vars(h) for h in self.roles.all()}
        groups = {role: {"hosts": {h.name: None for h in members}} for role, members in self.roles.items()
                  if role != "all"}
        return {"all": {"hosts": hosts, "children": groups}}

    def host_vars(self, host: Host) -> dict[str, Any]:
        out = host_vars(host)
        out.setdefault("ansible_python_interpreter", self.options.python)
        # the host's own SSH arguments go first inside ansible_ssh_args (OpenSSH keeps first values)
        out["ansible_ssh_args"] = ansible_ssh_args(host, self.ssh)
        out["ansible_ssh_common_args"] = ""
        out["ansible_host_key_checking"] = True
        return out

    def envvars(self, roles_path: Sequence[Path]) -> dict[str, str]:
        o = self.options
        env = {
            "ANSIBLE_PIPELINING": str(o.pipelining),
            "ANSIBLE_GATHERING": "implicit" if o.gather_facts else "explicit",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_SSH_RETRIES": str(o.ssh_retries),
            "ANSIBLE_TIMEOUT": str(max(1, round(self.ssh.connect_timeout))),
            "ANSIBLE_PYTHON_INTERPRETER": o.python,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_LOCALHOST_WARNING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_TASK_TIMEOUT": str(o.task_timeout),
            "PATH": _search_path(),
        }
        if roles_path:
            env["ANSIBLE_ROLES_PATH"] = ":".join(str(p) for p in roles_path)
        env.update(o.envvars)
        return env

    # ── events ─────────────────────────────────────────────────────────────

    def handle(self, event: dict[str, Any]) -> bool:
        """ansible-runner's event_handler: record task outcomes, forward typed events."""
        name = event.get("event", "")
        data = event.get("event_data") or {}
        typed: HostEvent | None = None
        if name == "playbook_on_play_start":
            typed = HostEvent(EventKind.PLAY, task=str(data.get("play", "")))
        elif name == "playbook_on_task_start":
            typed = HostEvent(EventKind.TASK, task=str(data.get("task", "")))
        elif name in _OUTCOMES and data.get("host") in self.by_name:
            typed = self.record(_OUTCOMES[name], data)
        if typed is not None:
            if self.events_file is not None:
                self.events_file.write(json.dumps(typed.to_dict()) + "\n")
            if self.on_event is not None:
                self.on_event(typed)
        return True

    def record(self, status: Status, data: Mapping[str, Any]) -> HostEvent:
        host = self.by_name[data["host"]]
        res = data.get("res") or {}
        changed = bool(res.get("changed")) if isinstance(res, dict) else False
        message = _message(res) if status in (Status.FAILED, Status.UNREACHABLE) else ""
        if status is Status.FAILED and data.get("ignore_errors"):
            status, message = Status.OK, f"(ignored) {message}"
        action = str(data.get("resolved_action") or data.get("task_action") or "")
        result = TaskResult(host, str(data.get("task", "")), action, status, changed, message,
                            FrozenVars(res if isinstance(res, dict) else {}))
        self.tasks.setdefault(host, []).append(result)
        kind = EventKind.CHANGED if status is Status.OK and changed else EventKind(str(status))
        return HostEvent(kind, host, result.task, message, {"action": action})

    def results(self, runner: Any, artifacts: Path | None) -> AnsibleResults:
        if runner.status in ("failed", "timeout") and not any(self.tasks.values()):
            self.raise_run_error(runner)
        per_host = {h: self.host_result(h, runner.status) for h in self.hosts}
        return AnsibleResults(per_host, artifacts=artifacts, runner_status=runner.status, rc=runner.rc)

    def host_result(self, host: Host, runner_status: str) -> AnsibleHostResult:
        tasks = tuple(self.tasks.get(host, ()))
        bad = next((t for t in tasks if not t.ok), None)
        if bad is not None:
            return AnsibleHostResult(host, bad.status, tasks, f"task {bad.task!r} ({bad.action}): {bad.message}")
        if runner_status == "timeout":
            return AnsibleHostResult(host, Status.TIMEOUT, tasks, f"the run timed out after {self.options.timeout} s")
        return AnsibleHostResult(host, Status.OK, tasks)

    def raise_run_error(self, runner: Any) -> None:
        """Ansible failed before any task ran: syntax, unknown module or role, bad inventory."""
        try:
            text = runner.stdout.read()
        except (OSError, ValueError, AttributeError):
            text = ""
        errors = [line.strip() for line in text.splitlines() if line.lstrip().startswith(("ERROR!", "[ERROR]"))]
        detail = "\n".join(errors) or text.strip()[-2000:] or f"ansible-runner status {runner.status}"
        if runner.status == "timeout":
            raise RemoteError(f"Ansible timed out after {self.options.timeout} s before any task finished")
        raise ConfigError(f"Ansible could not run: {detail}")


def _message(res: Any) -> str:
    """What a failed module said, on one line (its msg, else its stderr)."""
    if not isinstance(res, dict):
        return str(res)
    parts = [str(res.get("msg") or "").strip()]
    for key in ("stderr", "module_stderr"):
        text = str(res.get(key) or "").strip()
        if text and text not in parts[0]:
            parts.append(text.splitlines()[-1])
            break
    message = ": ".join(p for p in parts if p) or "failed"
    return message if len(message) <= 600 else message[:597] + "..."


def _search_path() -> str:
    """PATH with this interpreter's folder first, so a virtualenv's ansible-playbook is the one that runs."""
    here = str(Path(sys.executable).parent)
    rest = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if p and p != here]
    return ":".join([here, *rest])
