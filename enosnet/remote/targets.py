"""Which hosts a remote call targets: ``roles=`` (a Roles map or plain hosts) narrowed by ``role=``.

>>> from enosnet.model import Host, Roles
>>> roles = Roles({"server": [Host("198.18.0.2", alias="s")], "client": [Host("198.18.0.3", alias="c")]})
>>> [h.name for h in select_hosts(roles, role="client")]
['c']
"""

from __future__ import annotations

from collections.abc import Iterable

from enosnet.errors import ConfigError
from enosnet.model import Host, Roles

RoleSelector = str | Iterable[str] | None
HostsLike = Roles | Iterable[Host]


def role_names(role: RoleSelector) -> tuple[str, ...]:
    if role is None:
        return ()
    return (role,) if isinstance(role, str) else tuple(role)


def select_hosts(roles: HostsLike, *, role: RoleSelector = None) -> tuple[Host, ...]:
    """The hosts of ``role`` (one name or several) in ``roles``, every host when ``role`` is None.

    Raises ``ConfigError`` when a role does not exist or nothing is selected.
    """
    names = role_names(role)
    if isinstance(roles, Roles):
        unknown = [r for r in names if r not in roles]
        if unknown:
            known = ", ".join(roles) or "none"
            raise ConfigError(f"no role named {', '.join(unknown)} (roles: {known})")
        hosts = roles.select(*names)
    else:
        if names:
            raise ConfigError("role= needs a Roles map, not a plain list of hosts")
        hosts = tuple(dict.fromkeys(roles))
    if not hosts:
        raise ConfigError("no hosts to run on" + (f" (role {', '.join(names)} is empty)" if names else ""))
    bad = [h for h in hosts if not isinstance(h, Host)]
    if bad:
        raise ConfigError(f"not a Host: {bad[0]!r}")
    return hosts


def as_roles(roles: HostsLike) -> Roles:
    return roles if isinstance(roles, Roles) else Roles({"hosts": list(roles)})
