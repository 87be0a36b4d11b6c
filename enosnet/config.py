"""The environment config file: which provider, which roles, how many hosts.

Declarative and validated before anything is acquired::

    name: demo
    provider: {kind: local}
    roles: {server: 1, client: 4}

>>> cfg = parse_config("name: demo\\nprovider: {kind: local}\\nroles: {server: 1}")
>>> cfg.roles["server"].count
1
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from enosnet.errors import ConfigError
from enosnet.yamlfile import line_map, load_model_text, parse_yaml, where

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
RoleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]


class Strict(BaseModel):
    """Base of every config model: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSettings(Strict):
    """The worker agent every host runs (see ``enosnet.coordinator``)."""

    port: int = Field(7700, ge=1, le=65535)


# ── local provider ──────────────────────────────────────────────────────────


class LocalProviderConfig(Strict):
    """Hosts made of Linux namespaces on this machine."""

    kind: Literal["local"] = "local"
    subnet: str = "198.18.0.0/15"
    python: str = "/usr/bin/python3"
    boot_timeout: float = Field(30.0, gt=0)

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 network: {exc}") from None
        if net.prefixlen > 24:
            raise ValueError("must be at least a /24")
        return str(net)


class CountRole(Strict):
    """A role that only says how many hosts it needs."""

    count: int = Field(ge=0, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _from_int(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a host count")
        return {"count": value} if isinstance(value, int) else value


# ── static provider ─────────────────────────────────────────────────────────


class StaticHostSpec(Strict):
    """One existing machine."""

    address: str
    alias: str | None = None
    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    keyfile: str | None = None
    roles: list[RoleName] = Field(min_length=1)
    vars: dict[str, Any] = Field(default_factory=dict)


class StaticProviderConfig(Strict):
    """Machines that already exist and are reachable over SSH."""

    kind: Literal["static"] = "static"
    hosts: list[StaticHostSpec] = Field(default_factory=list)
    hosts_file: str | None = None
    hosts_file_role: RoleName = "all_hosts"
    user: str = "root"
    keyfile: str | None = None
    python: str = "/usr/bin/python3"

    @model_validator(mode="after")
    def _some_hosts(self) -> StaticProviderConfig:
        if not self.hosts and not self.hosts_file:
            raise ValueError("give `hosts` or `hosts_file`")
        return self


# ── the whole file ──────────────────────────────────────────────────────────

PROVIDER_KINDS = ("local", "static", "ec2")


class EnvConfig(Strict):
    """A whole environment config file."""

    name: Name
    provider: LocalProviderConfig | StaticProviderConfig = Field(discriminator="kind")
    roles: dict[RoleName, CountRole] = Field(default_factory=dict)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    install: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _roles_given(self) -> EnvConfig:
        if self.provider.kind == "local" and not self.roles:
            raise ValueError("the local provider needs `roles` with a host count for each")
        return self

    @property
    def kind(self) -> str:
        return self.provider.kind


def _check_kind(data: Any, source: str, text: str) -> None:
    if not isinstance(data, dict):
        return
    provider = data.get("provider")
    kind = provider.get("kind") if isinstance(provider, dict) else None
    if provider is None:
        return
    if not isinstance(provider, dict):
        raise ConfigError(f"{source}: invalid configuration", [(where(source, line_map(text), ("provider",)),
                                                                "must be a mapping such as {kind: local}")])
    elif kind not in PROVIDER_KINDS:
        reason = f"unknown provider {kind!r} (choose one of: {', '.join(PROVIDER_KINDS)})"
        raise ConfigError(f"{source}: invalid configuration",
                          [(where(source, line_map(text), ("provider", "kind")), reason)])


def parse_config(text: str, source: str = "<config>") -> EnvConfig:
    """Validate a config given as YAML text; raises ``ConfigError``."""
    _check_kind(parse_yaml(text, source), source, text)
    return load_model_text(EnvConfig, text, source=source)


def load_config(path: str | Path) -> EnvConfig:
    """Read and validate a config file; raises ``ConfigError`` naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    return parse_config(text, str(path))
