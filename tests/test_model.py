"""Hosts, roles and networks are small hashable values with set operations."""

from __future__ import annotations

import pytest

from enosnet.errors import ConfigError
from enosnet.model import FrozenVars, Host, Network, Networks, Roles

A = Host("198.18.0.2", alias="a")
B = Host("198.18.0.3", alias="b", port=2222, extra={"x": [1, 2]})
C = Host("198.18.0.4")


def test_host_is_hashable_and_compares_by_value() -> None:
    same = Host("198.18.0.3", alias="b", port=2222, extra={"x": [1, 2]})
    assert same == B and hash(same) == hash(B)
    assert len({A, B, same, C}) == 3
    assert B.with_extra(y=1) != B


def test_host_repr_and_name() -> None:
    assert repr(A) == "Host(a, root@198.18.0.2)"
    assert repr(B) == "Host(b, root@198.18.0.3:2222)"
    assert repr(C) == "Host(root@198.18.0.4)"
    assert C.name == "198.18.0.4" and str(A) == "a"


def test_host_round_trips_through_dict() -> None:
    assert Host.from_dict(B.to_dict()) == B


def test_extra_vars_are_immutable() -> None:
    with pytest.raises(TypeError):
        B.extra["x"] = 3  # type: ignore[index]
    assert FrozenVars({"a": 1}) == {"a": 1}


def test_roles_keep_order_and_drop_duplicates() -> None:
    roles = Roles({"server": [A, A], "client": [B, C], "both": [A, B]})
    assert roles["server"] == (A,)
    assert roles.all() == (A, B, C)
    assert roles.roles_of(A) == ("server", "both")
    assert roles.index_in("client", C) == 1
    assert roles.find("b") is B and roles.find("198.18.0.4") == C


def test_roles_set_operations() -> None:
    left = Roles({"server": [A], "client": [B]})
    right = Roles({"client": [B, C]})
    assert (left | right)["client"] == (B, C)
    assert (left & right) == Roles({"client": [B]})
    assert (left - right) == Roles({"server": [A]})


def test_select_names_a_missing_role() -> None:
    roles = Roles({"server": [A]})
    assert roles.select() == (A,)
    with pytest.raises(KeyError, match="no role client"):
        roles.select("client")


def test_roles_round_trip_and_repr() -> None:
    roles = Roles({"server": [A], "client": [B, C]})
    assert Roles.from_dict(roles.to_dict()) == roles
    assert repr(roles) == "Roles(server: 1, client: 2)"


def test_networks() -> None:
    nets = Networks([Network("local", "198.18.0.0/24", "198.18.0.1", "br")])
    assert Networks.from_list(nets.to_list()) == nets
    assert nets["local"].network.num_addresses == 256
    assert repr(nets) == "Networks(local)"


@pytest.mark.parametrize(("kwargs", "what"), [
    ({"address": "-oProxyCommand=x"}, "not an IP address"),
    ({"address": "10.0.0.5 -p 1"}, "not an IP address"),
    ({"address": "10.0.0.5\n"}, "not an IP address"),
    ({"address": "10.0.0.5", "alias": "../etc"}, "not a host alias"),
    ({"address": "10.0.0.5", "alias": "a b"}, "not a host alias"),
    ({"address": "10.0.0.5", "user": "-lroot"}, "not a user name"),
    ({"address": "10.0.0.5", "port": 0}, "port 0"),
])
def test_hosts_refuse_what_would_become_an_option_or_a_path(kwargs: dict[str, object], what: str) -> None:
    with pytest.raises(ConfigError, match=what):
        Host(**kwargs)  # type: ignore[arg-type]


def test_hosts_accept_addresses_names_and_ipv6() -> None:
    for address in ("198.18.0.2", "::1", "fe80::1%eth0", "node-3.lab.example", "ip-10-0-0-5.ec2.internal"):
        assert Host(address, alias="server-0", user="ec2-user").address == address
