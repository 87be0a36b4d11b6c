"""The agent's event loop: requests in, processes started on time, reports out.

Stdlib-only, Python 3.8 compatible (ships in the agent zipapp). One process can
serve several agents (``serve([a, b, ...])``), which the loopback benchmark uses;
on a host there is one.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from .actions import Action, ActionError, parse_actions
from .wire import (
    ACTIVE,
    DEFAULT_PORT,
    FINISHED,
    IDLE,
    MAX_ARM_AHEAD_S,
    MAX_DATAGRAM,
    REQUESTS,
    MessageType,
    ReplayGuard,
    RunState,
    WireError,
    decode,
    encode,
    env_hash,
    fit,
)

VERSION = "1"
RUN_ID = re.compile(r"(?!\.+\Z)[A-Za-z0-9_.:-]{1,48}")  # fullmatch; never "." or ".."
WAKE_EARLY_NS = 2_000_000
SPIN_NS = 200_000
GATE_SHELL = "/bin/sh"
GATE_SCRIPT = 'read -r _ <&3 || exit 125; exec 3<&-; exec "$@"'  # no line (gate closed): exit, run nothing
EVENT_FIRST_S, EVENT_MAX_S, EVENT_GIVE_UP_S = 0.25, 4.0, 600.0
READY_POLL_S, READY_GIVE_UP_S = 0.002, 120.0
READY_EXPIRE_S = 600.0  # a PREPAREd run never ARMed (its coordinator died) is cancelled after this
KEEP_REPORTED = 64
REALTIME_PRIORITY = 10
STATUS_RUNS = 8
Addr = tuple[str, int]
log = logging.getLogger("enosnet.agent")


class ConfigProblem(ValueError):
    """The agent's config file is invalid."""


