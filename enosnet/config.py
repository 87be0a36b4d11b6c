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
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from enosnet.coordinator.agent.wire import DEFAULT_PORT
from enosnet.errors import ConfigError
from enosnet.model import check_address, check_alias, check_user
from enosnet.yamlfile import line_map, load_model_text, parse_yaml, where

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
RoleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
Address = Annotated[str, AfterValidator(check_address)]
Alias = Annotated[str, AfterValidator(check_alias)]
User = Annotated[str, AfterValidator(check_user)]


class Strict(BaseModel):
    """Base of every config model: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSettings(Strict):
    """The worker agent every host runs (see ``enosnet.coordinator``)."""

    port: int = Field(DEFAULT_PORT, ge=1, le=65535)


# ── local provider ──────────────────────────────────────────────────────────


class LocalProviderConfig(Strict):
    """Hosts made of Linux namespaces on this machine."""

    kind: Literal["local"] = "local"
    subnet: str = "198.18.0.0/15"
    python: str = "/usr/bin/python3"
    boot_timeout: float = Field(30.0, gt=0)
    # Folders of this machine every host sees read-only at the same path (e.g. a build folder); hosts
    # otherwise see none of /root, /home, /tmp, /var/tmp or any enosnet environment.
    share: list[str] = Field(default_factory=list)

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


_MEMORY_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(value: int | str) -> int:
    """Bytes from ``512M``, ``1.5G``, ``2GiB`` or a number of bytes (K, M, G, T are powers of 1024).

    >>> parse_memory("512M"), parse_memory("1.5GiB"), parse_memory(2**30)
    (536870912, 1610612736, 1073741824)
    """
    if isinstance(value, bool):
        raise ValueError("must be a size such as 512M or 2G")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", value, flags=re.ASCII | re.I)
        if match is None:
            raise ValueError(f"{value!r}: not a size such as 512M or 2G")
        number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * _MEMORY_UNITS[unit])
    if size < 16 * 2**20:
        raise ValueError(f"{value!r}: at least 16M (a host runs sshd and the agent)")
    return size


def check_cpuset(value: str) -> str:
    """``auto`` or a CPU list such as ``0-3,6`` (what cpuset.cpus takes).

    >>> check_cpuset("0-1,3")
    '0-1,3'
    """
    if value == "auto" or re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", value, flags=re.ASCII):
        return value
    raise ValueError(f"{value!r}: `auto` or a CPU list such as 0-3,6")


class LocalRole(CountRole):
    """A role of local hosts, optionally limited: ``{count: 4, cpus: 0.5, memory: 512M, cpuset: auto}``.

    ``cpus`` caps each host's CPU time (CPU-seconds per second), ``memory``
    its memory (beyond it the kernel's OOM killer ends the largest process
    inside the host, not the host); ``cpuset: auto`` gives each host cores of
    its own while the machine has enough (else hosts share them, with a
    warning), or names the cores (``0-1``).
    """

    cpus: float | None = Field(None, gt=0, le=1024)
    memory: Annotated[int, BeforeValidator(parse_memory)] | None = None
    cpuset: Annotated[str, AfterValidator(check_cpuset)] | None = None

    @property
    def limited(self) -> bool:
        return self.cpus is not None or self.memory is not None or self.cpuset is not None


# ── static provider ─────────────────────────────────────────────────────────


class StaticHostSpec(Strict):
    """One existing machine."""

    address: Address
    alias: Alias | None = None
    user: User = "root"
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
    user: User = "root"
    keyfile: str | None = None
    python: str = "/usr/bin/python3"

    @model_validator(mode="after")
    def _some_hosts(self) -> StaticProviderConfig:
        if not self.hosts and not self.hosts_file:
            raise ValueError("give `hosts` or `hosts_file`")
        return self


# ── EC2 provider ────────────────────────────────────────────────────────────

AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
AmiRef = Annotated[str, StringConstraints(pattern=r"^(ami-[0-9a-f]{8,17}|/[A-Za-z0-9_./-]+)$")]
InstanceType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")]
Zone = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d[a-z](-[a-z0-9-]+)?$")]


def _cidr(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"not an address range: {exc}") from None


class Ec2RoleSpec(Strict):
    """The EC2 hosts of one role: ``{count: 4, instance_type: c5n.4xlarge, az: us-west-2a, placement: cluster}``.

    ``az`` is one zone for every host, or a list with one zone per host; ``ami``
    an image id or an SSM public parameter path (default: the provider's).
    """

    count: int = Field(1, ge=0, le=1024)
    instance_type: InstanceType = "c5.large"
    az: Zone | list[Zone] | None = None
    placement: Literal["cluster", "spread"] | None = None
    ami: AmiRef | None = None
    user: User | None = None
    root_volume_gb: int | None = Field(None, ge=8, le=16384)
    spot: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_int(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a host count or a mapping")
        return {"count": value} if isinstance(value, int) else value

    @model_validator(mode="after")
    def _one_zone_per_host(self) -> Ec2RoleSpec:
        if isinstance(self.az, list) and len(self.az) != self.count:
            raise ValueError(f"`az` lists {len(self.az)} zones for {self.count} hosts: give one zone, "
                             "or exactly one per host")
        return self

    def zones(self) -> list[str | None]:
        """The zone of each host, in order (None: the region's first default subnet)."""
        return list(self.az) if isinstance(self.az, list) else [self.az] * self.count


class Ec2ProviderConfig(Strict):
    """Hosts on Amazon EC2 (``provider: {kind: ec2, region: us-west-2, allow_cidr: 203.0.113.7/32}``)."""

    kind: Literal["ec2"] = "ec2"
    region: str | None = None
    allow_cidr: str | None = None
    key_name: str | None = None
    keyfile: str | None = None
    subnet_id: str | None = None
    subnet_tags: dict[str, str] = Field(default_factory=dict)
    ami: AmiRef = AL2023_PARAMETER
    user: User | None = None
    python: str = "/usr/bin/python3"
    max_lifetime_hours: float = Field(4.0, gt=0, le=168)
    wait_ssh: bool = True
    running_timeout: float = Field(600.0, gt=0)
    ssh_timeout: float = Field(300.0, gt=0)
    destroy_timeout: float = Field(600.0, gt=0)
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int | None = Field(None, ge=1, le=20)
    prices: dict[InstanceType, float] = Field(default_factory=dict)

    _allow_cidr = field_validator("allow_cidr")(_cidr)

    @model_validator(mode="after")
    def _key_pair(self) -> Ec2ProviderConfig:
        if self.keyfile and not self.key_name:
            raise ValueError("`keyfile` is the private key of `key_name`: give `key_name` too")
        if self.subnet_id and self.subnet_tags:
            raise ValueError("give `subnet_id` or `subnet_tags`, not both")
        return self


# ── what deploy installs ────────────────────────────────────────────────────

DriverName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")]


class NetbenchInstall(Strict):
    """s2n-netbench on every host, built once on this machine and pushed.

    ``{drivers: [tcp, s2n-tls, s2n-quic]}`` builds the crates at the pinned
    versions (``versions`` overrides them: ``{s2n-netbench-driver-s2n-quic:
    0.1.0}``); ``path`` builds a local checkout instead (a driver crate, or a
    workspace and its ``packages``), e.g. a protocol developer's own change.
    """

    drivers: list[DriverName] = Field(default_factory=lambda: ["tcp", "s2n-tls", "s2n-quic"], min_length=1)
    versions: dict[str, str] = Field(default_factory=dict)
    path: str | None = None
    packages: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _packages_need_path(self) -> NetbenchInstall:
        if self.packages and self.path is None:
            raise ValueError("`packages` are folders of the checkout given as `path`: give `path` too")
        return self


class InstallSettings(Strict):
    """What ``enosnet deploy`` installs besides iperf3 and the agent."""

    netbench: NetbenchInstall | None = None


_COUNT_ROLES: TypeAdapter[dict[str, CountRole]] = TypeAdapter(dict[RoleName, CountRole])
_LOCAL_ROLES: TypeAdapter[dict[str, LocalRole]] = TypeAdapter(dict[RoleName, LocalRole])
_EC2_ROLES: TypeAdapter[dict[str, Ec2RoleSpec]] = TypeAdapter(dict[RoleName, Ec2RoleSpec])


# ── the whole file ──────────────────────────────────────────────────────────

PROVIDER_KINDS = ("local", "static", "ec2")


class EnvConfig(Strict):
    """A whole environment config file."""

    name: Name
    provider: LocalProviderConfig | StaticProviderConfig | Ec2ProviderConfig = Field(discriminator="kind")
    roles: dict[RoleName, LocalRole | CountRole | Ec2RoleSpec] = Field(default_factory=dict)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    install: InstallSettings = Field(default_factory=InstallSettings)

    @field_validator("roles", mode="wrap")
    @classmethod
    def _roles_for_provider(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        # the provider decides what a role may say: a host count, or an EC2 spec
        provider = info.data.get("provider")
        if isinstance(provider, Ec2ProviderConfig):
            return _EC2_ROLES.validate_python(value)
        if isinstance(provider, LocalProviderConfig):
            return _LOCAL_ROLES.validate_python(value)
        return _COUNT_ROLES.validate_python(value)

    @model_validator(mode="after")
    def _roles_given(self) -> EnvConfig:
        if self.provider.kind == "local" and not self.roles:
            raise ValueError("the local provider needs `roles` with a host count for each")
        if self.provider.kind == "ec2" and not self.roles:
            raise ValueError("the ec2 provider needs `roles`, e.g. {server: {count: 1, instance_type: c5.large}}")
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
