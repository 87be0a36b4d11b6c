"""Plain commands and file transfers on many hosts at once, over OpenSSH (ParaMgmt / pssh style).

Every host runs as an asyncio subprocess of ``ssh`` or ``sftp`` with bounded
concurrency. Connection failures (refused, timed out, reset during the
handshake) are retried with exponential backoff; a command that ran and
failed never is. Each host's work has a deadline (``timeout`` seconds, 0 for
none) covering its retries. ``{host}`` in a command, path or script text is
replaced by the host's name (``{address}`` by its address).

Example (needs reachable hosts)::

    results = run_command("uname -r", roles=roles, role="server")
    for host, result in results.ok.items():
        print(host.name, result.stdout.strip())
    push(["tool.conf"], "/etc/tool", roles=roles)
    pull(["/var/log/tool.log"], "logs/{host}", roles=roles)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shlex
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from enosnet.environment import Environment
from enosnet.errors import ConfigError, UsageError
from enosnet.model import Host
from enosnet.remote.results import HostResult, Results, Status
from enosnet.remote.ssh import SshOptions, ensure_control_dir, sftp_argv, ssh_argv
from enosnet.remote.targets import HostsLike, RoleSelector, select_hosts

ResultCallback = Callable[[HostResult], None]
T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
DEFAULT_ATTEMPTS = 3
DEFAULT_CONCURRENCY = 64

# OpenSSH's own messages when it could not set up a session; anything else with exit 255 came from the command.
_CONNECT_ERRORS = re.compile(
    r"^(ssh: connect to host .*: (Connection refused|Connection timed out|No route to host|Network is unreachable"
    r"|Connection reset by peer)|kex_exchange_identification: .*|Connection (closed|reset|timed out) by .*"
    r"|ssh_exchange_identification: .*|banner exchange: .*|mux_client_.*|Control socket connect.*"
    r"|Timeout, server .* not responding.*|client_loop: send disconnect: .*"
    r"|Connection to .* closed by remote host\.)\s*$", re.MULTILINE)
_SFTP_ECHO = ("sftp> ", "Entering ")
_MKDIR_NOISE = re.compile(r'^remote mkdir ".*": Failure$')
_SSH_ERRORS = re.compile(
    r"^(ssh: .*|.*Permission denied \(.*\)\.|Host key verification failed\.|Load key .*|no such identity: .*"
    r"|Bad owner or permissions on .*|.*REMOTE HOST IDENTIFICATION HAS CHANGED.*|Connection closed by .*)\s*$",
    re.MULTILINE)


@dataclass(frozen=True)
class Retry:
    """Retries of connection failures: ``attempts`` in all, waiting ``backoff`` × 2^n (± jitter) in between."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int) -> float:
        base: float = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class _Outcome:
    rc: int | None
    stdout: str
    stderr: str
    timed_out: bool = False


# ── public API ──────────────────────────────────────────────────────────────


def run_command(cmd: str, *, roles: HostsLike, role: RoleSelector = None, timeout: float = DEFAULT_TIMEOUT,
                attempts: int = DEFAULT_ATTEMPTS, concurrency: int = DEFAULT_CONCURRENCY, strict: bool = False,
                ssh: SshOptions | None = None, on_result: ResultCallback | None = None,
                env: Environment | None = None) -> Results[HostResult]:
    """Run the shell command ``cmd`` on every selected host; one HostResult per host.

    ``{host}`` in ``cmd`` becomes each host's name. With ``strict`` a failure
    on any host raises ``HostsFailed`` carrying the results. With ``env`` the
    results are also written to a new folder of its ``runs/`` (``results.jsonl``).

    >>> run_command("true", roles=[], role=None)
    Traceback (most recent call last):
    ...
    enosnet.errors.ConfigError: no hosts to run on
    """
    _check_knobs(cmd=cmd, attempts=attempts, timeout=timeout, concurrency=concurrency)
    fan = _Fanout(select_hosts(roles, role=role), timeout, Retry(attempts), concurrency, ssh, on_result)
    results = fan.run(lambda host: fan.ssh(host, substitute(cmd, host)))
    return _finish(results, strict, env, {"run": cmd})


