"""Agents and coordinator on loopback: the whole cycle with real iperf3, deadlines, crashes, forgeries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from enosnet.coordinator import (
    Coordinator,
    SyncCoordinator,
    Timeouts,
    Worker,
    agent_config,
    iperf3_actions,
)
from enosnet.coordinator.agent.wire import HEADER, MAX_ARM_AHEAD_S, MessageType, decode, encode, env_hash, worker_key
from enosnet.errors import ConfigError, CoordinatorError, SyncTimeout, WorkerLost
from enosnet.testing import LocalAgents, stop_line

SECRET = "loopback-secret-0123456789abcdef"
# The lead of scheduled starts: arming costs one datagram per agent, but on a loaded CI machine the agents may
# not get a CPU for a while (a 0.2 s and then a 1 s lead each failed there once).
LEAD = 2.5
ENV_ID = "loopback"
TEST_ACTIONS: dict[str, Any] = {
    **iperf3_actions(),
    "sleep": {"argv": ["sleep", "{seconds}"], "params": {"seconds": {"type": "float", "min": 0, "max": 600}}},
    "group": {"kind": "service", "argv": ["sh", "-c", "sleep 300 & sleep 300 & wait"]},
    "true": {"argv": ["true"]},
    "mark": {"argv": ["touch", "ran"]},
    "missing": {"argv": ["enosnet-no-such-program"]},
}


def free_udp_port(taken: set[int] | None = None) -> int:
    """A free UDP port on loopback, not in ``taken`` (the kernel may hand out a just-released port again)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in (taken or set()):
            return port


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    workers: list[Worker]
    configs: list[dict[str, Any]]
    folder: Path
    agents: LocalAgents | None = None

    def start(self, per_process: int = 1) -> LocalAgents:
        self.agents = LocalAgents(self.configs, folder=self.folder, per_process=per_process)
        return self.agents

    def coordinator(self, **options: Any) -> SyncCoordinator:
        return SyncCoordinator(self.workers, env_id=ENV_ID, secret=SECRET, **options)

    def workdir(self, worker: str) -> Path:
        return self.folder / worker


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(roles: dict[str, int], *, per_process: int = 1, actions: dict[str, Any] | None = None) -> Cluster:
        workers: list[Worker] = []
        configs: list[dict[str, Any]] = []
        for role, count in roles.items():
            for index in range(count):
                name, port = f"{role}-{index}", free_udp_port({w.port for w in workers})
                workers.append(Worker(name, role, "127.0.0.1", port, index))
                configs.append(agent_config(name, role=role, secret=SECRET, env_id=ENV_ID,
                                            actions=actions or TEST_ACTIONS, port=port,
                                            workdir=str(tmp_path / name), bind="127.0.0.1"))
        made.append(Cluster(workers, configs, tmp_path))
        made[-1].start(per_process)
        return made[-1]

    try:
        yield make
    finally:
        for item in made:
            if item.agents is not None:
                item.agents.close()


def iperf_ports(count: int) -> list[int]:
    return [free_tcp_port() for _ in range(count)]


def test_iperf3_pair_runs_with_scheduled_start(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"server": 2, "client": 2})
    ports = iperf_ports(2)
    with c.coordinator() as coord:
        result = coord.run_pair(servers="server", server_action="iperf3-server",
                                server_params=lambda w: {"port": ports[w.index]},
                                clients="client", client_action="iperf3-client",
                                client_params=lambda w: {"host": "127.0.0.1", "port": ports[w.index], "duration": 1},
                                start_in=LEAD)
    assert [r.state for r in result.clients] == ["exited", "exited"], result.clients
    assert all(r.ok for r in result.clients)
    assert [r.state for r in result.servers] == ["stopped", "stopped"]
    starts = [r.start_ns for r in result.clients]
    scheduled = [r.scheduled_ns for r in result.clients]
    assert None not in starts and None not in scheduled
    # never early; how late depends on the machine's load (the benchmark measures it)
    assert all(t - 100_000 <= s < t + 2_000_000_000 for s, t in zip(starts, scheduled, strict=True))  # type: ignore[operator]
    for record in result.clients:
        report = json.loads(Path(record.stdout or "").read_text())
        assert report["end"]["sum_received"]["bytes"] > 0
        samples = [json.loads(line) for line in Path(record.samples or "").read_text().splitlines()]
        assert samples and "cpu" in samples[0] and "lo" in samples[0]["net"]


