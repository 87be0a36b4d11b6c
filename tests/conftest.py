"""Shared fixtures: real local namespace hosts and a real local AWS endpoint (moto's server).

Each pytest session names its local hosts with its own random prefix
(``ENOSNET_LOCAL_PREFIX``), so concurrent sessions never touch each other's
hosts, and the session ends by checking that nothing of its own is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.model import Networks, Roles
from enosnet.providers.local import LocalProvider
from enosnet.testing import MotoServer, local_aws

PREFIX = "t" + secrets.token_hex(2)
os.environ["ENOSNET_LOCAL_PREFIX"] = PREFIX
IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root to build local namespace hosts")
    for item in items:
        if "hosts" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of module and session fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not IS_ROOT:
        return
    from enosnet.providers.local import destroy_all

    left = destroy_all(PREFIX)
    if left:
        sys.stderr.write(f"\nLEAK: tests left local hosts behind (now removed): {', '.join(left)}\n")
        session.exitstatus = 1


def python38() -> str | None:
    """A working python3.8, the oldest Python hosts may have (a pyenv shim may exist without the version)."""
    found = [shutil.which("python3.8"), *map(str, Path.home().glob(".pyenv/versions/3.8*/bin/python3.8"))]
    for candidate in filter(None, found):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=30).returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="session")
def netbench_bin() -> Path:
    """The folder of the real s2n-netbench binaries, built from crates.io once per machine (cached)."""
    from enosnet.netbench_build import build, crates_for

    crates = crates_for(["tcp", "s2n-tls", "s2n-quic"], tools=("s2n-netbench-scenarios", "s2n-netbench-cli"))
    return build(crates).bin_dir


@pytest.fixture
def driver_checkout(tmp_path: Path, netbench_bin: Path) -> Path:
    """A protocol developer's own copy of a driver crate: s2n-netbench-driver-tcp's source as cargo downloaded it."""
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    found = sorted(home.glob("registry/src/*/s2n-netbench-driver-tcp-0.1.0"))
    assert found, "s2n-netbench-driver-tcp 0.1.0 is not in cargo's registry cache (make netbench downloads it)"
    checkout = tmp_path / "s2n-netbench-driver-tcp"
    shutil.copytree(found[0], checkout)
    return checkout


@pytest.fixture
def patch_client() -> Callable[[Path], None]:
    """The one-line change a developer makes to a driver checkout: its client says ``patched`` on stderr first."""

    def patch(checkout: Path) -> None:
        main = checkout / "src" / "bin" / "client.rs"
        main.write_text(main.read_text().replace("fn main() -> Result<()> {",
                                                 'fn main() -> Result<()> {\n    eprintln!("patched");', 1))

    return patch


@dataclass
class LocalDeployment:
    """Hosts acquired by the ``local_hosts`` fixture."""

    env: Environment
    provider: LocalProvider
    roles: Roles
    networks: Networks
    config_text: str = field(repr=False, default="")


@pytest.fixture
def local_hosts(tmp_path: Path) -> Iterator[Callable[..., LocalDeployment]]:
    """Factory: ``local_hosts({"server": 1, "client": 2})`` deploys real local hosts, destroyed afterwards.

    A role maps to a count or a local role spec (``{"count": 1, "cpus": 0.5}``). Extra keyword
    ``name`` names the environment (one directory per name under tmp_path); ``share``
    lists machine folders the hosts see read-only (they see none of /tmp, /root, … otherwise).
    """
    made: list[LocalProvider] = []

    def deploy(roles: Mapping[str, int | Mapping[str, object]], *, name: str = "t",
               share: Sequence[Path] = ()) -> LocalDeployment:
        counts = ", ".join(f"{role}: {json.dumps(spec)}" for role, spec in roles.items())  # JSON: YAML flow
        shared = f", share: [{', '.join(str(p) for p in share)}]" if share else ""
        text = f"name: {name}\nprovider: {{kind: local{shared}}}\nroles: {{{counts}}}\n"
        env = Environment(tmp_path / ".enosnet" / name)
        provider = LocalProvider(parse_config(text), env)
        made.append(provider)
        acquired, networks = provider.init()
        return LocalDeployment(env, provider, acquired, networks, text)

    try:
        yield deploy
    finally:
        for provider in reversed(made):
            provider.destroy()


# ── a local AWS endpoint ────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's server on 127.0.0.1 with a free port, as a subprocess; boto3 reaches it via AWS_ENDPOINT_URL."""
    with local_aws() as server:
        yield server


@pytest.fixture
def aws(moto_server: MotoServer) -> MotoServer:
    """A clean moto state for one test."""
    moto_server.reset()
    return moto_server
