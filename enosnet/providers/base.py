"""What every provider does: acquire hosts as roles, release them, keep state.

>>> from enosnet.config import parse_config
>>> from enosnet.providers import make_provider
>>> cfg = parse_config("name: demo\\nprovider: {kind: local}\\nroles: {server: 1}")
>>> provider = make_provider(cfg, Environment(Path("/tmp/doc-env")))
>>> provider.kind
'local'

With a provider, ``with provider as (roles, networks): ...`` acquires on entry
and releases on exit, also when the block raises.
"""

from __future__ import annotations

import abc
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path  # noqa: F401  (doctest)
from types import TracebackType
from typing import Any, ClassVar

import yaml

from enosnet.config import EnvConfig
from enosnet.environment import Environment, write_atomic
from enosnet.errors import EnvironmentNotFound
from enosnet.inventory import write_inventory
from enosnet.model import Host, Networks, Roles


@dataclass(frozen=True)
class HostStatus:
    """One host as ``status`` sees it."""

    host: Host
    roles: tuple[str, ...]
    reachable: bool
    detail: str = ""


class Provider(abc.ABC):
    """Acquires hosts for one environment and releases them.

    Subclasses implement ``_acquire`` and ``_release``; ``init`` and
    ``destroy`` wrap them with state bookkeeping. Every acquired resource must
    be named in the state (``self.env.update_state``) before the provider waits
    on it, so that ``destroy`` after a crash at any point releases it.
    """

    kind: ClassVar[str]

    def __init__(self, config: EnvConfig, env: Environment) -> None:
        self.config = config
        self.env = env

    # ── the interface ──────────────────────────────────────────────────────

    def init(self, *, force: bool = False) -> tuple[Roles, Networks]:
        """Acquire the hosts the config asks for, reusing what exists; idempotent."""
        self.check()
        self.env.create()
        state = self.env.state()
        if not force and state.deployed is not None and self._still_there(state.deployed):
            return state.deployed, state.networks
        self.env.update_state(kind=self.kind, name=self.config.name, released=False, acquired=False,
                              config=self.config.model_dump(mode="json"))
        write_atomic(self.env.config_file, yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        roles, networks = self._acquire()
        self.env.update_state(roles=roles.to_dict(), networks=networks.to_list(), acquired=True)
        write_inventory(self.env, roles)
        return roles, networks

    def destroy(self) -> None:
        """Release everything the state names; safe to call any number of times."""
        roles = self.env.state().roles
        if roles.all():
            from enosnet.remote.ssh import close_connections  # the controller's side of the hosts

            close_connections(roles.all())
        self._release()
        self.env.update_state(released=True, acquired=False, roles={}, networks=[])
        self.env.inventory_file.unlink(missing_ok=True)

    def hosts(self) -> tuple[Roles, Networks]:
        """The hosts acquired earlier, from the state (nothing is contacted)."""
        state = self.env.state()
        if not state.acquired:
            raise EnvironmentNotFound(f"{self.env.root}: no hosts acquired (deploy first)")
        return state.roles, state.networks

    def status(self) -> list[HostStatus]:
        """Each host with whether its SSH port answers with an SSH banner."""
        roles, _ = self.hosts()
        hosts = roles.all()
        with ThreadPoolExecutor(max_workers=min(64, max(1, len(hosts)))) as pool:
            probes = list(pool.map(probe_ssh, hosts))
        return [HostStatus(h, roles.roles_of(h), ok, detail) for h, (ok, detail) in zip(hosts, probes, strict=True)]

    @property
    def waits_for_ssh(self) -> bool:
        """Whether ``init`` returns only once every host answers on SSH (else installing could reach nothing)."""
        return True

    # ── for subclasses ─────────────────────────────────────────────────────

    def check(self) -> None:  # noqa: B027  (a hook: most providers need no check)
        """Fail before anything is written or acquired when the provider cannot work here."""

    @abc.abstractmethod
    def _acquire(self) -> tuple[Roles, Networks]:
        """Create the hosts; record each resource in the state before waiting on it."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Release whatever the state names; tolerate resources already gone."""

    def _still_there(self, roles: Roles) -> bool:
        """Whether previously acquired hosts still exist (so ``init`` can reuse them)."""
        return True

    @property
    def provider_state(self) -> dict[str, Any]:
        return dict(self.env.state().provider)

    def save_provider_state(self, **changes: Any) -> None:
        provider = self.provider_state
        provider.update(changes)
        self.env.update_state(provider=provider)

    # ── context manager ────────────────────────────────────────────────────

    def __enter__(self) -> tuple[Roles, Networks]:
        try:
            return self.init()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env.root})"


def probe_ssh(host: Host, timeout: float = 2.0, connect_timeout: float | None = None) -> tuple[bool, str]:
    """Whether ``host`` answers on its SSH port with an SSH banner."""
    try:
        with socket.create_connection((host.address, host.port), timeout=connect_timeout or timeout) as sock:
            sock.settimeout(timeout)
            banner = sock.recv(64)
    except OSError as exc:
        return False, exc.strerror or type(exc).__name__
    if banner.startswith(b"SSH-"):
        return True, banner.decode(errors="replace").strip()
    return False, "no SSH banner"


def wait_ssh(hosts: list[Host], deadline: float, interval: float = 0.02) -> list[Host]:
    """Wait until every host answers on SSH or ``deadline`` (monotonic) passes.

    Returns the hosts that never answered. Connection attempts time out fast:
    a SYN sent before the host's address is up is otherwise retransmitted only
    after TCP's initial 1 s timeout.
    """
    pending = list(hosts)
    while pending and time.monotonic() < deadline:
        with ThreadPoolExecutor(max_workers=min(64, len(pending))) as pool:
            answers = list(pool.map(lambda h: probe_ssh(h, timeout=2.0, connect_timeout=0.1)[0], pending))
        pending = [h for h, ok in zip(pending, answers, strict=True) if not ok]
        if pending:
            time.sleep(interval)
    return pending