def push(files: Sequence[str | Path], remote_dir: str, *, roles: HostsLike, role: RoleSelector = None,
         timeout: float = DEFAULT_TIMEOUT, attempts: int = DEFAULT_ATTEMPTS, concurrency: int = DEFAULT_CONCURRENCY,
         strict: bool = False, ssh: SshOptions | None = None, on_result: ResultCallback | None = None,
         env: Environment | None = None) -> Results[HostResult]:
    """Copy local files (or folders, recursively) into ``remote_dir`` on every host, creating it.

    ``{host}`` works in the local paths and in ``remote_dir``. Every local
    file is checked before any host is contacted (``ConfigError`` if missing).
    """
    _check_knobs(attempts=attempts, timeout=timeout, concurrency=concurrency)
    hosts = select_hosts(roles, role=role)
    if not files:
        raise UsageError("push: no local files given")
    plans = {h: ([Path(substitute(str(f), h)) for f in files], substitute(remote_dir, h)) for h in hosts}
    missing = sorted({str(p) for paths, _ in plans.values() for p in paths if not p.exists()})
    if missing:
        raise ConfigError(f"push: no such local file: {', '.join(missing)}")
    fan = _Fanout(hosts, timeout, Retry(attempts), concurrency, ssh, on_result)
    what = {"push": [str(f) for f in files], "dir": remote_dir}
    return _finish(fan.run(lambda host: fan.sftp(host, _push_batch(*plans[host]))), strict, env, what)


def pull(remote_files: Sequence[str], local_dir: str | Path, *, roles: HostsLike, role: RoleSelector = None,
         timeout: float = DEFAULT_TIMEOUT, attempts: int = DEFAULT_ATTEMPTS, concurrency: int = DEFAULT_CONCURRENCY,
         strict: bool = False, ssh: SshOptions | None = None, on_result: ResultCallback | None = None,
         env: Environment | None = None) -> Results[HostResult]:
    """Copy remote files (or folders, recursively; globs work) from every host into ``local_dir``.

    ``local_dir`` must contain ``{host}`` when there is more than one host, so
    that hosts do not overwrite each other's files: ``pull(["/var/log/x"], "logs/{host}", ...)``.
    """
    _check_knobs(attempts=attempts, timeout=timeout, concurrency=concurrency)
    hosts = select_hosts(roles, role=role)
    if not remote_files:
        raise UsageError("pull: no remote files given")
    if len(hosts) > 1 and "{host}" not in str(local_dir) and "{address}" not in str(local_dir):
        raise UsageError(f"pull: {len(hosts)} hosts would write into the same folder {local_dir}: "
                         "put {host} in it, e.g. results/{host}")
    plans = {h: ([substitute(f, h) for f in remote_files], Path(substitute(str(local_dir), h))) for h in hosts}
    for _, folder in plans.values():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"pull: cannot create the local folder {folder}: {exc.strerror}") from None
    fan = _Fanout(hosts, timeout, Retry(attempts), concurrency, ssh, on_result)
    what = {"pull": list(remote_files), "dir": str(local_dir)}
    return _finish(fan.run(lambda host: fan.sftp(host, _pull_batch(*plans[host]))), strict, env, what)


