"""Hosts, roles and networks: the values providers hand to everything else.

>>> web = Host("198.18.0.2", alias="server-0")
>>> roles = Roles({"server": [web], "client": [Host("198.18.0.3", alias="client-0")]})
>>> [h.name for h in roles["server"]]
['server-0']
>>> len(roles.all())
2
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from enosnet.errors import ConfigError

_ADDRESS = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9_.:%-]{0,252}", re.ASCII)
_ALIAS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}", re.ASCII)
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", re.ASCII)


def check_address(value: str) -> str:
    """``value`` if it can only be an address or host name, never an ssh option or shell text."""
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{value!r} is not an IP address or host name (letters, digits, . : - _, "
                         "not starting with -)")
    return value


def check_alias(value: str) -> str:
    """``value`` if it is a safe host name for inventories, folders and output."""
    if not _ALIAS.fullmatch(value):
        raise ValueError(f"{value!r} is not a host alias (letters, digits, . _ - : @ +, starting with a "
                         "letter, digit or _; no / or spaces)")
    return value


def check_user(value: str) -> str:
    """``value`` if it is a login name."""
    if not _USER.fullmatch(value):
        raise ValueError(f"{value!r} is not a user name (letters, digits, . _ -, starting with a letter or _)")
    return value


class FrozenVars(Mapping[str, Any]):
    """An immutable, hashable mapping of Ansible host variables."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: tuple[tuple[str, Any], ...] = tuple(sorted(pairs))

    def __getitem__(self, key: str) -> Any:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple((k, _hashable(v)) for k, v in self._items))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenVars({dict(self._items)!r})"


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


@dataclass(frozen=True)
class Host:
    """One machine reachable over SSH.

    ``alias`` is the host's name in inventories and output (the address when
    unset); ``extra`` holds further Ansible host variables.
    """

    address: str
    alias: str | None = None
    user: str = "root"
    port: int = 22
    keyfile: str | None = None
    extra: Mapping[str, Any] = field(default_factory=FrozenVars)

    def __post_init__(self) -> None:
        try:
            check_address(self.address)
            if self.alias is not None:
                check_alias(self.alias)
            check_user(self.user)
        except ValueError as exc:
            raise ConfigError(f"host {self.alias or self.address!r}: {exc}") from None
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError(f"host {self.name!r}: port {self.port!r} is not 1-65535")
        if not isinstance(self.extra, FrozenVars):
            object.__setattr__(self, "extra", FrozenVars(self.extra))

    @property
    def name(self) -> str:
        return self.alias or self.address

    def with_extra(self, **variables: Any) -> Host:
        merged = {**self.extra, **variables}
        return Host(self.address, self.alias, self.user, self.port, self.keyfile, FrozenVars(merged))

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "alias": self.alias,
            "user": self.user,
            "port": self.port,
            "keyfile": self.keyfile,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Host:
        return cls(
            address=data["address"],
            alias=data.get("alias"),
            user=data.get("user", "root"),
            port=int(data.get("port", 22)),
            keyfile=data.get("keyfile"),
            extra=FrozenVars(data.get("extra", {})),
        )

    def __repr__(self) -> str:
        at = f"{self.user}@{self.address}" + ("" if self.port == 22 else f":{self.port}")
        return f"Host({self.name}, {at})" if self.alias else f"Host({at})"

    def __str__(self) -> str:
        return self.name


class Roles(Mapping[str, tuple[Host, ...]]):
    """Role name → hosts. A host may carry several roles.

    Set operations combine role maps role by role: ``a | b`` (union),
    ``a & b`` (hosts in both), ``a - b`` (hosts of ``a`` not in ``b``).
    """

    __slots__ = ("_roles",)

    def __init__(self, roles: Mapping[str, Iterable[Host]] | None = None) -> None:
        self._roles: dict[str, tuple[Host, ...]] = {
            name: tuple(dict.fromkeys(hosts)) for name, hosts in (roles or {}).items()
        }

    def __getitem__(self, role: str) -> tuple[Host, ...]:
        return self._roles[role]

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._roles.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Roles) and self._roles == other._roles

    def all(self) -> tuple[Host, ...]:
        """Every host once, in role order."""
        return tuple(dict.fromkeys(h for hosts in self._roles.values() for h in hosts))

    def select(self, *roles: str) -> tuple[Host, ...]:
        """The hosts of the given roles (every host when none is given).

        Raises ``KeyError`` naming a role that does not exist.
        """
        if not roles:
            return self.all()
        missing = [r for r in roles if r not in self._roles]
        if missing:
            raise KeyError(f"no role {', '.join(missing)} (roles: {', '.join(self._roles) or 'none'})")
        return tuple(dict.fromkeys(h for r in roles for h in self._roles[r]))

    def roles_of(self, host: Host) -> tuple[str, ...]:
        return tuple(name for name, hosts in self._roles.items() if host in hosts)

    def index_in(self, role: str, host: Host) -> int:
        """The host's position in its role (its SERVER_ID / CLIENT_ID)."""
        return self._roles[role].index(host)

    def find(self, name: str) -> Host:
        for host in self.all():
            if name in (host.name, host.address):
                return host
        raise KeyError(f"no host named {name}")

    def _combine(self, other: Roles, keep: Any) -> Roles:
        out: dict[str, list[Host]] = {}
        for role in dict.fromkeys([*self._roles, *other._roles]):
            mine, theirs = self._roles.get(role, ()), other._roles.get(role, ())
            hosts = keep(mine, theirs)
            if hosts:
                out[role] = hosts
        return Roles(out)

    def __or__(self, other: Roles) -> Roles:
        return self._combine(other, lambda a, b: [*a, *b])

    def __and__(self, other: Roles) -> Roles:
        return self._combine(other, lambda a, b: [h for h in a if h in b])

    def __sub__(self, other: Roles) -> Roles:
        return self._combine(other, lambda a, b: [h for h in a if h not in b])

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {role: [h.to_dict() for h in hosts] for role, hosts in self._roles.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Iterable[Mapping[str, Any]]]) -> Roles:
        return cls({role: [Host.from_dict(h) for h in hosts] for role, hosts in data.items()})

    def __repr__(self) -> str:
        inner = ", ".join(f"{role}: {len(hosts)}" for role, hosts in self._roles.items())
        return f"Roles({inner})"


@dataclass(frozen=True)
class Network:
    """An address range the hosts share; ``gateway`` is the controller's side."""

    name: str
    cidr: str
    gateway: str | None = None
    device: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cidr": self.cidr, "gateway": self.gateway, "device": self.device}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Network:
        return cls(data["name"], data["cidr"], data.get("gateway"), data.get("device"))

    def __repr__(self) -> str:
        return f"Network({self.name}, {self.cidr})"


class Networks(Mapping[str, Network]):
    """Network name → network."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self._networks = {n.name: n for n in networks}

    def __getitem__(self, name: str) -> Network:
        return self._networks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._networks)

    def __len__(self) -> int:
        return len(self._networks)

    def __hash__(self) -> int:
        return hash(tuple(self._networks.values()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Networks) and self._networks == other._networks

    def to_list(self) -> list[dict[str, Any]]:
        return [n.to_dict() for n in self._networks.values()]

    @classmethod
    def from_list(cls, data: Iterable[Mapping[str, Any]]) -> Networks:
        return cls(Network.from_dict(n) for n in data)

    def __repr__(self) -> str:
        return f"Networks({', '.join(self._networks)})"
