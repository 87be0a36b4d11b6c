"""Actions an agent may run: argv templates with declared, typed parameters.

Stdlib-only, Python 3.8 compatible (ships in the agent zipapp). An action is
fixed in the agent's config at install time; a datagram can only name it and
give parameter values, which are checked against their declaration and then
substituted as *whole* argv elements (never through a shell). Template rules:

- an argv element (or env value) that is exactly ``{name}`` is replaced by the
  value; any other string is literal. A list-valued parameter expands to one
  element per item.
- an argv element that is a list is an *optional group*: it is kept only when
  every parameter it names has a value that is neither null nor false; a bool
  placeholder itself renders nothing (``["-R", "{reverse}"]`` → ``-R`` or nothing).
- ``env_each: {"SERVER_": "servers"}`` sets ``SERVER_0``, ``SERVER_1``, … from
  the items of a list parameter.
- built-in parameters: ``index`` (the host's position in its role, given by the
  coordinator), ``run_id``, ``run_dir``, ``worker_id``.

>>> spec = parse_action("echo", {"argv": ["echo", "{n}"], "params": {"n": {"type": "int", "max": 9}}})
>>> spec.render({"n": 3}, builtins={})[0]
['echo', '3']
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDER = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$")
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
BUILTINS = ("index", "run_id", "run_dir", "worker_id")
TYPES = ("int", "float", "bool", "choice", "string", "host", "hostport", "hostports", "file")
KINDS = ("job", "service")
MAX_ITEMS = 256


class ActionError(ValueError):
    """An action declaration or a parameter value is invalid."""


class Param:
    """One declared parameter: its type and constraints."""

    def __init__(self, name: str, decl: Mapping[str, Any]) -> None:
        self.name = name
        self.type = decl.get("type")
        if self.type not in TYPES:
            raise ActionError(f"param {name}: type must be one of {', '.join(TYPES)}, not {self.type!r}")
        self.min = decl.get("min")
        self.max = decl.get("max")
        self.values = list(decl.get("values", []))
        self.pattern = re.compile(decl["pattern"]) if "pattern" in decl else None
        self.max_len = int(decl.get("max_len", 256))
        self.max_items = int(decl.get("max_items", MAX_ITEMS))
        self.dir = decl.get("dir")
        self.required = bool(decl.get("required", "default" not in decl))
        self.default = decl.get("default")
        if self.type == "choice" and not self.values:
            raise ActionError(f"param {name}: a choice needs values")
        if self.type == "string" and self.pattern is None:
            raise ActionError(f"param {name}: a string needs a pattern")
        if self.type == "file" and not self.dir:
            raise ActionError(f"param {name}: a file needs a dir")

    def check(self, value: Any) -> Any:
        """The value, normalised; raises ``ActionError`` saying why it is refused."""
        if value is None:
            if self.required:
                raise ActionError(f"param {self.name}: required")
            return None
        checker = getattr(self, "_check_" + str(self.type))
        return checker(value)

    def _fail(self, value: Any, why: str) -> ActionError:
        return ActionError(f"param {self.name}={str(value)[:64]!r}: {why}")

    def _range(self, value: Any) -> Any:
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise self._fail(value, f"outside [{self.min}, {self.max}]")
        return value

    def _check_int(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(value, "not an integer")
        return int(self._range(value))

    def _check_float(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise self._fail(value, "not a number")
        return float(self._range(value))

    def _check_bool(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self._fail(value, "not a boolean")
        return value

    def _check_choice(self, value: Any) -> Any:
        if value not in self.values:
            raise self._fail(value, f"not one of {self.values}")
        return value

    def _check_string(self, value: Any) -> str:
        if not isinstance(value, str) or len(value) > self.max_len:
            raise self._fail(value, f"not a string of at most {self.max_len} characters")
        if self.pattern is None or not self.pattern.fullmatch(value):
            raise self._fail(value, "does not match the declared pattern")
        return value

    def _check_host(self, value: Any) -> str:
        if not isinstance(value, str) or not is_host(value):
            raise self._fail(value, "not an IP address or host name")
        return value

    def _check_hostport(self, value: Any) -> str:
        if not isinstance(value, str) or not is_hostport(value):
            raise self._fail(value, "not host:port")
        return value

    def _check_hostports(self, value: Any) -> list[str]:
        if not isinstance(value, list) or len(value) > self.max_items:
            raise self._fail(value, f"not a list of at most {self.max_items} host:port")
        return [self._check_hostport(item) for item in value]

    def _check_file(self, value: Any) -> str:
        if not isinstance(value, str) or not FILE_NAME.fullmatch(value) or value in (".", ".."):
            raise self._fail(value, "not a plain file name")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise self._fail(value, "does not match the declared pattern")
        path = os.path.join(str(self.dir), value)
        if not os.path.isfile(path):
            raise self._fail(value, f"no such file in {self.dir}")
        return path


def is_host(text: str) -> bool:
    """An IPv4/IPv6 address or a DNS name (never starting with ``-``)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return bool(HOSTNAME.fullmatch(text))