def test_deadline_kills_a_process_that_never_exits(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 1})
    with c.coordinator() as coord:
        began = time.monotonic()
        [record] = coord.run("client", "sleep", {"seconds": 300}, deadline_s=1.0, start_in=LEAD)
        elapsed = time.monotonic() - began
    assert record.state == "failed" and "deadline" in (record.error or "")
    assert record.rc == -signal.SIGTERM
    assert elapsed < 10  # the deadline (1 s), not the 300 s sleep
    assert not _group_alive(record.pid or 0)


def test_stop_kills_the_whole_process_group(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"server": 1})
    with c.coordinator() as coord:
        coord.start("server", "group")
        coord.wait_ready("server", timeout=5)
        [status] = coord.status(force=True)
        assert status.state == "running"
        [record] = coord.stop("server")
    assert record.state == "stopped"
    assert not _group_alive(record.pid or 0)


def test_bad_parameters_are_refused_naming_the_host(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 2})
    with c.coordinator() as coord, pytest.raises(CoordinatorError, match=r"client-0.*host") as info:
        coord.run("client", "iperf3-client", {"host": "127.0.0.1; rm -rf /", "duration": 1})
    assert "client-1" in str(info.value)
    with c.coordinator() as coord, pytest.raises(CoordinatorError, match="no action"):
        coord.run("client", "rm", {})


def test_status_is_refused_during_the_timed_phase_unless_forced(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 1})

    async def scenario() -> None:
        async with Coordinator(c.workers, env_id=ENV_ID, secret=SECRET) as driver, \
                Coordinator(c.workers, env_id=ENV_ID, secret=SECRET, claim=False) as onlooker:
            run = asyncio.create_task(driver.run("client", "sleep", {"seconds": 3.0}, start_in=LEAD))
            # wait (by asking a bystander) until the sleep runs: the driver is then in its timed phase
            deadline = time.monotonic() + 20
            while (await onlooker.status(force=True))[0].state != "running":
                assert time.monotonic() < deadline, "the run never started"
                await asyncio.sleep(0.05)
            sent_early = driver.links["client-0"].stats.sent
            with pytest.raises(CoordinatorError, match="timed phase"):
                await driver.status()
            [refused] = await onlooker.status()
            [forced] = await onlooker.status(force=True)
            await asyncio.sleep(0.4)
            assert driver.links["client-0"].stats.sent == sent_early, "the coordinator spoke in the timed phase"
            [record] = await run
            assert record.ok
            assert refused.state == "busy" and "timed phase" in (refused.error or "")
            assert forced.state == "running"

    asyncio.run(scenario())


