"""The agent's event loop: requests in, processes started on time, reports out.

Stdlib-only, Python 3.8 compatible (ships in the agent zipapp). One process can
serve several agents (``serve([a, b, ...])``), which the loopback benchmark uses;
on a host there is one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import selectors
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from .actions import Action, ActionError, parse_actions
from .endpoint import Addr, Endpoint
from .host import (
    Child,
    exe,
    group_alive,
    group_members,
    kill_orphan,
    listening,
    signal_group,
    start_ticks,
    system_sample,
)
from .outbox import Outbox
from .wire import (
    ACTIVE,
    DEFAULT_PORT,
    FINISHED,
    IDLE,
    MAX_ARM_AHEAD_S,
    Message,
    MessageType,
    RunState,
)

VERSION = "1"
RUN_ID = re.compile(r"(?!\.+\Z)[A-Za-z0-9_.:-]{1,48}")  # fullmatch; never "." or ".."
WAKE_EARLY_NS = 2_000_000
SPIN_NS = 200_000
READY_POLL_S, READY_GIVE_UP_S = 0.002, 120.0
READY_EXPIRE_S = 600.0  # a PREPAREd run never ARMed (its coordinator died) is cancelled after this
KEEP_REPORTED = 64
REALTIME_PRIORITY = 10
STATUS_RUNS = 8
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
        self._encoded: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def encoded(self) -> str:
        """The run as JSON for the state file; a finished and reported run never changes, so it is encoded once."""
        if self._encoded is not None:
            return self._encoded
        text = json.dumps(self.to_dict())
        if self.state in FINISHED and self.reported:
            self._encoded = text
        return text

    def record(self) -> dict[str, Any]:
        """What the coordinator gets in the completion report."""
        keys = ("run", "action", "state", "rc", "error", "scheduled", "start_wall", "start_mono",
                "exec_ns", "end_wall", "pid", "dir", "late_ns")
        return {k: getattr(self, k) for k in keys}


class Agent:
    """One agent: its socket, its runs, its timers. Drive it with ``serve``."""

    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.link = Endpoint(config.worker_id, config.secret, env_id=config.env_id,
                             replay_window_s=config.replay_window_s, log_interval_s=config.log_interval_s)
        self.runs: dict[str, Run] = {}
        self.coord: Addr | None = None
        self.timers: dict[str, tuple[int, Callable[[], None]]] = {}
        self.outbox = Outbox()
        self.started_now: list[Run] = []
        self.counters = self.link.counters
        self.started = time.monotonic()
        self.state_file = os.path.join(config.workdir, "state.json")

    # ── lifecycle ──────────────────────────────────────────────────────────

    def open(self) -> None:
        """Bind the socket and recover what a previous instance left in the workdir."""
        os.makedirs(os.path.join(self.cfg.workdir, "runs"), exist_ok=True)
        self.link.bind(self.cfg.bind, self.cfg.port)
        self._recover()

    def close(self) -> None:
        """Stop every active run (process groups killed) and close the socket."""
        for run in list(self.runs.values()):
            if run.state in ACTIVE or run.state == RunState.READY:
                self._shutdown_run(run)
        self._persist()
        self.link.close()

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
                # its gate closed with the old agent, so it never ran; make sure it is gone
                kill_orphan(run.pid, run.ticks)
                self._finish(run, RunState.FAILED, error="agent restarted before the scheduled start")
            elif run.state == RunState.RUNNING:
                kill_orphan(run.pid, run.ticks)
                self._finish(run, RunState.FAILED, error="agent restarted during the run")
            elif run.state in FINISHED and not run.reported:
                self._queue_done(run)
        self._persist()

    def _persist(self) -> None:
        done = [r for r in self.runs.values() if r.state in FINISHED and r.reported]
        for old in done[:-KEEP_REPORTED]:
            del self.runs[old.run]
        # {"coord": ..., "runs": [...]}, put together from each run's own JSON: up to KEEP_REPORTED runs
        # kept, and the state is written at every change of every run
        coord = json.dumps(list(self.coord) if self.coord else None)
        runs = ", ".join(r.encoded() for r in self.runs.values())
        write_durably(self.state_file, f'{{"coord": {coord}, "runs": [{runs}]}}')

    # ── datagrams ──────────────────────────────────────────────────────────

    def drain(self) -> None:
        """Handle every request waiting on the socket (at most 256 per call)."""
        for msg, addr, t1 in self.link.receive():
            self.on_request(msg, addr, t1)

    def on_request(self, msg: Message, addr: Addr, t1: int) -> None:
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
            self.link.send(MessageType.RESP, reply, addr, ack=msg.seq)

    def _claim(self, addr: Addr) -> None:
        if addr != self.coord:
            self.coord = addr
            self._persist()
            self._resend_events()

    def _resend_events(self) -> None:
        """Send every unacknowledged event again now, with a fresh backoff."""
        self.outbox.rewind(time.monotonic())
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
            _realtime((id(self), run.run), True)
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
        run.pid, run.ticks = run.proc.pid, start_ticks(run.proc.pid)
        run.gate_exe = exe(run.pid)

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
        _realtime((id(self), run.run), False)
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
        program = exe(run.pid)
        elapsed = time.monotonic_ns() - run.start_mono
        if program is not None and program != run.gate_exe:
            run.exec_ns = elapsed
        elif program is not None and elapsed < 200_000_000:
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
                run.ticks = start_ticks(run.pid or 0)
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
        signal_group(run.pid, signal.SIGTERM)
        grace = self.cfg.actions[run.action].stop_grace_s
        self._timer(f"kill:{run.run}", time.monotonic_ns() + int(grace * 1e9),
                    lambda: signal_group(run.pid or 0, signal.SIGKILL))

    def _close_gate(self, run: Run) -> None:
        """Cancel a scheduled start: the gated shell exits without running anything, and is reaped."""
        if run.gate is not None:
            os.close(run.gate)
            run.gate = None
        if run.proc is not None:
            signal_group(run.pid or 0, signal.SIGKILL)
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
        members = group_members(run.pid or 0)
        if not members or now > kill_at + 2.0:
            state = RunState.STOPPED if run.stop_requested else RunState.FAILED if run.error else RunState.EXITED
            self._finish(run, state, rc=run.rc, error=run.error)
            return
        if now >= kill_at:
            signal_group(run.pid or 0, signal.SIGKILL)
        elif not signalled:
            signal_group(run.pid or 0, signal.SIGTERM)
        self._timer(f"drain:{run.run}", time.monotonic_ns() + 10_000_000,
                    functools.partial(self._drain_group, run, kill_at, signalled=True))

    def _finish(self, run: Run, state: str, *, rc: int | None = None, error: str | None = None) -> None:
        if run.state == RunState.RUNNING and run.dir and os.path.isdir(run.dir):
            # the counters as the run ends, so its samples cover the whole run (not up to the last tick)
            with open(os.path.join(run.dir, "samples.jsonl"), "a") as handle:
                handle.write(_sample_line())
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
        _realtime((id(self), run.run), False)

    def _shutdown_run(self, run: Run) -> None:
        """The agent is exiting: kill the group now (short grace) and record it stopped."""
        if run.state == RunState.RUNNING and run.pid:
            signal_group(run.pid, signal.SIGTERM)
            deadline = time.monotonic() + min(2.0, self.cfg.actions[run.action].stop_grace_s)
            while group_alive(run.pid) and time.monotonic() < deadline:
                if run.proc is not None:
                    run.proc.poll()
                time.sleep(0.01)
            signal_group(run.pid, signal.SIGKILL)
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
        if listen is None or listening(*listen):
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
        self.outbox.add(event_id, payload, time.monotonic())
        self._send_events()

    def _send_events(self) -> None:
        for payload, again in self.outbox.take_due(time.monotonic(), sending=self.coord is not None):
            if again:
                self.counters["retx"] += 1
            assert self.coord is not None
            self.link.send(MessageType.EVENT, payload, self.coord)
        self._arm_event_timer()

    def _arm_event_timer(self) -> None:
        due = self.outbox.next_due()
        if due is not None and self.coord is not None:
            when = due - time.monotonic()
            self._timer("events", time.monotonic_ns() + max(0, int(when * 1e9)), self._send_events)
        else:
            self.timers.pop("events", None)

    def _acked(self, event_ids: list[str]) -> None:
        changed = False
        for event_id in self.outbox.acked(event_ids):
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
        line = _sample_line()
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


_TURN_SAMPLE: list[str] = []  # this turn's line of samples.jsonl (see _sample_line)


def _sample_line() -> str:
    """The host's counters as a line of samples.jsonl, read once per turn of the loop.

    Every agent of the process shares the host, so within one turn (one wake-up)
    they share one sample: reading /proc/stat and the control group's cpu.stat
    costs milliseconds on a busy machine, and 50 agents reading them in turn
    after a start delay one another's reports.
    """
    if not _TURN_SAMPLE:
        _TURN_SAMPLE.append(json.dumps(system_sample()) + "\n")
    return _TURN_SAMPLE[0]


_ARMED: set[tuple[int, str]] = set()  # (agent, run) of every armed start in this process, whichever agent's


def _realtime(start: tuple[int, str], armed: bool) -> None:
    """While any start in this process is armed, run at a real-time priority so the wake-up at T is not delayed.

    A process serving several agents (the loopback benchmark) keeps the
    priority until the last of their starts is through, not only the first.
    SCHED_RESET_ON_FORK keeps the started process (and its children) at the
    normal policy. Without the privilege (not root), the agent stays as it is.
    """
    before = bool(_ARMED)
    if armed:
        _ARMED.add(start)
    else:
        _ARMED.discard(start)
    if bool(_ARMED) == before:
        return
    try:
        if _ARMED:
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(REALTIME_PRIORITY))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass


def write_json(path: str, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, durably (see ``write_durably``)."""
    write_durably(path, json.dumps(data))  # one string from the C encoder: json.dump's chunks encode in Python


def write_durably(path: str, text: str) -> None:
    """Replace ``path`` with ``text``, durably: a crash or power loss leaves the old file or the new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
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
        sel.register(agent.link.sock, selectors.EVENT_READ, agent)
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
    _TURN_SAMPLE.clear()
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
