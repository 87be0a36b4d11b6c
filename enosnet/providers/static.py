"""The static provider: machines that already exist, reachable over SSH.

Nothing is acquired or released: ``init`` turns the config's host list (or a
plain hosts file) into roles, and ``destroy`` forgets the environment.

>>> from pathlib import Path
>>> p = Path("/tmp/doc-hosts.txt"); _ = p.write_text("# lab\\n10.0.0.5\\nroot@10.0.0.6:2222  # spare\\n")
>>> [repr(h) for h in read_hosts_file(p)]
['Host(root@10.0.0.5)', 'Host(root@10.0.0.6:2222)']
"""

from __future__ import annotations

import re
from pathlib import Path

from enosnet.config import StaticProviderConfig
from enosnet.errors import ConfigError
from enosnet.model import Host, Networks, Roles
from enosnet.providers.base import Provider

_LINE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<address>\[[^\]]+\]|[^:\s]+)(?::(?P<port>\d+))?$")


def parse_hosts_line(line: str, *, user: str = "root", where: str = "") -> Host | None:
    """One hosts-file line (``[user@]address[:port]``, ``#`` comments) as a Host, or None if blank."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    match = _LINE.match(text)
    port = int(match["port"]) if match and match["port"] else 22
    if not match or not 0 < port < 65536:
        raise ConfigError(f"{where}: not a host: {text!r} (expected [user@]address[:port])")
    return Host(match["address"].strip("[]"), user=match["user"] or user, port=port)


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

    def _acquire(self) -> tuple[Roles, Networks]:
        s = self.settings
        common = {"ansible_python_interpreter": s.python}
        by_role: dict[str, list[Host]] = {}
        for spec in s.hosts:
            host = Host(spec.address, alias=spec.alias, user=spec.user, port=spec.port,
                        keyfile=spec.keyfile or s.keyfile, extra={**common, **spec.vars})
            for role in spec.roles:
                by_role.setdefault(role, []).append(host)
        if s.hosts_file:
            for h in read_hosts_file(s.hosts_file, user=s.user):
                host = Host(h.address, user=h.user, port=h.port, keyfile=s.keyfile, extra=common)
                by_role.setdefault(s.hosts_file_role, []).append(host)
        return Roles(by_role), Networks()

    def _release(self) -> None:
        """Nothing to release: the machines are not ours."""