def test_agent_killed_mid_run_is_reported_lost_and_never_runs_twice(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 2})
    assert c.agents is not None
    victim = c.agents.procs[0]
    timeouts = Timeouts(report_slack=1.0, request=2.0)
    with c.coordinator(timeouts=timeouts) as coord:
        coord.ready()
        threading_kill = _kill_when_running(victim.pid, c.workdir("client-0") / "state.json", "lost-run")
        began = time.monotonic()
        with pytest.raises(WorkerLost, match="client-0") as info:
            coord.run("client", "sleep", {"seconds": 1.5}, start_in=LEAD, run_id="lost-run", deadline_s=2.0)
        threading_kill.join()
        assert info.value.workers == ["client-0"]
        # start_in + deadline + report slack + the request that finds it silent, plus a loaded machine's noise
        assert time.monotonic() - began < LEAD + 2.0 + 1.0 + 2.0 + 8.0
        [survivor] = coord.records("lost-run")
        assert survivor.worker == "client-1" and survivor.ok
        # The orphaned sleep keeps running until a new agent instance kills it and reports the failure.
        c.agents.procs[0].wait()
        restarted = LocalAgents([c.configs[0]], folder=c.folder)
        try:
            [late] = coord.collect(timeout=5)
            assert (late.worker, late.run, late.state) == ("client-0", "lost-run", "failed")
            assert "agent restarted" in (late.error or "")
            assert not _group_alive(late.pid or 0)
            state = json.loads((c.workdir("client-0") / "state.json").read_text())
            before = next(r for r in state["runs"] if r["run"] == "lost-run")
            # Asking again for the same run changes nothing: it is answered, not re-applied.
            with pytest.raises(CoordinatorError, match="already exists on client-0, client-1"):
                coord.run("client", "sleep", {"seconds": 0.1}, run_id="lost-run", start_in=LEAD)
            state = json.loads((c.workdir("client-0") / "state.json").read_text())
            after = next(r for r in state["runs"] if r["run"] == "lost-run")
            assert after["start_wall"] == before["start_wall"] and after["state"] == "failed"
            [record] = coord.run("client", "true", {}, start_in=LEAD)[:1]
            assert record.ok
        finally:
            restarted.close()


