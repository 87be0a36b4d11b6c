"""A persistent session per host: one long-lived ``sh`` over the shared SSH connection setup.

The bench talks to every host a few times per run (emulation, metadata, the
pull of outputs). A ``Session`` keeps one ``sh`` per host open over the same
OpenSSH options and master connection as the fan-out and Ansible
(``remote.ssh``), so each command costs a few milliseconds instead of a
session set-up, and results are the fan-out's ``HostResult`` in ``Results``.

>>> from enosnet.model import Host
>>> Session().argv(Host("198.18.0.2"), "true")[-3:]
['-T', '198.18.0.2', 'true']
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import select
import shlex
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from enosnet.errors import ConfigError, EnosnetError, RemoteError
from enosnet.model import Host
from enosnet.remote.results import HostResult, Results, Status
from enosnet.remote.ssh import SshOptions, close_connections, ensure_control_dir, ssh_argv

T = TypeVar("T")
K = TypeVar("K")
TAR_MARK = "@@ENOSNET-TAR@@"
UNREACHABLE = 255  # what ssh exits with when it could not connect


class Session:
    """Commands on hosts through one long-lived ``sh`` each (closed by ``close``)."""

    def __init__(self, options: SshOptions | None = None) -> None:
        self.options = options or SshOptions()
        self._hosts: dict[str, Host] = {}
        self._channels: dict[str, _Channel] = {}
        self._lock = threading.Lock()

    def argv(self, host: Host, command: str) -> list[str]:
        """The ssh command line running ``command`` on ``host``, with the shared options and master."""
        ensure_control_dir(self.options)
        self._hosts[host.name] = host
        return ssh_argv(host, self.options, command)

    def run(self, host: Host, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> HostResult:
        """Run a shell ``command`` on ``host``; never raises for a failing command (see the result's status)."""
        started = time.monotonic()
        rc, out, err = self._exec(host, command, timeout=timeout, stdin=stdin)
        return command_result(host, rc, out.decode(errors="replace"), err, duration=time.monotonic() - started,
                              timeout=timeout)

    def run_all(self, commands: Mapping[Host, str], *, timeout: float = 60.0,
                stdin: bytes | None = None) -> Results[HostResult]:
        """One command per host, all hosts at once (``results.raise_for_failures()`` turns failures into
        ``HostsFailed``)."""
        return Results(fan_out(list(commands), lambda h: self.run(h, commands[h], timeout=timeout, stdin=stdin)))

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
        rc, out, err = self._exec(host, f"{first}printf '{TAR_MARK}\\n'; {tar}", timeout=timeout)
        head, mark, data = out.partition(f"{TAR_MARK}\n".encode())
        if rc != 0 or not mark:
            raise RemoteError(f"{host.name}: pulling {', '.join(dirs) or 'nothing'} failed: "
                              f"{err.strip() or head.decode(errors='replace')[-300:]}")
        if dirs:
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                archive.extractall(dest, filter="data")
        return head.decode(errors="replace").removesuffix("\n")

    def _exec(self, host: Host, command: str, *, timeout: float,
              stdin: bytes | None = None) -> tuple[int | None, bytes, str]:
        """(rc, stdout, stderr); rc None when it timed out. Through the channel unless there is ``stdin``."""
        if stdin is None:
            channel = self._channel(host)
            if channel is not None:
                try:
                    rc, out, err = channel.run(command, timeout=timeout)
                    return rc, out, err.decode(errors="replace")
                except TimeoutError:
                    self._drop(host)
                    return None, b"", ""
                except OSError:
                    self._drop(host)  # the channel died: fall back to a one-off ssh
        try:
            done = subprocess.run(self.argv(host, command), input=stdin, capture_output=True, timeout=timeout,
                                  stdin=None if stdin is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return None, b"", ""
        return done.returncode, done.stdout, done.stderr.decode(errors="replace")

    def _channel(self, host: Host) -> _Channel | None:
        with self._lock:
            channel = self._channels.get(host.name)
            if channel is None or not channel.alive():
                try:
                    channel = _Channel(self.argv(host, "exec sh"), timeout=self.options.connect_timeout + 5)
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
        """Stop the channels and the master connections they used."""
        for name in list(self._channels):
            self._drop(self._hosts[name])
        close_connections(self._hosts.values(), self.options)
        self._hosts.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def command_result(host: Host, rc: int | None, stdout: str, stderr: str, *, duration: float = 0.0,
                   timeout: float = 0.0) -> HostResult:
    """The ``HostResult`` of a command that exited ``rc`` (None: it timed out after ``timeout`` seconds)."""
    if rc is None:
        return HostResult(host, Status.TIMEOUT, stdout=stdout, stderr=stderr, duration=duration,
                          message=f"timed out after {timeout:g} s")
    if rc == 0:
        return HostResult(host, Status.OK, rc, stdout, stderr, duration=duration)
    if rc == UNREACHABLE and not stdout:
        return HostResult(host, Status.UNREACHABLE, rc, stdout, stderr, duration=duration,
                          message=stderr.strip()[-300:] or "ssh could not connect")
    return HostResult(host, Status.FAILED, rc, stdout, stderr, duration=duration,
                      message=stderr.strip()[-300:] or f"exit status {rc}")


def fan_out(items: Sequence[K], step: Callable[[K], T]) -> dict[K, T]:
    """``step`` on every item (hosts, targets) in parallel threads; results in their order."""
    if not items:
        return {}
    with ThreadPoolExecutor(max_workers=min(64, len(items))) as pool:
        return dict(zip(items, pool.map(step, items), strict=True))


def gather(items: Sequence[K], step: Callable[[K], T], what: str, *, name: Callable[[K], str]) -> dict[K, T]:
    """``fan_out`` of a step that raises ``EnosnetError`` on failure: every item is tried, then one error
    names each that failed and why (``ConfigError`` when all failed for their input, else ``RemoteError``)."""
    def guarded(item: K) -> tuple[T | None, EnosnetError | None]:
        try:
            return step(item), None
        except EnosnetError as exc:
            return None, exc

    outcomes = fan_out(items, guarded)
    errors = {name(item): exc for item, (_, exc) in outcomes.items() if exc is not None}
    if errors:
        kind = ConfigError if all(isinstance(e, ConfigError) for e in errors.values()) else RemoteError
        raise kind(f"{what} failed on {len(errors)} of {len(items)} hosts: " +
                   "; ".join(f"{item}: {exc}" for item, exc in sorted(errors.items())))
    return {item: result for item, (result, _) in outcomes.items()}  # type: ignore[misc]


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
