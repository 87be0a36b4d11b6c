"""The static provider: machines that already exist, reachable over SSH.

Nothing is acquired or released: ``init`` turns the config's host list (or a
plain hosts file) into roles, and ``destroy`` forgets the environment.

>>> from pathlib import Path
>>> p = Path("/tmp/doc-hosts.txt"); _ = p.write_text("# lab\\n10.0.0.5\\nroot@10.0.0.6:2222  # spare\\n")
>>> [repr(h) for h in read_hosts_file(p)]
['Host(root@10.0.0.5)', 'Host(root@10.0.0.6:2222)']
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from enosnet.config import StaticProviderConfig
from enosnet.errors import ConfigError
from enosnet.model import Host, Networks, Roles
from enosnet.providers.base import Provider

_LINE = re.compile(r"(?:(?P<user>[^@\s]+)@)?(?P<address>\[[^\]]+\]|[^:\s@]+)(?::(?P<port>\d+))?", re.ASCII)


def parse_hosts_line(line: str, *, user: str = "root", where: str = "") -> Host | None:
    """One hosts-file line (``[user@]address[:port]``, ``#`` comments) as a Host, or None if blank.

    A bare IPv6 address stands alone; with a port it is written ``[2001:db8::1]:2222``.
    """
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    login, _, address = text.rpartition("@")
    try:
        if _is_ipv6(address):
            return Host(address, user=login or user)
        match = _LINE.fullmatch(text)
        port = int(match["port"]) if match and match["port"] else 22
        if not match or not 0 < port < 65536:
            raise ConfigError(f"not a host: {text!r} (expected [user@]address[:port])")
        return Host(match["address"].strip("[]"), user=match["user"] or user, port=port)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def read_hosts_file(path: str | Path, *, user: str = "root") -> list[Host]:
    """The hosts listed in a plain hosts file; raises ``ConfigError`` naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the hosts file: {exc.strerror}") from None
    hosts = [parse_hosts_line(line, user=user, where=f"{path}:{n}") for n, line in enumerate(lines, 1)]
    found = [h for h in hosts if h is not None]
    if not found:
        raise ConfigError(f"{path}: no hosts in the file")
    return found


class StaticProvider(Provider):
    """Existing machines (``provider: {kind: static}``)."""

    kind = "static"

    @property
    def settings(self) -> StaticProviderConfig:
        assert isinstance(self.config.provider, StaticProviderConfig)
        return self.config.provider

    def check(self) -> None:
        self._check_counts(self._by_role())

    def _acquire(self) -> tuple[Roles, Networks]:
        return Roles(self._by_role()), Networks()

    def _by_role(self) -> dict[str, list[Host]]:
        s = self.settings
        common = {"ansible_python_interpreter": s.python, "enosnet_provider": "static"}
        by_role: dict[str, list[Host]] = {}
        for spec in s.hosts:
            host = Host(spec.address, alias=spec.alias, user=spec.user, port=spec.port,
                        keyfile=_expand(spec.keyfile or s.keyfile), extra={**common, **spec.vars})
            for role in spec.roles:
                by_role.setdefault(role, []).append(host)
        if s.hosts_file:
            for h in read_hosts_file(s.hosts_file, user=s.user):
                host = Host(h.address, user=h.user, port=h.port, keyfile=_expand(s.keyfile), extra=common)
                by_role.setdefault(s.hosts_file_role, []).append(host)
        return by_role

    def _check_counts(self, by_role: dict[str, list[Host]]) -> None:
        """``roles: {server: 2}`` in a static config asks for at least that many listed hosts in the role."""
        short = [(f"roles.{role}", f"needs {spec.count} hosts, the static provider lists "
                                   f"{len(by_role.get(role, []))}")
                 for role, spec in self.config.roles.items() if len(by_role.get(role, [])) < spec.count]
        if short:
            raise ConfigError("not enough static hosts for the roles", short)

    def _still_there(self, roles: Roles) -> bool:
        return False  # re-reading the config and hosts file costs nothing and picks up their changes

    def _release(self) -> None:
        """Nothing to release: the machines are not ours."""


def _expand(keyfile: str | None) -> str | None:
    """A key path with ``~`` expanded, so Ansible and ssh read the same file from any directory."""
    return str(Path(keyfile).expanduser().absolute()) if keyfile else None