def test_coordinator_killed_mid_run_then_a_new_one_collects(cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    c = cluster({"client": 2})
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from enosnet.coordinator import SyncCoordinator, Worker
        pairs = {[(w.id, w.port) for w in c.workers]!r}
        workers = [Worker(w, "client", "127.0.0.1", p, i) for i, (w, p) in enumerate(pairs)]
        with SyncCoordinator(workers, env_id={ENV_ID!r}, secret={SECRET!r}) as coord:
            coord.ready()
            print("armed", flush=True)
            coord.run("client", "sleep", {{"seconds": 2.0}}, start_in={LEAD}, run_id="crash-run")
    """))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "armed"
        # kill the driver in the timed phase: once both agents run the sleep
        for worker in ("client-0", "client-1"):
            assert _wait_running(c.workdir(worker) / "state.json", "crash-run"), f"{worker} never ran crash-run"
        driver.kill()
    finally:
        driver.wait()
    with c.coordinator() as coord:
        records = coord.collect(timeout=10)
        assert sorted((r.worker, r.run, r.state, r.rc) for r in records) == [
            ("client-0", "crash-run", "exited", 0), ("client-1", "crash-run", "exited", 0)]
        assert coord.collect(timeout=2) == []  # reported once, never again
        with pytest.raises(CoordinatorError, match="already exists"):
            coord.run("client", "sleep", {"seconds": 1.0}, start_in=LEAD, run_id="crash-run")
    for worker in ("client-0", "client-1"):
        state = json.loads((c.workdir(worker) / "state.json").read_text())
        [run] = [r for r in state["runs"] if r["run"] == "crash-run"]
        assert run["reported"] and run["start_wall"] == next(r.start_ns for r in records if r.worker == worker)


def test_forged_garbled_truncated_oversized_replayed_datagrams_are_counted(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 1})
    worker = c.workers[0]
    target = (worker.address, worker.port)
    key = worker_key(SECRET, worker.id).encode()
    good = encode(MessageType.STATUS, {"force": True}, key=key, env=env_hash(ENV_ID),
                  worker=worker.id, session=77, seq=1)
    stale = encode(MessageType.STATUS, {}, key=key, env=env_hash(ENV_ID), worker=worker.id,
                   session=78, seq=1, ts=time.time_ns() - 10**12)
    forged = encode(MessageType.STOP, {"all": True}, key=b"not-the-secret-at-all", env=env_hash(ENV_ID),
                    worker=worker.id, session=79, seq=1)
    garbage = [b"NOPE" + os.urandom(150), good[:60], good[:-3], good + b"\0" * 1300, forged, stale,
               good[:90] + bytes([good[90] ^ 0xFF]) + good[91:]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(good, target)
        sock.recvfrom(2048)
        for data in [*garbage, good, good]:
            sock.sendto(data, target)
        with c.coordinator() as coord:
            [status] = coord.status()
            for data in garbage:
                sock.sendto(data, coord.coordinator.address)
            time.sleep(0.2)
            rejected = dict(coord.coordinator.rejected)
    drops = status.counters["drop"]
    assert drops == {"bad_magic": 1, "truncated": 2, "oversized": 1, "bad_mac": 2, "stale": 1, "replayed": 2}
    assert status.state == "idle"
    assert sum(rejected.values()) == len(garbage) and rejected["bad_mac"] == 2


def test_many_agents_in_few_processes_complete_a_cycle(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 40}, per_process=20)
    with c.coordinator() as coord:
        coord.ready()
        runs = [coord.run("client", "true", {}, start_in=LEAD) for _ in range(2)]
    for records in runs:
        assert len(records) == 40 and all(r.ok for r in records)
        starts = [r.start_ns or 0 for r in records]
        assert max(starts) - min(starts) < 2_000_000_000  # agents sharing a process start one after another
    # each agent's state file, put together from its runs' own JSON (the reported ones encoded once), is the
    # JSON of its runs
    expected = [(records[0].run, "exited", True) for records in runs]
    deadline = time.monotonic() + 10  # the last acknowledgement reaches the agent after run() returned
    while True:
        state = json.loads((c.workdir("client-7") / "state.json").read_text())
        seen = [(r["run"], r["state"], r["reported"]) for r in state["runs"]]
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert seen == expected and state["coord"] is not None


def test_a_process_serving_several_agents_keeps_real_time_priority_until_its_last_start() -> None:
    """The priority is the process's: the first of its agents to start must not drop it for the others."""
    from enosnet.coordinator.agent import runtime

    if os.geteuid() != 0:
        pytest.skip("a real-time priority needs root")

    def policy() -> int:
        return os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK

    try:
        runtime._realtime((1, "run-a"), True)
        runtime._realtime((2, "run-b"), True)
        assert policy() == os.SCHED_FIFO
        runtime._realtime((1, "run-a"), False)
        assert policy() == os.SCHED_FIFO  # agent 2's start is still ahead
        runtime._realtime((1, "run-a"), False)  # a run finishing after its start releases nothing twice
        assert policy() == os.SCHED_FIFO
        runtime._realtime((2, "run-b"), False)
        assert policy() == os.SCHED_OTHER
    finally:
        runtime._ARMED.clear()
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _group_alive(pgid: int) -> bool:
    from enosnet.coordinator.agent.host import group_members

    return bool(group_members(pgid))


def _run_state(state_file: Path, run_id: str) -> dict[str, Any]:
    """What the agent owning ``state_file`` records of ``run_id`` (empty: nothing yet)."""
    try:
        return next((r for r in json.loads(state_file.read_text())["runs"] if r["run"] == run_id), {})
    except (OSError, ValueError, KeyError):
        return {}


def _wait_running(state_file: Path, run_id: str, timeout: float = 20) -> bool:
    """Whether the agent owning ``state_file`` records ``run_id`` as running within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _run_state(state_file, run_id).get("state") == "running":
            return True
        time.sleep(0.02)
    return False


def _kill_when_running(pid: int, state_file: Path, run_id: str) -> Any:
    """SIGKILL ``pid`` once its agent has recorded ``run_id`` as running (nothing if it never does)."""
    import threading

    def kill() -> None:
        if _wait_running(state_file, run_id):
            time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_a_scheduled_run_waits_at_its_gate_and_never_starts_without_its_agent(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 1})
    agents = c.agents
    assert agents is not None
    state_file, marker = c.workdir("client-0") / "state.json", c.workdir("client-0") / "runs" / "gated" / "ran"

    async def scenario() -> None:
        async with Coordinator(c.workers, env_id=ENV_ID, secret=SECRET,
                               timeouts=Timeouts(request=2.0, report_slack=1.0)) as driver:
            run = asyncio.create_task(driver.run("client", "mark", {}, start_in=3.0, run_id="gated", deadline_s=2.0))
            deadline = time.monotonic() + 20
            while _run_state(state_file, "gated").get("state") != "armed":
                assert time.monotonic() < deadline, "never armed"
                await asyncio.sleep(0.02)
            pid = _run_state(state_file, "gated")["pid"]
            # the run's process exists before the start: a shell at its gate, in its own process group
            assert os.path.basename(os.readlink(f"/proc/{pid}/exe")) in ("sh", "dash", "bash", "busybox")
            assert os.getpgid(pid) == pid and not marker.exists()
            agents.procs[0].kill()  # the agent dies before the start: its gate closes with it
            with pytest.raises(WorkerLost, match="client-0"):
                await run
            assert not _group_alive(pid)

    asyncio.run(scenario())
    time.sleep(0.5)  # past the scheduled instant
    assert not marker.exists(), "the run started without its agent"
    agents.procs[0].wait()
    restarted = LocalAgents([c.configs[0]], folder=c.folder)
    try:
        with c.coordinator() as coord:
            [late] = coord.collect(timeout=5)
        assert (late.run, late.state) == ("gated", "failed") and "before the scheduled start" in (late.error or "")
    finally:
        restarted.close()


def test_an_unknown_program_is_refused_before_anything_is_armed(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 2})
    with c.coordinator() as coord:
        with pytest.raises(CoordinatorError, match="client-0: cannot start enosnet-no-such-program: no such program"):
            coord.run("client", "missing", {}, run_id="nothing")
        [record] = coord.run("client", "mark", {}, run_id="after")[:1]
    assert record.ok and (c.workdir("client-0") / "runs" / "after" / "ran").exists()
    assert all(_run_state(c.workdir(w) / "state.json", "nothing").get("state") in (None, "stopped")
               for w in ("client-0", "client-1"))


def test_stop_all_stops_what_a_dead_coordinator_left(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"server": 1, "client": 1})
    with c.coordinator() as first:
        run_id = first.start("server", "group")
        first.wait_ready("server", timeout=5)
        pid = _run_state(c.workdir("server-0") / "state.json", run_id)["pid"]
    # the first coordinator is gone without stopping its service; a new one cleans up
    with c.coordinator() as second:
        assert second.stop_all() == [run_id]
        deadline = time.monotonic() + 10
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_alive(pid)
        assert second.stop_all(["client"]) == []


def test_an_estimated_lead_too_short_for_a_stalled_agent_is_retried_once(
        cluster: Callable[..., Cluster], caplog: pytest.LogCaptureFixture) -> None:
    c = cluster({"client": 2})
    assert c.agents is not None
    stalled = c.agents.procs[0].pid

    async def scenario() -> list[Any]:
        async with Coordinator(c.workers, env_id=ENV_ID, secret=SECRET, timeouts=Timeouts(start_in=0.3)) as driver:
            prepare, calls = driver._prepare, []

            async def prepare_then_stall(*args: Any, **kwargs: Any) -> Any:
                replies = await prepare(*args, **kwargs)
                calls.append(args[1])
                if len(calls) == 1:  # a busy machine: one agent gets no CPU for longer than the lead
                    os.kill(stalled, signal.SIGSTOP)
                    asyncio.get_running_loop().call_later(0.5, os.kill, stalled, signal.SIGCONT)
                return replies

            driver._prepare = prepare_then_stall  # type: ignore[method-assign]
            records = await driver.run("client", "true", {})
            assert len(calls) == 2 and records[0].run == calls[1] != calls[0]
            # with a run id of its own the caller keeps control: the same stall is reported, not retried
            calls.clear()
            with pytest.raises(SyncTimeout, match="not armed before the scheduled start"):
                await driver.run("client", "true", {}, run_id="mine")
            assert calls == ["mine"]
            await asyncio.sleep(0.6)  # the stalled agent is back
            return records

    records = asyncio.run(scenario())
    assert [r.ok for r in records] == [True, True]
    assert "trying again with" in caplog.text


def test_one_workers_key_commands_no_other_worker(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 2})
    mine, other = c.workers
    stolen = worker_key(SECRET, mine.id).encode()  # what a compromised client-0 (or its driver) can read
    forged = encode(MessageType.STOP, {"all": True}, key=stolen, env=env_hash(ENV_ID), worker=other.id,
                    session=91, seq=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(forged, (other.address, other.port))
    time.sleep(0.2)
    with c.coordinator() as coord:
        statuses = {s.worker: s for s in coord.status()}
    assert statuses[other.id].counters["drop"] == {"bad_mac": 1}
    assert SECRET not in json.dumps([agent_config(w.id, role="client", secret=SECRET, env_id=ENV_ID, actions={})
                                     for w in c.workers])


class Relay:
    """A UDP relay between one coordinator and one agent that records the agent's replies.

    ``replay`` set: every request is answered first with the recorded reply to
    the same seq (what an attacker who captured an earlier coordinator's
    exchange can do), then forwarded to the agent as usual.
    """

    def __init__(self, agent: tuple[str, int]) -> None:
        self.agent = agent
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.recorded: dict[int, bytes] = {}
        self.replay = False
        self.done = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        coordinator: tuple[str, int] | None = None
        while not self.done:
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            if addr == self.agent:
                if coordinator is not None:
                    self.recorded.setdefault(HEADER.unpack_from(data)[9], data)  # by the seq it answers
                    self.sock.sendto(data, coordinator)
                continue
            coordinator = addr
            seq = HEADER.unpack_from(data)[8]
            if self.replay and seq in self.recorded:
                self.sock.sendto(self.recorded[seq], coordinator)
            self.sock.sendto(data, self.agent)

    def close(self) -> None:
        self.done = True
        self.thread.join()
        self.sock.close()


def test_a_reply_captured_from_one_coordinator_cannot_answer_another(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 1})
    worker = c.workers[0]
    relay = Relay((worker.address, worker.port))
    try:
        relayed = [Worker(worker.id, worker.role, "127.0.0.1", relay.port, worker.index)]
        with SyncCoordinator(relayed, env_id=ENV_ID, secret=SECRET) as first:
            first.ready()
        time.sleep(1.0)  # replayed now, the captured replies would put this agent's clock ~0.5 s behind
        relay.replay = True
        with SyncCoordinator(relayed, env_id=ENV_ID, secret=SECRET) as second:
            [(offset_ms, _)] = second.ready().values()
            rejected = second.coordinator.links[worker.id].stats.rejected
    finally:
        relay.close()
    assert relay.recorded and rejected.get("unbound_reply", 0) >= 1
    assert abs(offset_ms) < 100


def test_a_stop_of_many_runs_gets_a_cut_down_reply_and_the_agent_lives(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 1})
    worker = c.workers[0]
    key, env = worker_key(SECRET, worker.id).encode(), env_hash(ENV_ID)
    runs = [f"r{index}-{os.urandom(8).hex()}" for index in range(150)]  # random ids: no compressing them away
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)

        def ask(seq: int, kind: MessageType, payload: dict[str, Any]) -> dict[str, Any]:
            sock.sendto(encode(kind, payload, key=key, env=env, worker=worker.id, session=501, seq=seq),
                        (worker.address, worker.port))
            return decode(sock.recvfrom(4096)[0], key=key, env=env).payload

        for seq, run in enumerate(runs, start=1):
            assert ask(seq, MessageType.PREPARE, {"run": run, "action": "true"})["state"] == "ready"
        reply = ask(len(runs) + 1, MessageType.STOP, {"all": True})
        assert reply["truncated"] is True and 0 < len(reply["stopping"]) < len(runs)
        assert set(reply["stopping"]) <= set(runs)
        status = ask(len(runs) + 2, MessageType.STATUS, {"force": True})
    assert status["ctr"]["truncated"] == 1


def test_a_run_record_too_long_for_a_datagram_is_cut_and_the_agent_lives(cluster: Callable[..., Cluster],
                                                                           tmp_path: Path) -> None:
    # a long workdir makes every run record (it names the run's folder) too long for one datagram
    deep = tmp_path.joinpath(*(os.urandom(110).hex() for _ in range(14)))
    port = free_udp_port()
    worker = Worker("deep-0", "client", "127.0.0.1", port, 0)
    config = agent_config(worker.id, role="client", secret=SECRET, env_id=ENV_ID, actions=TEST_ACTIONS, port=port,
                          workdir=str(deep), bind="127.0.0.1")
    agents = LocalAgents([config], folder=tmp_path)
    try:
        with SyncCoordinator([worker], env_id=ENV_ID, secret=SECRET) as coord:
            [record] = coord.run("client", "true")
            [status] = coord.status(force=True)
    finally:
        agents.close()
    assert record.ok and status.state == "idle"
    assert record.run_dir is None  # cut, so not trusted; never a wrong folder


def test_an_agent_whose_bind_address_is_not_on_its_host_listens_everywhere_and_says_so(tmp_path: Path) -> None:
    # behind NAT the address enosnet reaches is not on the host: the agent must still answer
    port = free_udp_port()
    worker = Worker("nat-0", "client", "127.0.0.1", port, 0)
    config = agent_config(worker.id, role="client", secret=SECRET, env_id=ENV_ID, actions=TEST_ACTIONS, port=port,
                          workdir=str(tmp_path / "nat"), bind="198.51.100.7")
    agents = LocalAgents([config], folder=tmp_path)
    try:
        with SyncCoordinator([worker], env_id=ENV_ID, secret=SECRET) as coord:
            [status] = coord.status(force=True)
    finally:
        agents.close()
    assert status.state == "idle"
    log = (tmp_path / "nat" / "agent.log").read_text()
    assert "198.51.100.7 is not an address of this host" in log and f"listening on 0.0.0.0:{port}" in log


def test_run_ids_that_name_a_folder_above_and_starts_far_ahead_are_refused(cluster: Callable[..., Cluster]) -> None:
    c = cluster({"client": 1})
    worker = c.workers[0]
    key, env = worker_key(SECRET, worker.id).encode(), env_hash(ENV_ID)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)

        def ask(seq: int, kind: MessageType, payload: dict[str, Any]) -> dict[str, Any]:
            sock.sendto(encode(kind, payload, key=key, env=env, worker=worker.id, session=502, seq=seq),
                        (worker.address, worker.port))
            return decode(sock.recvfrom(4096)[0], key=key, env=env).payload

        for seq, bad in enumerate((".", "..", "...", "r1\n", "r/1", ""), start=1):
            assert "run must be" in ask(seq, MessageType.PREPARE, {"run": bad, "action": "true"})["error"], bad
        assert ask(10, MessageType.PREPARE, {"run": "r.1", "action": "true"})["state"] == "ready"
        ahead = time.time_ns() + (MAX_ARM_AHEAD_S + 5) * 1_000_000_000
        assert "ahead" in ask(11, MessageType.ARM, {"run": "r.1", "at": ahead})["error"]
        assert ask(12, MessageType.ARM, {"run": "r.1", "at": time.time_ns() + 200_000_000})["state"] == "armed"
    with (SyncCoordinator(c.workers, env_id=ENV_ID, secret=SECRET) as coord,
          pytest.raises(ConfigError, match="start_in")):
        coord.run("client", "true", start_in=MAX_ARM_AHEAD_S + 1)


def test_a_stale_pid_file_never_kills_an_unrelated_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "agent.pid"
    unrelated = subprocess.Popen(["sleep", "60"])
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--pidfile", str(pidfile)])
    try:
        pidfile.write_text(f"{unrelated.pid}\n")  # a reboot later, the pid belongs to someone else
        subprocess.run(["sh", "-c", stop_line(str(pidfile))], check=True, timeout=30)
        assert unrelated.poll() is None and not pidfile.exists()
        pidfile.write_text(f"{ours.pid}\n")
        subprocess.run(["sh", "-c", stop_line(str(pidfile))], check=True, timeout=30)
        assert ours.wait(timeout=10) == -signal.SIGTERM and not pidfile.exists()
    finally:
        for proc in (unrelated, ours):
            proc.kill()
            proc.wait()