def script(scripts: Sequence[str | Path], *, roles: HostsLike, role: RoleSelector = None,
           timeout: float = DEFAULT_TIMEOUT, attempts: int = DEFAULT_ATTEMPTS, concurrency: int = DEFAULT_CONCURRENCY,
           strict: bool = False, ssh: SshOptions | None = None, on_result: ResultCallback | None = None,
           env: Environment | None = None) -> Results[HostResult]:
    """Run local scripts on every host, in order, stopping at the first that fails; nothing is left behind.

    Each script is sent over the connection into a temporary file that is
    removed when it ends; its ``#!`` line is honoured (``sh`` without one).
    ``{host}`` in a script's text becomes the host's name.
    """
    _check_knobs(attempts=attempts, timeout=timeout, concurrency=concurrency)
    hosts = select_hosts(roles, role=role)
    if not scripts:
        raise UsageError("script: no scripts given")
    texts = []
    for path in scripts:
        try:
            texts.append(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"script: cannot read {path}: {exc.strerror}") from None
    fan = _Fanout(hosts, timeout, Retry(attempts), concurrency, ssh, on_result)
    results = fan.run(lambda host: fan.scripts(host, [substitute(t, host) for t in texts]))
    return _finish(results, strict, env, {"script": [str(p) for p in scripts]})


def lrun(cmd: str, *, roles: HostsLike, role: RoleSelector = None, timeout: float = DEFAULT_TIMEOUT,
         concurrency: int = DEFAULT_CONCURRENCY, strict: bool = False,
         on_result: ResultCallback | None = None, env: Environment | None = None) -> Results[HostResult]:
    """Run the shell command ``cmd`` here, once per host (ParaMgmt's ``lcmd``).

    ``{host}`` and ``{address}`` are substituted, shell-quoted; the command
    also sees ``ENOSNET_HOST`` and ``ENOSNET_ADDRESS`` in its environment.
    """
    _check_knobs(cmd=cmd, timeout=timeout, concurrency=concurrency)
    fan = _Fanout(select_hosts(roles, role=role), timeout, Retry(1), concurrency, None, on_result)
    return _finish(fan.run(lambda host: fan.local(host, substitute(cmd, host, quote=shlex.quote))), strict, env,
                   {"lrun": cmd})


def substitute(text: str, host: Host, *, quote: Callable[[str], str] = str) -> str:
    """``text`` with ``{host}`` replaced by the host's name and ``{address}`` by its address.

    Other braces are left alone, so shell and awk code stays intact. ``quote``
    (e.g. ``shlex.quote`` for a local shell line) is applied to both values.

    >>> substitute("awk '{print $1}' /tmp/{host}.log", Host("198.18.0.2", alias="server-0"))
    "awk '{print $1}' /tmp/server-0.log"
    """
    return text.replace("{host}", quote(host.name)).replace("{address}", quote(host.address))


# ── the engine ──────────────────────────────────────────────────────────────