class Config:
    """The agent's config file (see docs/coordinator.md for every field)."""

    def __init__(self, data: dict[str, Any]) -> None:
        try:
            self.worker_id = str(data["worker_id"])
            self.role = str(data.get("role", ""))
            self.env_id = str(data["env_id"])
            self.secret = str(data["secret"]).encode()
            self.port = int(data.get("port", DEFAULT_PORT))
            self.bind = str(data.get("bind", "0.0.0.0"))
            self.workdir = str(data["workdir"])
            self.replay_window_s = float(data.get("replay_window_s", 30.0))
            self.sample_interval_s = float(data.get("sample_interval_s", 1.0))
            self.log_interval_s = float(data.get("log_interval_s", 10.0))
            self.actions: dict[str, Action] = parse_actions(data.get("actions", {}))
        except KeyError as exc:
            raise ConfigProblem(f"missing field {exc.args[0]}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigProblem(str(exc)) from None
        if not 0 < len(self.worker_id.encode()) <= 32:
            raise ConfigProblem("worker_id must be 1 to 32 bytes")
        if len(self.secret) < 16:
            raise ConfigProblem("secret must be at least 16 characters")


def load_config(path: str) -> Config:
    with open(path) as handle:
        return Config(json.load(handle))


class RateLimitedLog:
    """At most one log line per reason and interval; says how many were suppressed."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < self.interval_s:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        more = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        log.warning("%s%s", text, f" ({more} more suppressed)" if more else "")


class Run:
    """One run of an action on this agent; everything but ``proc`` and files is persisted."""

    FIELDS = ("run", "action", "params", "state", "timed", "created", "scheduled", "start_wall", "start_mono",
              "exec_ns", "pid", "ticks", "end_wall", "rc", "error", "reported", "stop_requested",
              "deadline_s", "dir", "late_ns", "usage")
    run: str
    action: str
    params: dict[str, Any]
    state: str
    timed: bool
    created: int
    scheduled: int | None
    start_wall: int | None
    start_mono: int | None
    exec_ns: int | None
    pid: int | None
    ticks: int | None
    end_wall: int | None
    rc: int | None
    error: str | None
    reported: bool
    stop_requested: bool
    deadline_s: float
    dir: str
    late_ns: int | None
    usage: dict[str, float] | None

    def __init__(self, **values: Any) -> None:
        for name in self.FIELDS:
            setattr(self, name, values.get(name))
        self.proc: Child | None = None
        self.files: list[IO[bytes]] = []
        self.target_mono: int = 0
        self.gate: int | None = None  # write end of the run's gate until it starts (see Child.gated)
        self.gate_exe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def record(self) -> dict[str, Any]:
        """What the coordinator gets in the completion report."""
        keys = ("run", "action", "state", "rc", "error", "scheduled", "start_wall", "start_mono",
                "exec_ns", "end_wall", "pid", "dir", "late_ns")
        return {k: getattr(self, k) for k in keys}


class Child:
    """A run's process, in its own session (its process group is the run); ``poll`` reaps it.

    Made at PREPARE with posix_spawn (vfork semantics, cheap even for a large
    agent) and held at a gate, so starting it costs the agent one write: on a
    host shared by many agents, what each does at the start instant is start
    skew.
    """

    RESET = (signal.SIGPIPE, signal.SIGXFSZ)  # ignored by Python; a started program gets the defaults

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.usage: dict[str, float] | None = None

    @classmethod
    def gated(cls, argv: list[str], env: dict[str, str], cwd: str, stdout: int, stderr: int, *,
              home: str) -> tuple[Child, int]:
        """A run's process, made ahead of its start and waiting at a gate; returns it and the gate.

        It is ``sh`` reading one line from a pipe: writing a line opens the
        gate and the shell execs ``argv`` (same pid, same process group, files
        already in place), so at the scheduled instant the agent only writes
        one byte. Closing the gate without a line (the agent cancelled, or
        died) makes it exit 125 without running anything. ``argv`` reaches the
        shell as positional parameters: no value is ever parsed by it.
        """
        read_end, gate = os.pipe()
        os.chdir(cwd)
        try:
            pid = os.posix_spawn(GATE_SHELL, ["sh", "-c", GATE_SCRIPT, "enosnet-gate", *argv], env, setsid=True,
                                 setsigdef=cls.RESET, setsigmask=(),
                                 file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                               (os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stderr, 2),
                                               (os.POSIX_SPAWN_DUP2, read_end, 3)])
        except BaseException:
            os.close(gate)
            raise
        finally:
            os.close(read_end)
            os.chdir(home)
        return cls(pid), gate

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal) once it exited, else None."""
        if self.returncode is None:
            self._wait(os.WNOHANG)
        return self.returncode

    def wait(self) -> int | None:
        if self.returncode is None:
            self._wait(0)
        return self.returncode

    def _wait(self, flags: int) -> None:
        try:
            pid, status, usage = os.wait4(self.pid, flags)
        except ChildProcessError:
            self.returncode = -1
            return
        if pid:
            self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            # what the program and the children it waited for used: CPU seconds and peak resident memory
            self.usage = {"user_s": usage.ru_utime, "system_s": usage.ru_stime, "max_rss_kib": usage.ru_maxrss}


class Agent:
    """One agent: its socket, its runs, its timers. Drive it with ``serve``."""

    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.key = config.secret
        self.env = env_hash(config.env_id)
        self.session = int.from_bytes(os.urandom(8), "big") >> 1
        self.seq = 0
        self.guard = ReplayGuard(window_s=config.replay_window_s)
        self.runs: dict[str, Run] = {}
        self.coord: Addr | None = None
        self.timers: dict[str, tuple[int, Callable[[], None]]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.started_now: list[Run] = []
        self.counters: dict[str, Any] = {"rx": 0, "tx": 0, "retx": 0, "refused": 0, "truncated": 0, "drop": {}}
        self.started = time.monotonic()
        self.rlog = RateLimitedLog(config.log_interval_s)
        self.state_file = os.path.join(config.workdir, "state.json")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    # ── lifecycle ──────────────────────────────────────────────────────────

    def open(self) -> None:
        """Bind the socket and recover what a previous instance left in the workdir."""
        os.makedirs(os.path.join(self.cfg.workdir, "runs"), exist_ok=True)
        # no SO_REUSEADDR: with it a second agent could bind the same UDP port and take half the datagrams
        try:
            self.sock.bind((self.cfg.bind, self.cfg.port))
        except OSError as exc:  # socket.gaierror included: a name that does not resolve here
            if not isinstance(exc, socket.gaierror) and exc.errno != errno.EADDRNOTAVAIL:
                raise
            log.warning("bind address %s is not an address of this host (%s); listening on all interfaces",
                        self.cfg.bind, exc.strerror or exc)
            self.sock.bind(("0.0.0.0", self.cfg.port))
        self.sock.setblocking(False)
        self._recover()

    def close(self) -> None:
        """Stop every active run (process groups killed) and close the socket."""
        for run in list(self.runs.values()):
            if run.state in ACTIVE or run.state == RunState.READY:
                self._shutdown_run(run)
        self._persist()
        self.sock.close()

    def _recover(self) -> None:
        try:
            with open(self.state_file) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return
        except ValueError:
            log.error("%s is unreadable; starting with no runs", self.state_file)
            return
        coord = data.get("coord")
        self.coord = (str(coord[0]), int(coord[1])) if coord else None
        for item in data.get("runs", []):
            run = Run(**item)
            self.runs[run.run] = run
            if run.state in (RunState.READY, RunState.ARMED):
                _kill_orphan(run)  # its gate closed with the old agent, so it never ran; make sure it is gone
                self._finish(run, RunState.FAILED, error="agent restarted before the scheduled start")
            elif run.state == RunState.RUNNING:
                _kill_orphan(run)
                self._finish(run, RunState.FAILED, error="agent restarted during the run")
            elif run.state in FINISHED and not run.reported:
                self._queue_done(run)
        self._persist()

    def _persist(self) -> None:
        done = [r for r in self.runs.values() if r.state in FINISHED and r.reported]
        for old in done[:-KEEP_REPORTED]:
            del self.runs[old.run]
        data = {"coord": list(self.coord) if self.coord else None,
                "runs": [r.to_dict() for r in self.runs.values()]}
        write_json(self.state_file, data)

    # ── datagrams ──────────────────────────────────────────────────────────

    def drain(self) -> None:
        """Handle every datagram waiting on the socket (at most 256 per call)."""
        for _ in range(256):
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM * 2)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop("recv_error", None, str(exc))
                continue
            self.on_datagram(data, addr)

    def on_datagram(self, data: bytes, addr: Addr) -> None:
        t1 = time.time_ns()
        self.counters["rx"] += 1
        try:
            msg = decode(data, key=self.key, env=self.env)
        except WireError as exc:
            self._drop(exc.reason, addr, str(exc))
            return
        if msg.worker != self.cfg.worker_id:
            self._drop("wrong_worker", addr, msg.worker)
            return
        if msg.type not in REQUESTS:
            self._drop("bad_type", addr, msg.type.name)
            return
        reason = self.guard.check(msg.session, msg.seq, msg.ts, t1)
        if reason:
            self._drop(reason, addr, f"seq {msg.seq}")
            return
        if msg.payload.get("claim") is True:
            self._claim(addr)
        try:
            reply = self._handle(msg.type, msg.payload, t1)
        except (ActionError, ValueError, TypeError, KeyError) as exc:
            reply = {"error": str(exc)[:300]}
        except Exception as exc:  # an authenticated request must never take the agent down
            log.exception("handling %s failed", msg.type.name)
            reply = {"error": f"agent error: {exc}"[:300]}
        if reply is not None:
            # bound to the request: its sender's session and send time, so a reply captured from one
            # coordinator process cannot answer another's request with the same seq
            reply["re"] = [msg.session, msg.ts]
            self._send(MessageType.RESP, reply, addr, ack=msg.seq)

    def _drop(self, reason: str, addr: Addr | None, detail: str) -> None:
        drops = self.counters["drop"]
        drops[reason] = drops.get(reason, 0) + 1
        self.rlog.warning(reason, f"dropped datagram from {addr}: {detail}")

    def _send(self, kind: MessageType, payload: dict[str, Any], addr: Addr, ack: int = 0) -> None:
        """Send one datagram; a payload too large for one (many runs, a long path) is cut down, never fatal."""
        cut = fit(payload)
        if cut is not payload:
            self.counters["truncated"] += 1
            self.rlog.warning("truncated", f"{kind.name} to {addr} cut down to fit one datagram")
            payload = cut
        self.seq += 1
        data = encode(kind, payload, key=self.key, env=self.env, worker=self.cfg.worker_id,
                      session=self.session, seq=self.seq, ack=ack)
        try:
            self.sock.sendto(data, addr)
            self.counters["tx"] += 1
        except OSError as exc:
            self._drop("send_error", addr, str(exc))

    def _claim(self, addr: Addr) -> None:
        if addr != self.coord:
            self.coord = addr
            self._persist()
            self._resend_events()

    def _resend_events(self) -> None:
        """Send every unacknowledged event again now, with a fresh backoff."""
        for event in self.events.values():
            event.update(next=0, interval=EVENT_FIRST_S, first=time.monotonic())
        self._arm_event_timer()

    # ── requests ───────────────────────────────────────────────────────────

    def _handle(self, kind: MessageType, payload: dict[str, Any], t1: int) -> dict[str, Any] | None:
        if kind == MessageType.HELLO:
            return {"t1": t1, "role": self.cfg.role, "pid": os.getpid(), "state": self.state(), "v": VERSION}
        if kind == MessageType.ACK:
            self._acked([str(e) for e in payload.get("ev", [])])
            return None
        if kind == MessageType.STATUS:
            return self._status(payload)
        if kind == MessageType.STOP:
            return self._stop_request(payload)
        run_id = _run_id(payload)
        if kind == MessageType.PREPARE:
            return self._prepare(run_id, payload)
        return self._arm(run_id, payload)

    def _prepare(self, run_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        if run_id in self.runs:
            return self._run_reply(self.runs[run_id])
        action = self.cfg.actions.get(str(payload.get("action")))
        if action is None:
            raise ActionError(f"no action {str(payload.get('action'))[:64]!r} "
                              f"(this agent has: {', '.join(sorted(self.cfg.actions)) or 'none'})")
        params = action.check(dict(payload.get("params") or {}))
        deadline = payload.get("deadline_s", action.deadline_s)
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= 7 * 86400:
            raise ActionError("deadline_s must be a number of seconds in (0, 604800]")
        folder = os.path.join(self.cfg.workdir, "runs", run_id)
        run = Run(run=run_id, action=action.name, params=params, state=RunState.READY, timed=bool(payload.get("timed")),
                  created=time.time_ns(), dir=folder, deadline_s=float(deadline), reported=False,
                  stop_requested=False)
        self._make_gated(run)
        self.runs[run_id] = run
        self._timer(f"expire:{run_id}", time.monotonic_ns() + int(READY_EXPIRE_S * 1e9),
                    lambda: self._terminate(run, reason=f"never started: no ARM within {READY_EXPIRE_S:g} s"))
        self._persist()
        return self._run_reply(run)

    def _arm(self, run_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None:
            raise ActionError(f"no run {run_id} (PREPARE it first)")
        if run.state != RunState.READY:
            return self._run_reply(run)
        at = payload.get("at", 0)
        if isinstance(at, bool) or not isinstance(at, int):
            raise ActionError("at must be an integer (ns since the epoch, agent clock; 0 = now)")
        if at > time.time_ns() + MAX_ARM_AHEAD_S * 1_000_000_000:
            raise ActionError(f"at is more than {MAX_ARM_AHEAD_S} s ahead of this agent's clock")
        self.timers.pop(f"expire:{run_id}", None)
        run.scheduled = at or None
        if not at or at <= time.time_ns():
            run.late_ns = time.time_ns() - at if at else None
            self._open_gate(run)
        else:
            run.state = RunState.ARMED
            _realtime(True)
            run.target_mono = time.monotonic_ns() + (at - time.time_ns())
            self._timer(f"start:{run.run}", run.target_mono - WAKE_EARLY_NS, lambda: self._start_on_time(run))
            self._persist()
        return self._run_reply(run)

    def _stop_request(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("all") is True:
            targets = [r for r in self.runs.values() if r.state in ACTIVE or r.state == RunState.READY]
        else:
            run = self.runs.get(_run_id(payload))
            targets = [run] if run is not None else []
        for run in targets:
            self._terminate(run, reason="stop")
        if len(targets) == 1:
            return self._run_reply(targets[0])
        return {"stopping": [r.run for r in targets]}

    def _status(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("resend") is True:
            self._resend_events()
        if self.timed_phase() and payload.get("force") is not True:
            self.counters["refused"] += 1
            return {"refused": "timed phase"}
        runs = [r for r in self.runs.values() if r.state not in FINISHED or not r.reported]
        return {"role": self.cfg.role, "pid": os.getpid(), "state": self.state(), "v": VERSION,
                "up": round(time.monotonic() - self.started, 1), "ctr": self.counters,
                "runs": [{"run": r.run, "action": r.action, "state": r.state, "rc": r.rc, "kind": self._kind(r)}
                         for r in runs[-STATUS_RUNS:]], "t1": time.time_ns()}

    def _kind(self, run: Run) -> str:
        action = self.cfg.actions.get(run.action)
        return action.kind if action is not None else "job"

    def _run_reply(self, run: Run) -> dict[str, Any]:
        return {"run": run.run, "state": run.state, "pid": run.pid, "rc": run.rc, "error": run.error,
                "deadline_s": run.deadline_s}

    def state(self) -> str:
        """``idle`` or the state of the latest run not yet reported."""
        pending = [r for r in self.runs.values() if not (r.state in FINISHED and r.reported)]
        return pending[-1].state if pending else IDLE

    def timed_phase(self) -> bool:
        return any(r.timed and r.state in ACTIVE for r in self.runs.values())

    # ── processes ──────────────────────────────────────────────────────────

    def _make_gated(self, run: Run) -> None:
        """PREPARE: argv, env and files, and the run's process itself, waiting at its gate (``Child.gated``).

        Whatever could fail fails here, before any host is armed: an unknown
        program is refused naming it.
        """
        action = self.cfg.actions[run.action]
        builtins = {"run_id": run.run, "run_dir": run.dir, "worker_id": self.cfg.worker_id}
        argv, extra = action.render(run.params, builtins=builtins)
        env = dict(os.environ)
        env.update(extra)
        if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
            raise ActionError(f"cannot start {argv[0]}: no such program on PATH")
        os.makedirs(run.dir, exist_ok=True)
        run.files = [open(os.path.join(run.dir, name), "wb") for name in ("stdout", "stderr")]  # noqa: SIM115
        try:
            run.proc, run.gate = Child.gated(argv, env, action.cwd or run.dir, run.files[0].fileno(),
                                             run.files[1].fileno(), home=self.cfg.workdir)
        except (OSError, ValueError, TypeError) as exc:
            for stream in run.files:
                stream.close()
            raise ActionError(f"cannot start {argv[0]}: {getattr(exc, 'strerror', None) or exc}") from None
        run.pid, run.ticks = run.proc.pid, _start_ticks(run.proc.pid)
        run.gate_exe = _exe(run.pid)

    def _start_on_time(self, run: Run) -> None:
        """At the scheduled instant open the gate: one write, then give the CPU up for the program to exec."""
        if run.state != RunState.ARMED:
            return
        remaining = run.target_mono - time.monotonic_ns()
        if remaining > SPIN_NS:
            time.sleep((remaining - SPIN_NS) / 1e9)
        while time.monotonic_ns() < run.target_mono:
            pass
        self._open_gate(run)

    def _open_gate(self, run: Run) -> None:
        """Start the run: one line through its gate; the shell execs the program (normal priority)."""
        if run.gate is None:  # a run recovered from a previous agent instance has no gate left
            self._finish(run, RunState.FAILED, error="its process is gone (agent restarted after PREPARE)")
            return
        run.start_wall, run.start_mono = time.time_ns(), time.monotonic_ns()
        try:
            os.write(run.gate, b"\n")
        except OSError as exc:  # the gated process was killed from outside: reap() reports how it ended
            log.warning("run %s: its process left before the start: %s", run.run, exc)
        if not any(r.state == RunState.ARMED and r is not run for r in self.runs.values()):
            _realtime(False)
        os.close(run.gate)
        run.gate = None
        run.state = RunState.RUNNING
        self._watch_exec(run)
        self._started(run)

    def _watch_exec(self, run: Run) -> None:
        """Note when the gated program replaced the shell (exec_ns); polled, at normal priority.

        Every 0.5 ms for 10 ms, then every 5 ms; after 0.2 s (or for a program
        that is the shell itself) exec_ns stays unknown rather than keep the
        agent waking during the measurement.
        """
        if run.state != RunState.RUNNING or run.pid is None or run.start_mono is None:
            return
        exe = _exe(run.pid)
        elapsed = time.monotonic_ns() - run.start_mono
        if exe is not None and exe != run.gate_exe:
            run.exec_ns = elapsed
        elif exe is not None and elapsed < 200_000_000:
            pause = 500_000 if elapsed < 10_000_000 else 5_000_000
            self._timer(f"exec:{run.run}", time.monotonic_ns() + pause, lambda: self._watch_exec(run))

    def _started(self, run: Run) -> None:
        """What follows a start: deadline, readiness watch, and (at the end of the turn) the bookkeeping."""
        self.started_now.append(run)
        action = self.cfg.actions[run.action]
        self._timer(f"deadline:{run.run}", (run.start_mono or time.monotonic_ns()) + int(run.deadline_s * 1e9),
                    lambda: self._terminate(run, reason="deadline"))
        if action.kind == "service":
            self._watch_ready(run, action, time.monotonic())

    def settle(self) -> None:
        """Record the runs started in this turn of the loop (pid identity, state file, first sample).

        ``serve`` calls it once every due start of every agent in the process
        has happened, so one agent's disk writes never delay another's start;
        until then a started process is still a zombie at worst, so its start
        ticks can be read.
        """
        started, self.started_now = self.started_now, []
        for run in started:
            if run.ticks is None:
                run.ticks = _start_ticks(run.pid or 0)
        if started:
            self._persist()
            self._sample()

    def _terminate(self, run: Run, *, reason: str) -> None:
        """SIGTERM to the run's process group now, SIGKILL after the action's grace."""
        if run.state in (RunState.READY, RunState.ARMED):
            self.timers.pop(f"start:{run.run}", None)
            self._close_gate(run)
            self._finish(run, RunState.STOPPED, error=None if reason == "stop" else reason)
            return
        if run.state != RunState.RUNNING or run.pid is None:
            return
        if reason == "deadline":
            run.error = "deadline exceeded: process group killed"
        else:
            run.stop_requested = True
        _signal_group(run.pid, signal.SIGTERM)
        grace = self.cfg.actions[run.action].stop_grace_s
        self._timer(f"kill:{run.run}", time.monotonic_ns() + int(grace * 1e9),
                    lambda: _signal_group(run.pid or 0, signal.SIGKILL))

    def _close_gate(self, run: Run) -> None:
        """Cancel a scheduled start: the gated shell exits without running anything, and is reaped."""
        if run.gate is not None:
            os.close(run.gate)
            run.gate = None
        if run.proc is not None:
            _signal_group(run.pid or 0, signal.SIGKILL)
            run.proc.wait()
            run.proc = None

    def reap(self) -> None:
        """Notice runs whose leading process exited; they finish once their whole group is gone."""
        for run in list(self.runs.values()):
            if run.proc is None or run.state != RunState.RUNNING:
                continue
            rc = run.proc.poll()
            if rc is None:
                continue
            run.usage = run.proc.usage
            run.proc, run.rc = None, rc
            grace = self.cfg.actions[run.action].stop_grace_s
            self._drain_group(run, time.monotonic() + grace, signalled=False)

    def _drain_group(self, run: Run, kill_at: float, *, signalled: bool) -> None:
        """SIGTERM what is left of the group, SIGKILL it at ``kill_at``, finish when it is empty."""
        now = time.monotonic()
        members = _group_members(run.pid or 0)
        if not members or now > kill_at + 2.0:
            state = RunState.STOPPED if run.stop_requested else RunState.FAILED if run.error else RunState.EXITED
            self._finish(run, state, rc=run.rc, error=run.error)
            return
        if now >= kill_at:
            _signal_group(run.pid or 0, signal.SIGKILL)
        elif not signalled:
            _signal_group(run.pid or 0, signal.SIGTERM)
        self._timer(f"drain:{run.run}", time.monotonic_ns() + 10_000_000,
                    functools.partial(self._drain_group, run, kill_at, signalled=True))

    def _finish(self, run: Run, state: str, *, rc: int | None = None, error: str | None = None) -> None:
        if run.state == RunState.RUNNING and run.dir and os.path.isdir(run.dir):
            # the counters as the run ends, so its samples cover the whole run (not up to the last tick)
            with open(os.path.join(run.dir, "samples.jsonl"), "a") as handle:
                handle.write(json.dumps(_system_sample()) + "\n")
        run.state, run.rc, run.error = state, rc, error
        run.end_wall = time.time_ns()
        run.proc = None
        if run.gate is not None:
            os.close(run.gate)
            run.gate = None
        for stream in run.files:
            stream.close()
        run.files = []
        self.timers.pop(f"deadline:{run.run}", None)
        self.timers.pop(f"ready:{run.run}", None)
        if run.dir and os.path.isdir(run.dir):
            write_json(os.path.join(run.dir, "run.json"), {**run.record(), "usage": run.usage})
        self._queue_done(run)
        self._persist()
        self._sample()
        if not any(r.state == RunState.ARMED for r in self.runs.values()):
            _realtime(False)

    def _shutdown_run(self, run: Run) -> None:
        """The agent is exiting: kill the group now (short grace) and record it stopped."""
        if run.state == RunState.RUNNING and run.pid:
            _signal_group(run.pid, signal.SIGTERM)
            deadline = time.monotonic() + min(2.0, self.cfg.actions[run.action].stop_grace_s)
            while _group_alive(run.pid) and time.monotonic() < deadline:
                if run.proc is not None:
                    run.proc.poll()
                time.sleep(0.01)
            _signal_group(run.pid, signal.SIGKILL)
            rc = run.proc.wait() if run.proc is not None else None
            self._finish(run, RunState.STOPPED, rc=rc, error="agent shut down")
        else:
            self._close_gate(run)
            self._finish(run, RunState.STOPPED, error="agent shut down")

    # ── readiness ──────────────────────────────────────────────────────────

    def _watch_ready(self, run: Run, action: Action, since: float) -> None:
        listen = action.listen_port(run.params)
        if run.state != RunState.RUNNING:
            return
        if listen is None or _listening(*listen):
            self._queue_event(f"{run.run}:ready", {"kind": "ready", "run": run.run, "pid": run.pid})
            return
        elapsed = time.monotonic() - since
        if elapsed > READY_GIVE_UP_S:
            return
        pause = READY_POLL_S if elapsed < 0.2 else 0.02
        self._timer(f"ready:{run.run}", time.monotonic_ns() + int(pause * 1e9),
                    lambda: self._watch_ready(run, action, since))

    # ── events (agent → coordinator, retransmitted until ACKed) ─────────────

    def _queue_done(self, run: Run) -> None:
        if not run.reported:
            self._queue_event(f"{run.run}:done", {"kind": "done", "rec": run.record()})

    def _queue_event(self, event_id: str, payload: dict[str, Any]) -> None:
        payload["ev"] = event_id
        self.events[event_id] = {"payload": payload, "next": 0, "interval": EVENT_FIRST_S,
                                 "first": time.monotonic()}
        self._send_events()

    def _send_events(self) -> None:
        now = time.monotonic()
        for event_id, event in list(self.events.items()):
            if now - event["first"] > EVENT_GIVE_UP_S:
                del self.events[event_id]
                continue
            if self.coord is None or event["next"] > now:
                continue
            if event["next"]:
                self.counters["retx"] += 1
            self._send(MessageType.EVENT, event["payload"], self.coord)
            event["next"] = now + event["interval"]
            event["interval"] = min(event["interval"] * 2, EVENT_MAX_S)
        self._arm_event_timer()

    def _arm_event_timer(self) -> None:
        due = [e["next"] for e in self.events.values()]
        if due and self.coord is not None:
            when = min(due) - time.monotonic()
            self._timer("events", time.monotonic_ns() + max(0, int(when * 1e9)), self._send_events)
        else:
            self.timers.pop("events", None)

    def _acked(self, event_ids: list[str]) -> None:
        changed = False
        for event_id in event_ids:
            if self.events.pop(event_id, None) is None:
                continue
            run_id, _, kind = event_id.rpartition(":")
            run = self.runs.get(run_id)
            if kind == "done" and run is not None:
                run.reported, changed = True, True
        if changed:
            self._persist()
        self._arm_event_timer()

    # ── samples (local only: no traffic while measuring) ────────────────────

    def _sample(self) -> None:
        running = [r for r in self.runs.values() if r.state == RunState.RUNNING and r.dir]
        if not running:
            self.timers.pop("sample", None)
            return
        line = json.dumps(_system_sample()) + "\n"
        for run in running:
            with open(os.path.join(run.dir, "samples.jsonl"), "a") as handle:
                handle.write(line)
        self._timer("sample", time.monotonic_ns() + int(self.cfg.sample_interval_s * 1e9), self._sample)

    # ── timers ─────────────────────────────────────────────────────────────

    def _timer(self, key: str, when_mono_ns: int, action: Callable[[], None]) -> None:
        self.timers[key] = (when_mono_ns, action)

    def next_timer(self) -> int | None:
        return min((when for when, _ in self.timers.values()), default=None)

    def run_timers(self) -> None:
        now = time.monotonic_ns()
        for key, (when, action) in sorted(self.timers.items(), key=lambda item: item[1][0]):
            if when <= now and self.timers.get(key, (0, None))[1] is action:
                del self.timers[key]
                try:
                    action()
                except Exception:  # one failing timer must not stop the others or the agent
                    log.exception("timer %s failed", key)


def _realtime(on: bool) -> None:
    """While a start is armed, run at a real-time priority so the wake-up at T is not delayed by load.

    SCHED_RESET_ON_FORK keeps the started process (and its children) at the normal
    policy. Without the privilege (not root), the agent stays as it is.
    """
    try:
        if on:
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(REALTIME_PRIORITY))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass


def write_json(path: str, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, durably: a crash or power loss leaves the old file or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _run_id(payload: dict[str, Any]) -> str:
    run_id = payload.get("run")
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ActionError("run must be 1-48 characters of letters, digits, . _ : -, not only dots")
    return run_id


def _signal_group(pgid: int, sig: int) -> None:
    if pgid <= 1:
        return
    try:
        os.killpg(pgid, sig)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


def _group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of group ``pgid`` in this PID namespace."""
    if pgid <= 1:
        return []
    try:
        os.killpg(pgid, 0)
    except OSError:
        return []  # the usual case, and cheap: no process at all is left in the group
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(name))
    return members


def _exe(pid: int) -> str | None:
    """The program process ``pid`` runs (None once it is gone)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a recycled pid from ours."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _kill_orphan(run: Run) -> None:
    """A previous agent instance died while ``run`` ran: kill its group if it is still ours."""
    if run.pid and run.ticks is not None and _start_ticks(run.pid) == run.ticks:
        _signal_group(run.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while _group_alive(run.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        _signal_group(run.pid, signal.SIGKILL)


def _listening(proto: str, port: int) -> bool:
    """Whether something in this network namespace listens on ``proto`` ``port``."""
    wanted = f":{port:04X}"
    for family in ("", "6"):
        try:
            with open(f"/proc/net/{proto}{family}") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 3 and fields[1].endswith(wanted) and (proto == "udp" or fields[3] == "0A"):
                        return True
        except OSError:
            continue
    return False


def _system_sample() -> dict[str, Any]:
    """CPU jiffies (/proc/stat ``cpu`` line), interface counters (/proc/net/dev) and the host's own CPU time.

    ``cg`` is ``[CPU ns used, periods, throttled periods, quota in CPUs or 0]``
    of the control group at /sys/fs/cgroup as this host sees it: a local host
    its own group (its PID 1 binds it there), a real machine the whole machine.
    """
    sample: dict[str, Any] = {"t": time.time_ns()}
    try:
        with open("/proc/stat") as handle:
            sample["cpu"] = [int(v) for v in handle.readline().split()[1:]]
        with open("/proc/net/dev") as handle:
            lines = handle.readlines()[2:]
        sample["net"] = {name.strip(): [int(v) for v in rest.split()]
                         for name, _, rest in (line.partition(":") for line in lines)}
    except (OSError, ValueError) as exc:
        sample["error"] = str(exc)
    group = _cgroup_cpu()
    if group is not None:
        sample["cg"] = group
    pressure = _key_values_line("/proc/pressure/cpu", "some").get("total")
    if pressure is not None:
        sample["psi"] = pressure  # µs during which some task waited for a CPU (the machine's, PSI)
    return sample


def _cgroup_cpu() -> list[float] | None:
    """``[used ns, periods, throttled periods, quota CPUs]`` from cgroup v2's or v1's files (None: neither)."""
    root = "/sys/fs/cgroup"
    v2 = _key_values(f"{root}/cpu.stat")
    if "usage_usec" in v2:
        quota, _, period = _read_text(f"{root}/cpu.max").partition(" ")
        cpus = int(quota) / int(period) if quota.isdigit() and period.strip().isdigit() else 0.0
        return [v2["usage_usec"] * 1000, v2.get("nr_periods", 0), v2.get("nr_throttled", 0), cpus]
    usage = _read_text(f"{root}/cpuacct/cpuacct.usage")
    if not usage.isdigit():
        return None
    v1 = _key_values(f"{root}/cpu/cpu.stat")
    quota, period = _read_text(f"{root}/cpu/cpu.cfs_quota_us"), _read_text(f"{root}/cpu/cpu.cfs_period_us")
    cpus = int(quota) / int(period) if quota.isdigit() and period.isdigit() and int(period) else 0.0
    return [int(usage), v1.get("nr_periods", 0), v1.get("nr_throttled", 0), cpus]


def _read_text(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _key_values_line(path: str, first: str) -> dict[str, int]:
    """``key=value`` numbers of the line starting with ``first`` (the PSI files' format)."""
    for line in _read_text(path).splitlines():
        words = line.split()
        if words and words[0] == first:
            pairs = (w.partition("=") for w in words[1:])
            return {k: int(v) for k, _, v in pairs if v.isdigit()}
    return {}


def _key_values(path: str) -> dict[str, int]:
    pairs = (line.split() for line in _read_text(path).splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def serve(agents: Sequence[Agent], *, ready: Callable[[], None] | None = None) -> None:
    """Run the agents until SIGTERM or SIGINT; their runs are stopped on the way out."""
    stopping: list[int] = []
    sel = selectors.DefaultSelector()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    for agent in agents:
        sel.register(agent.sock, selectors.EVENT_READ, agent)
    sel.register(wake_r, selectors.EVENT_READ, None)
    if ready is not None:
        ready()
    try:
        while not stopping:
            _turn(agents, sel, wake_r)
    finally:
        for agent in agents:
            agent.close()
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)


def _turn(agents: Sequence[Agent], sel: selectors.BaseSelector, wake_r: int) -> None:
    due = [(t, a) for a in agents if (t := a.next_timer()) is not None]
    timeout = None if not due else max(0.0, (min(t for t, _ in due) - time.monotonic_ns()) / 1e9)
    for key, _ in sel.select(timeout):
        if key.data is None:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            for agent in agents:
                agent.reap()
        else:
            key.data.drain()
    now = time.monotonic_ns()
    for agent in agents:
        when = agent.next_timer()
        if when is not None and when <= now:
            agent.run_timers()
    for agent in agents:
        agent.settle()
