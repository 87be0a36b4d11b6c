"""Ansible inventories from roles: one group per role, connection details as host vars.

>>> from enosnet.model import Host, Roles
>>> inv = inventory_dict(Roles({"server": [Host("198.18.0.2", alias="server-0")]}))
>>> inv["all"]["hosts"]["server-0"]["ansible_host"]
'198.18.0.2'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from enosnet.model import Host, Roles

if TYPE_CHECKING:
    from enosnet.environment import Environment


def host_vars(host: Host) -> dict[str, Any]:
    """The Ansible variables that reach ``host``, then its extra variables."""
    out: dict[str, Any] = {"ansible_host": host.address, "ansible_port": host.port, "ansible_user": host.user}
    if host.keyfile:
        out["ansible_ssh_private_key_file"] = host.keyfile
    out.update(host.extra)
    return out


def inventory_dict(roles: Roles) -> dict[str, Any]:
    """A YAML-inventory structure: host vars under ``all.hosts``, groups per role."""
    return {
        "all": {
            "hosts": {h.name: host_vars(h) for h in roles.all()},
            "children": {role: {"hosts": {h.name: None for h in hosts}} for role, hosts in roles.items()},
        }
    }


def write_inventory(env: Environment, roles: Roles) -> None:
    from enosnet.environment import write_atomic

    text = yaml.safe_dump(inventory_dict(roles), sort_keys=False, default_flow_style=False)
    write_atomic(env.inventory_file, text.replace(": null\n", ":\n"))
