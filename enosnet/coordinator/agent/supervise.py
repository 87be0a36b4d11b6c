"""Running the agent: in the foreground, or as a daemon whose supervisor restarts it.

Stdlib-only, Python 3.8 compatible (ships in the agent zipapp). The daemon mode
is for hosts without systemd (the local namespace hosts): the command returns
once the agent listens, leaving a supervisor process (its pid in ``--pidfile``)
that restarts the worker when it dies and stops it on SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time

from .runtime import Agent, Config, load_config, serve

RESTART_FIRST_S, RESTART_MAX_S, HEALTHY_AFTER_S = 0.2, 5.0, 30.0
log = logging.getLogger("enosnet.agent")


def setup_logging(config: Config, *, to_stderr: bool) -> None:
    handler: logging.Handler
    if to_stderr:
        handler = logging.StreamHandler(sys.stderr)
    else:
        os.makedirs(config.workdir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(config.workdir, "agent.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def run_worker(configs: list[Config], notify_fd: int | None = None) -> int:
    """Bind every agent, tell ``notify_fd`` (if any) we listen, serve until SIGTERM."""
    agents = [Agent(cfg) for cfg in configs]
    try:
        for agent in agents:
            agent.open()
    except OSError as exc:
        _notify(notify_fd, f"error: cannot bind: {exc}")
        raise
    for agent in agents:
        with open(os.path.join(agent.cfg.workdir, "agent.pid"), "w") as handle:
            handle.write(f"{os.getpid()}\n")
    log.info("agent %s listening on %s:%d", ",".join(a.cfg.worker_id for a in agents),
             *agents[0].link.sock.getsockname())
    serve(agents, ready=lambda: _notify(notify_fd, "ok"))
    log.info("agent stopped")
    return 0


def _notify(fd: int | None, text: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (text + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def daemonize(config_path: str, pidfile: str, timeout_s: float = 15.0) -> int:
    """Start the supervisor in the background; returns 0 once the worker listens."""
    config = load_config(config_path)
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        return _wait_notice(read_fd, timeout_s)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    _detach_stdio()
    setup_logging(config, to_stderr=False)
    try:
        code = supervise(config_path, pidfile, write_fd)
    except BaseException:
        log.exception("supervisor failed")
        code = 1
    os._exit(code)


def _wait_notice(fd: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    text = data.decode(errors="replace").strip()
    if text == "ok":
        return 0
    sys.stderr.write(f"enosnet agent did not start: {text or 'no answer'}\n")
    return 1


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def supervise(config_path: str, pidfile: str, notify_fd: int | None) -> int:
    """Restart the worker whenever it dies (backing off), until SIGTERM; forwards SIGTERM."""
    _write_pidfile(pidfile)
    child: list[int] = []
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for pid in child:
            _kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff = RESTART_FIRST_S
    try:
        while not stopping:
            started = time.monotonic()
            status = _run_child(config_path, notify_fd, child)
            notify_fd = None
            if stopping or status == 0:
                break
            backoff = RESTART_FIRST_S if time.monotonic() - started > HEALTHY_AFTER_S else backoff
            log.warning("worker died (wait status %d); restarting in %.1f s", status, backoff)
            _sleep_unless(stopping, backoff)
            backoff = min(backoff * 2, RESTART_MAX_S)
    finally:
        _remove(pidfile)
    return 0


def _run_child(config_path: str, notify_fd: int | None, child: list[int]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = run_worker([load_config(config_path)], notify_fd)
        except BaseException:
            log.exception("worker failed")
        os._exit(code)
    child[:] = [pid]
    if notify_fd is not None:
        os.close(notify_fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 0
            break
    child.clear()
    return status


def _sleep_unless(stopping: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stopping and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _write_pidfile(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)
