"""Commands and file pulls on the experiment's hosts over SSH, one persistent connection per host.

The bench layer talks to each host a few times per run (netem, metadata, the
pull of outputs); a shared SSH master connection per host keeps each of
those to a few milliseconds instead of a full handshake.

>>> Shell(Path("/tmp/example-env")).control_dir.name.startswith("cm-")
True
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from enosnet.errors import RemoteError
from enosnet.model import Host
from enosnet.remote.ssh import default_control_dir, plain_ssh_argv, private_dir

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
        self.control_dir = default_control_dir() / f"cm-{digest}"
        self.connect_timeout = connect_timeout
        self._hosts: dict[str, Host] = {}
        self._channels: dict[str, _Channel] = {}
        self._lock = threading.Lock()

    def argv(self, host: Host, command: str) -> list[str]:
        private_dir(private_dir(self.control_dir.parent) / self.control_dir.name)
        self._hosts[host.name] = host
        master = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C", "-o", "ControlPersist=120"]
        return plain_ssh_argv(host, command, connect_timeout=self.connect_timeout, extra=master)

    def run(self, host: Host, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> Output:
        """Run a shell ``command`` on ``host``; never raises for a failing command (see ``Output.rc``).

        Without ``stdin`` the command goes through the host's long-lived channel (opened on first use).
        """
        if stdin is None:
            channel = self._channel(host)
            if channel is not None:
                try:
                    rc, out, err = channel.run(command, timeout=timeout)
                    return Output(host, rc, out, err.decode(errors="replace"))
                except TimeoutError:
                    self._drop(host)
                    return Output(host, 124, b"", f"timed out after {timeout:g} s")
                except OSError:
                    self._drop(host)  # the channel died: fall back to a one-off ssh
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

    def _channel(self, host: Host) -> _Channel | None:
        with self._lock:
            channel = self._channels.get(host.name)
            if channel is None or not channel.alive():
                try:
                    channel = _Channel(self.argv(host, "exec sh"), timeout=self.connect_timeout + 5)
                except (OSError, TimeoutError):
                    return None
                self._channels[host.name] = channel
            return channel

    def _drop(self, host: Host) -> None:
        with self._lock:
            channel = self._channels.pop(host.name, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Stop the channels and the master connections."""
        for name in list(self._channels):
            self._drop(self._hosts[name])
        for host in self._hosts.values():
            argv = self.argv(host, "")
            subprocess.run([*argv[:-2], "-O", "exit", argv[-2]], capture_output=True, timeout=10)
        self._hosts.clear()
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Channel:
    """A long-lived ``sh`` on one host: each command's output is captured remotely, then framed back.

    Saves the SSH session set-up (fork, PAM, login shell) every command would otherwise pay: the
    bench talks to every host after every run.
    """

    SETUP = b'D=$(mktemp -d /tmp/enosnet-sh.XXXXXX) || exit 1; trap \'rm -rf "$D"\' EXIT\n'

    def __init__(self, argv: list[str], *, timeout: float) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.buffer = b""
        self.lock = threading.Lock()
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.SETUP)
        self.proc.stdin.flush()
        try:
            self.run("true", timeout=timeout)
        except (OSError, TimeoutError):
            self.close()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, command: str, *, timeout: float) -> tuple[int, bytes, bytes]:
        mark = secrets.token_hex(8)
        script = (f'( {command}\n) >"$D/o" 2>"$D/e" </dev/null; rc=$?; '
                  f'printf \'\\n@@{mark} %s %s %s @@\\n\' "$rc" $(wc -c <"$D/o") $(wc -c <"$D/e"); '
                  f'cat "$D/o" "$D/e"\n')
        deadline = time.monotonic() + timeout
        with self.lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(script.encode())
            self.proc.stdin.flush()
            frame = re.compile(rf"\n@@{mark} (\d+) (\d+) (\d+) @@\n".encode())
            match = None
            while match is None:
                self._read(deadline)
                match = frame.search(self.buffer)
            rc, n_out, n_err = (int(g) for g in match.groups())
            self.buffer = self.buffer[match.end():]
            while len(self.buffer) < n_out + n_err:
                self._read(deadline)
            out, err = self.buffer[:n_out], self.buffer[n_out:n_out + n_err]
            self.buffer = self.buffer[n_out + n_err:]
        return rc, out, err

    def _read(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError
        data = os.read(fd, 1 << 20)
        if not data:
            raise OSError("channel closed")
        self.buffer += data

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def fan_out(hosts: Sequence[Host], step: Callable[[Host], T]) -> dict[Host, T]:
    """``step`` on every host in parallel threads; results in host order."""
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=min(64, len(hosts))) as pool:
        return dict(zip(hosts, pool.map(step, hosts), strict=True))
