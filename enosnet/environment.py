"""The environment directory: everything one experiment owns, in one folder.

Default ``.enosnet/<name>/`` below the working directory; ``.enosnet/current``
points at the last one used. Layout::

    state.json        provider state: everything acquired, written before waiting on it
    config.yaml       the config file the environment was deployed from
    inventory.yaml    Ansible inventory, usable by plain ansible-playbook -i
    ssh/              id_ed25519(.pub) made for this environment, known_hosts, config
    secret            the agents' shared key (mode 0600)
    .lock             held by the deploy, bench or destroy under way (``Environment.lock``)
    logs/  runs/      logs; one folder per run of commands, playbooks and benchmarks
    results.db        the results database

>>> env = Environment(Path("/tmp/example-env"))
>>> env.state_file.name
'state.json'
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enosnet.errors import EnosnetError, EnvironmentBusy, EnvironmentNotFound, ProviderError

if TYPE_CHECKING:
    from enosnet.state import EnvState

BASE = Path(".enosnet")
CURRENT = "current"
REGISTRY = Path("/var/lib/enosnet/environments")


class Environment:
    """One environment directory (it need not exist yet)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()

    # ── finding ────────────────────────────────────────────────────────────

    @classmethod
    def for_name(cls, name: str, base: str | Path = BASE) -> Environment:
        return cls(Path(base) / name)

    @classmethod
    def find(cls, path: str | Path | None = None, base: str | Path = BASE) -> Environment:
        """The environment at ``path``, else the one ``current`` points at.

        Raises ``EnvironmentNotFound`` when there is none.
        """
        if path is not None:
            env = cls(path)
            if not env.state_file.exists():
                raise EnvironmentNotFound(f"{env.root}: not an enosnet environment (no state.json); "
                                          "deploy one with `enosnet deploy -c CONFIG`")
            return env
        link = Path(base) / CURRENT
        if not link.exists():
            raise EnvironmentNotFound(f"no environment given and no {link} link: pass --env PATH "
                                      "or deploy one with `enosnet deploy -c CONFIG`")
        return cls.find(link.resolve(), base)

    def mark_current(self, base: str | Path = BASE) -> None:
        """Point ``<base>/current`` at this environment."""
        base = Path(base)
        base.mkdir(parents=True, exist_ok=True)
        link = base / CURRENT
        target = os.path.relpath(self.root, base.absolute())
        tmp = base / f".{CURRENT}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)

    # ── paths ──────────────────────────────────────────────────────────────

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def tag(self) -> str:
        """A short id derived from the directory's path, stable across runs."""
        return hashlib.sha256(str(self.root).encode()).hexdigest()[:6]

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def inventory_file(self) -> Path:
        return self.root / "inventory.yaml"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def key_file(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "ssh" / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh" / "config"

    @property
    def secret_file(self) -> Path:
        return self.root / "secret"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def db_file(self) -> Path:
        return self.root / "results.db"

    def create(self) -> Environment:
        for folder in (self.root, self.ssh_dir, self.logs_dir, self.runs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.ssh_dir.chmod(0o700)
        register(self.root)
        return self

    def new_run_dir(self, kind: str) -> Path:
        """A fresh folder ``runs/<UTC time>-<kind>`` for one run's artifacts."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        folder = self.runs_dir / f"{stamp}-{kind}"
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    # ── state ──────────────────────────────────────────────────────────────

    def load_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise EnvironmentNotFound(f"{self.state_file}: unreadable state: {exc}") from None
        if not isinstance(data, dict):
            raise EnvironmentNotFound(f"{self.state_file}: unreadable state: not a JSON object")
        return data

    def state(self) -> EnvState:
        """The state, typed (an environment without one reads as nothing acquired)."""
        from enosnet.state import EnvState  # with the model and the wire constants: not every command needs them

        try:
            return EnvState.from_json(self.load_state() or {})
        except (ValueError, KeyError, TypeError) as exc:
            raise EnvironmentNotFound(f"{self.state_file}: unreadable state: {exc}") from None

    def save_state(self, state: dict[str, Any]) -> None:
        """Write the state atomically and durably (a crash leaves old or new, never half)."""
        write_atomic(self.state_file, json.dumps(state, indent=2, sort_keys=False) + "\n")

    def update_state(self, **changes: Any) -> dict[str, Any]:
        state = self.load_state() or {}
        state.update(changes)
        self.save_state(state)
        return state

    # ── keys ───────────────────────────────────────────────────────────────

    @contextmanager
    def lock(self, operation: str) -> Iterator[None]:
        """Hold the environment for ``operation`` (deploy, bench, destroy); a second holder fails at once.

        Two commands acquiring hosts or writing one results database at the
        same time would leave half of each; ``EnvironmentBusy`` names the one
        under way instead. An ``flock``: the kernel releases it when its
        process ends, so a crash never leaves the environment locked.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EnosnetError(f"{self.root}: cannot create the environment folder ({exc.strerror}); check its "
                               "parent folders' permissions, or choose another folder") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another enosnet command"
                raise EnvironmentBusy(f"{self.root} is busy: {holder} holds it; wait until it ends "
                                      "(or stop it) and try again") from None
            since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"enosnet {operation} (pid {os.getpid()}, since {since})\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def ensure_keypair(self) -> Path:
        """The environment's SSH key (ed25519), made on first use."""
        self.create()
        if not self.key_file.exists():
            make_keypair(self.key_file, comment=f"enosnet-{self.name}")
        return self.key_file

    def public_key(self) -> str:
        return Path(f"{self.ensure_keypair()}.pub").read_text().strip()

    def secret(self) -> str:
        """The agents' shared secret (hex), made on first use, mode 0600."""
        self.create()
        if not self.secret_file.exists():
            write_atomic(self.secret_file, secrets.token_hex(32) + "\n", mode=0o600)
        return self.secret_file.read_text().strip()

    def __repr__(self) -> str:
        return f"Environment({self.root})"


def make_keypair(path: Path, comment: str) -> None:
    """An unencrypted ed25519 key pair at ``path`` and ``path.pub``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in (path, Path(f"{path}.pub")):
        old.unlink(missing_ok=True)
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                       check=True, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise ProviderError("ssh-keygen not found", hint="install openssh-client") from None
    except subprocess.CalledProcessError as exc:
        raise ProviderError(f"ssh-keygen failed for {path}: {exc.stderr.strip()}") from None


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` through a synced temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (the folder's entry, not only the file's data)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def register(root: Path, registry: Path = REGISTRY) -> None:
    """Note ``root`` in the machine's list of environment folders (only where this process may write it).

    Local hosts hide every listed folder: no host reads another environment's
    secret or keys. Folders that no longer exist drop out of the list here.
    """
    try:
        registry.parent.mkdir(parents=True, exist_ok=True)
        with open(registry, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            lines = handle.read().splitlines()
            wanted = list(dict.fromkeys([*(line for line in lines if line and Path(line).is_dir()), str(root)]))
            if wanted != lines:
                handle.seek(0)
                handle.truncate()
                handle.write("".join(f"{line}\n" for line in wanted))
    except OSError:
        return  # not root: this user's environments are under their home, which local hosts hide anyway


def registered(registry: Path = REGISTRY) -> list[Path]:
    """The environment folders of this machine that still exist."""
    try:
        lines = registry.read_text().splitlines()
    except OSError:
        return []
    return [Path(line) for line in lines if line and Path(line).is_dir()]
