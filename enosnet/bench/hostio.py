"""Commands and file pulls on the experiment's hosts over SSH, one persistent connection per host.

The bench layer talks to each host a few times per run (netem, metadata, the
pull of outputs); a shared SSH master connection per host keeps each of
those to a few milliseconds instead of a full handshake.

>>> Shell(Path("/tmp/example-env")).control_dir.name.startswith("enosnet-cm-")
True
"""

from __future__ import annotations

import hashlib
import io
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from enosnet.errors import RemoteError
from enosnet.model import Host

T = TypeVar("T")
TAR_MARK = "@@ENOSNET-TAR@@"


@dataclass(frozen=True)
class Output:
    """One host's outcome of a command."""

    host: Host
    rc: int
    stdout: bytes
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def __repr__(self) -> str:
        return f"Output({self.host.name}, rc={self.rc})"


class Shell:
    """SSH to hosts with one multiplexed master connection each (closed by ``close``)."""

    def __init__(self, env_root: Path, *, connect_timeout: float = 10.0) -> None:
        digest = hashlib.sha256(str(env_root).encode()).hexdigest()[:10]
        self.control_dir = Path("/tmp") / f"enosnet-cm-{digest}"
        self.connect_timeout = connect_timeout
        self._hosts: dict[str, Host] = {}

    def argv(self, host: Host, command: str) -> list[str]:
        self.control_dir.mkdir(mode=0o700, exist_ok=True)
        self._hosts[host.name] = host
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout:g}",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C", "-o", "ControlPersist=120"]
        if host.keyfile:
            opts += ["-i", host.keyfile]
        opts += shlex.split(str(host.extra.get("ansible_ssh_common_args", "")))
        return ["ssh", *opts, "-p", str(host.port), f"{host.user}@{host.address}", command]

    def run(self, host: Host, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> Output:
        """Run a shell ``command`` on ``host``; never raises for a failing command (see ``Output.rc``)."""
        try:
            done = subprocess.run(self.argv(host, command), input=stdin, capture_output=True, timeout=timeout,
                                  stdin=None if stdin is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Output(host, 124, b"", f"timed out after {timeout:g} s")
        return Output(host, done.returncode, done.stdout, done.stderr.decode(errors="replace"))

    def run_all(self, commands: Mapping[Host, str], *, timeout: float = 60.0) -> dict[Host, Output]:
        """One command per host, all hosts at once."""
        return fan_out(list(commands), lambda h: self.run(h, commands[h], timeout=timeout))

    def pull_dirs(self, host: Host, dirs: Sequence[str], dest: Path, *, before: str = "",
                  timeout: float = 60.0) -> str:
        """Copy the folders ``dirs`` of ``host`` into ``dest/<basename>`` in one tar stream.

        ``before`` is a shell line run first in the same command; its output is returned.
        """
        groups: dict[str, list[str]] = {}
        for path in dirs:
            parent, _, name = path.rstrip("/").rpartition("/")
            groups.setdefault(parent or "/", []).append(name)
        members = " ".join(f"-C {shlex.quote(parent)} {' '.join(shlex.quote(n) for n in names)}"
                           for parent, names in groups.items())
        tar = f"tar -cf - {members}" if dirs else "true"
        first = f"{{ {before}\n}} 2>&1; printf '\\n'; " if before else ""
        command = f"{first}printf '{TAR_MARK}\\n'; {tar}"
        out = self.run(host, command, timeout=timeout)
        head, mark, data = out.stdout.partition(f"{TAR_MARK}\n".encode())
        if not out.ok or not mark:
            raise RemoteError(f"{host.name}: pulling {', '.join(dirs) or 'nothing'} failed: "
                              f"{out.stderr.strip() or head.decode(errors='replace')[-300:]}")
        if dirs:
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                archive.extractall(dest, filter="data")
        return head.decode(errors="replace").removesuffix("\n")

    def close(self) -> None:
        """Stop the master connections."""
        for host in self._hosts.values():
            argv = self.argv(host, "")
            subprocess.run([*argv[:-2], "-O", "exit", argv[-2]], capture_output=True, timeout=10)
        self._hosts.clear()
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fan_out(hosts: Sequence[Host], step: Callable[[Host], T]) -> dict[Host, T]:
    """``step`` on every host in parallel threads; results in host order."""
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=min(64, len(hosts))) as pool:
        return dict(zip(hosts, pool.map(step, hosts), strict=True))