def is_hostport(text: str) -> bool:
    """``host:port`` or ``[v6]:port`` with a port in 1..65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        return ":" in host and is_host(host)
    return ":" not in host and is_host(host)


class Action:
    """A parsed action declaration (see the module docstring for the template rules)."""

    def __init__(self, name: str, argv: list[Any], env: dict[str, str], env_each: dict[str, str],
                 params: dict[str, Param], kind: str, listen: str | None, deadline_s: float,
                 stop_grace_s: float, cwd: str | None) -> None:
        self.name, self.argv, self.env, self.env_each = name, argv, env, env_each
        self.params, self.kind, self.listen = params, kind, listen
        self.deadline_s, self.stop_grace_s, self.cwd = deadline_s, stop_grace_s, cwd

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared parameter's checked value (defaults filled in)."""
        unknown = sorted(set(values) - set(self.params) - {"index"})
        if unknown:
            raise ActionError(f"action {self.name}: unknown params {', '.join(unknown)}")
        out = {name: param.check(values.get(name, param.default)) for name, param in self.params.items()}
        index = values.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1_000_000:
            raise ActionError(f"action {self.name}: index must be an integer >= 0")
        out["index"] = index
        return out

    def render(self, values: Mapping[str, Any], *, builtins: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
        """(argv, extra environment) for checked ``values``."""
        scope = dict(values)
        scope.update(builtins)
        argv: list[str] = []
        for item in self.argv:
            if isinstance(item, list):
                if all(_present(scope.get(name)) for name in _names(item)):
                    argv.extend(_expand_all(item, scope))
            else:
                argv.extend(_expand(item, scope))
        env = {key: " ".join(_expand(text, scope)) for key, text in self.env.items()
               if _present(scope.get(_name(text) or "", True))}
        for prefix, name in self.env_each.items():
            for i, item in enumerate(scope.get(name) or []):
                env[f"{prefix}{i}"] = str(item)
        return argv, env

    def listen_port(self, values: Mapping[str, Any]) -> tuple[str, int] | None:
        """(``tcp``|``udp``, port) the service listens on once ready, if declared (either part may be a param)."""
        if not self.listen:
            return None
        proto, _, port = self.listen.partition(":")
        proto_name, port_name = _name(proto), _name(port)
        transport = values.get(proto_name) if proto_name else proto
        number = values.get(port_name) if port_name else port
        if transport not in ("tcp", "udp") or number is None:
            return None
        return str(transport), int(number)


def _name(text: str) -> str | None:
    match = PLACEHOLDER.fullmatch(text)
    return match.group(1) if match else None


def _names(group: list[str]) -> list[str]:
    return [name for name in (_name(t) for t in group) if name]


def _present(value: Any) -> bool:
    return value is not None and value is not False


def _expand(text: str, scope: Mapping[str, Any]) -> list[str]:
    name = _name(text)
    if name is None:
        return [text]
    value = scope.get(name)
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _expand_all(group: list[str], scope: Mapping[str, Any]) -> list[str]:
    return [part for text in group for part in _expand(text, scope)]


def parse_action(name: str, decl: Mapping[str, Any]) -> Action:
    """Check one action declaration from the agent config; raises ``ActionError``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name, re.ASCII):
        raise ActionError(f"action name {name!r}: use letters, digits, ., _ or -")
    argv = decl.get("argv")
    if not isinstance(argv, list) or not argv or not isinstance(argv[0], str):
        raise ActionError(f"action {name}: argv must be a non-empty list starting with the program")
    params = {key: Param(key, value) for key, value in dict(decl.get("params", {})).items()}
    clash = sorted(set(params) & set(BUILTINS))
    if clash:
        raise ActionError(f"action {name}: params {', '.join(clash)} are built-in")
    known = set(params) | set(BUILTINS)
    env = {str(k): str(v) for k, v in dict(decl.get("env", {})).items()}
    env_each = {str(k): str(v) for k, v in dict(decl.get("env_each", {})).items()}
    used = [n for item in argv for n in (_names(item) if isinstance(item, list) else _names([item]))]
    used += [n for n in (_name(v) for v in env.values()) if n] + list(env_each.values())
    missing = sorted(set(used) - known)
    if missing:
        raise ActionError(f"action {name}: template names undeclared params {', '.join(missing)}")
    kind = decl.get("kind", "job")
    if kind not in KINDS:
        raise ActionError(f"action {name}: kind must be job or service")
    listen = decl.get("listen")
    if listen is not None and not re.fullmatch(r"(tcp|udp|\{[a-z_][a-z0-9_]*\}):(\d+|\{[a-z_][a-z0-9_]*\})",
                                               str(listen), re.ASCII):
        raise ActionError(f"action {name}: listen must be tcp:PORT, udp:{{param}} or {{param}}:{{param}}")
    listen_missing = sorted({n for n in _names(str(listen or "").split(":")) if n not in known})
    if listen_missing:
        raise ActionError(f"action {name}: listen names undeclared params {', '.join(listen_missing)}")
    return Action(name, argv, env, env_each, params, kind, listen,
                  float(decl.get("deadline_s", 86400.0 if kind == "service" else 3600.0)),
                  float(decl.get("stop_grace_s", 2.0)), decl.get("cwd"))


def parse_actions(decls: Mapping[str, Any]) -> dict[str, Action]:
    """Every action of a config's ``actions`` mapping."""
    return {name: parse_action(name, decl) for name, decl in decls.items()}