class _Fanout:
    """Runs one coroutine per host under a semaphore and a per-host deadline."""

    def __init__(self, hosts: Sequence[Host], timeout: float, retry: Retry, concurrency: int,
                 ssh: SshOptions | None, on_result: ResultCallback | None) -> None:
        self.hosts = tuple(hosts)
        self.timeout = timeout
        self.retry = retry
        self.concurrency = concurrency
        self.options = ssh or SshOptions()
        self.on_result = on_result

    def run(self, work: Callable[[Host], Coroutine[Any, Any, HostResult]]) -> Results[HostResult]:
        ensure_control_dir(self.options)
        return Results(_run_sync(self._all(work)))

    async def _all(self, work: Callable[[Host], Coroutine[Any, Any, HostResult]]) -> dict[Host, HostResult]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(host: Host) -> HostResult:
            async with gate:
                result = await work(host)
            if self.on_result is not None:
                self.on_result(result)
            return result

        done = await asyncio.gather(*(one(h) for h in self.hosts))
        return dict(zip(self.hosts, done, strict=True))

    def deadline(self) -> float | None:
        return time.monotonic() + self.timeout if self.timeout > 0 else None

    # ── kinds of work ──────────────────────────────────────────────────────

    async def ssh(self, host: Host, command: str, stdin: bytes | None = None,
                  deadline: float | None = None) -> HostResult:
        argv = ssh_argv(host, self.options, command)
        return await self._attempts(host, argv, stdin, deadline or self.deadline())

    async def sftp(self, host: Host, batch: str) -> HostResult:
        result = await self._attempts(host, sftp_argv(host, self.options), batch.encode(), self.deadline())
        # sftp echoes each batch line, and a "-mkdir" of an existing folder complains but is not an error
        stdout = "".join(line for line in result.stdout.splitlines(True) if not line.startswith(_SFTP_ECHO))
        stderr = "".join(line for line in result.stderr.replace("\r\n", "\n").splitlines(True)
                         if not _MKDIR_NOISE.match(line))
        return replace(result, stdout=stdout, stderr=stderr)

    async def scripts(self, host: Host, texts: Sequence[str]) -> HostResult:
        deadline, started = self.deadline(), time.monotonic()
        out: list[HostResult] = []
        for text in texts:
            out.append(await self.ssh(host, _SCRIPT_RUNNER, text.encode(), deadline))
            if not out[-1].ok:
                break
        last = out[-1]
        return HostResult(host, last.status, last.rc, "".join(r.stdout for r in out), "".join(r.stderr for r in out),
                          max(r.attempts for r in out), time.monotonic() - started, last.message)

    async def local(self, host: Host, command: str) -> HostResult:
        started = time.monotonic()
        env = {**os.environ, "ENOSNET_HOST": host.name, "ENOSNET_ADDRESS": host.address}
        outcome = await _spawn(["sh", "-c", command], None, self.deadline(), env)
        return _result(host, outcome, 1, started, self.timeout, remote=False)

    async def _attempts(self, host: Host, argv: list[str], stdin: bytes | None,
                        deadline: float | None) -> HostResult:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            outcome = await _spawn(argv, stdin, deadline, None)
            if not _retryable(outcome) or attempt >= self.retry.attempts:
                break
            pause = self.retry.delay(attempt)
            if deadline is not None and time.monotonic() + pause >= deadline:
                break
            await asyncio.sleep(pause)
        return _result(host, outcome, attempt, started, self.timeout, remote=True)


# a script arrives on stdin, goes into a private temporary file, runs, and is removed whatever happens
_SCRIPT_RUNNER = ('f=$(mktemp) || exit 125; trap \'rm -f "$f"\' EXIT; cat > "$f" && chmod 700 "$f" '
                  '&& "$f" </dev/null')


async def _spawn(argv: list[str], stdin: bytes | None, deadline: float | None,
                 env: dict[str, str] | None) -> _Outcome:
    """Run ``argv`` to completion or until ``deadline``; on the deadline kill its whole process group.

    stdout and stderr are our own pipes, not asyncio's: a multiplexed ssh client
    hands them to its master connection, which keeps them open until the remote
    command ends, so after a kill we must be able to stop reading on our own.
    """
    loop = asyncio.get_running_loop()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=out_w, stderr=err_w, start_new_session=True, env=env)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    sinks = [await _Sink.attach(loop, fd) for fd in (out_r, err_r)]
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        rc: int | None = await asyncio.wait_for(_complete(proc, stdin, sinks), remaining)
    except TimeoutError:
        rc = None
    finally:
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:
            proc.stdin.close()
        for sink in sinks:
            sink.close()
    if rc is None:
        await proc.wait()
    return _Outcome(rc, _text(sinks[0].data), _text(sinks[1].data), timed_out=rc is None)


async def _complete(proc: asyncio.subprocess.Process, stdin: bytes | None, sinks: list[_Sink]) -> int:
    if stdin is not None and proc.stdin is not None:
        proc.stdin.write(stdin)
        with suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.drain()
        proc.stdin.close()
    await asyncio.gather(*(sink.done for sink in sinks))
    return await proc.wait()


