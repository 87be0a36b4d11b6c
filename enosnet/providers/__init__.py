"""Providers turn a config into hosts: ``local`` (namespaces here), ``static``, ``ec2``."""

from __future__ import annotations

from enosnet.config import EnvConfig
from enosnet.environment import Environment
from enosnet.errors import ConfigError
from enosnet.providers.base import HostStatus, Provider


def provider_class(kind: str) -> type[Provider]:
    """The provider class for a config's ``provider.kind`` (imported on demand)."""
    if kind == "local":
        from enosnet.providers.local import LocalProvider

        return LocalProvider
    if kind == "static":
        from enosnet.providers.static import StaticProvider

        return StaticProvider
    if kind == "ec2":
        from enosnet.providers.ec2 import Ec2Provider

        return Ec2Provider
    raise ConfigError(f"unknown provider kind {kind!r}")


def make_provider(config: EnvConfig, env: Environment) -> Provider:
    """The provider a config asks for, bound to an environment directory (nothing is acquired yet)."""
    return provider_class(config.kind)(config, env)


__all__ = ["HostStatus", "Provider", "make_provider", "provider_class"]