class _Sink(asyncio.Protocol):
    """Collects everything read from one pipe; ``done`` resolves at end of file."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.data = bytearray()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.BaseTransport | None = None

    @classmethod
    async def attach(cls, loop: asyncio.AbstractEventLoop, fd: int) -> _Sink:
        sink = cls(loop)
        transport, _ = await loop.connect_read_pipe(lambda: sink, os.fdopen(fd, "rb", buffering=0))
        sink.transport = transport
        return sink

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _retryable(outcome: _Outcome) -> bool:
    return outcome.rc == 255 and _CONNECT_ERRORS.search(outcome.stderr) is not None


def _result(host: Host, outcome: _Outcome, attempts: int, started: float, timeout: float, *,
            remote: bool) -> HostResult:
    duration = time.monotonic() - started
    status, message = Status.OK, ""
    if outcome.timed_out:
        status, message = Status.TIMEOUT, f"timed out after {timeout:g} s"
    elif remote and outcome.rc == 255 and _SSH_ERRORS.search(outcome.stderr):
        status, message = Status.UNREACHABLE, _unreachable_message(outcome.stderr, attempts)
    elif outcome.rc != 0:
        status = Status.FAILED
    return HostResult(host, status, outcome.rc, outcome.stdout, outcome.stderr, attempts, duration, message)


def _unreachable_message(stderr: str, attempts: int) -> str:
    line = (_SSH_ERRORS.search(stderr) or _CONNECT_ERRORS.search(stderr))
    text = line.group(0).strip() if line else stderr.strip().splitlines()[-1]
    if "Permission denied" in text:
        text += " (wrong key or user?)"
    elif "Host key verification failed" in text or "IDENTIFICATION HAS CHANGED" in text:
        text += " (the host's key is not the one in known_hosts)"
    return f"{text} after {attempts} attempt{'s' if attempts > 1 else ''}"


def _text(data: bytes | bytearray | None) -> str:
    return (data or b"").decode(errors="replace")


def _finish(results: Results[HostResult], strict: bool, env: Environment | None,
            what: dict[str, Any]) -> Results[HostResult]:
    if env is not None:
        record(env, results, what)
    return results.raise_for_failures() if strict else results


def record(env: Environment, results: Results[HostResult], what: dict[str, Any]) -> Path:
    """Write ``results`` as JSON lines (what ran first, then one line per host) in a new run folder."""
    folder = env.new_run_dir(next(iter(what)))
    lines = [json.dumps(what), *(json.dumps(r.to_dict()) for r in results.values())]
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _check_knobs(*, cmd: str | None = None, attempts: int = 1, timeout: float = 0, concurrency: int = 1) -> None:
    if cmd is not None and not cmd.strip():
        raise UsageError("no command given")
    if attempts < 1:
        raise UsageError(f"attempts must be at least 1, not {attempts}")
    if timeout < 0:
        raise UsageError(f"timeout must be 0 (none) or positive, not {timeout:g}")
    if concurrency < 1:
        raise UsageError(f"concurrency must be at least 1, not {concurrency}")


# ── sftp batches ────────────────────────────────────────────────────────────


def _quote(path: str) -> str:
    """A path quoted for an sftp batch line."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _push_batch(files: Iterable[Path], remote_dir: str) -> str:
    """``-mkdir`` every level of ``remote_dir`` (errors ignored: it may exist), then put each file."""
    target = PurePosixPath(remote_dir)
    levels = [target, *target.parents][::-1]
    lines = [f"-mkdir {_quote(str(level))}" for level in levels if str(level) not in ("/", ".")]
    lines += [f"put -R -p {_quote(str(f.absolute()))} {_quote(str(target))}/" for f in files]
    return "\n".join(lines) + "\n"


def _pull_batch(files: Iterable[str], local_dir: Path) -> str:
    folder = str(local_dir.absolute())
    return "".join(f"get -R -p {_quote(f)} {_quote(folder)}/\n" for f in files)


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also when called from inside a running event loop (e.g. Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="enosnet-fanout")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


__all__ = ["Retry", "lrun", "pull", "push", "run_command", "script", "substitute"]
