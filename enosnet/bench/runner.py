"""Running an experiment: checks, then each run (netem, servers, scheduled clients, pull, parse, commit).

A run and everything measured in it commit to the results database at once;
a failed run is recorded with its reason and the experiment goes on;
``resume`` skips runs already committed, so nothing is ever measured or
stored twice.

>>> BenchOptions(resume=True).force
False
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from enosnet.bench import checks as chk
from enosnet.bench import conditions as netem
from enosnet.bench import fidelity
from enosnet.bench.drivers import make_driver
from enosnet.bench.drivers.base import Driver, Executed, Labelled, Measured
from enosnet.bench.events import (
    ChecksDone,
    Event,
    ExperimentFinished,
    ExperimentStarted,
    Listener,
    RunFinished,
    RunStarted,
    event_json,
)
from enosnet.bench.instrument import cpu_metric, read_agent_samples
from enosnet.bench.metadata import RUN_PROBE, collect, parse_run_probe
from enosnet.bench.plan import Plan, PlannedRun, make_plan
from enosnet.bench.spec import Experiment
from enosnet.coordinator import Coordinator, Timeouts, workers_from_roles
from enosnet.environment import Environment
from enosnet.errors import BenchError, CheckFailed, EnosnetError, UsageError
from enosnet.model import Host, Roles
from enosnet.remote.session import Session, fan_out
from enosnet.results.store import (
    ExperimentRecord,
    HostMeta,
    HostRecord,
    Metric,
    ProcessRecord,
    ResultsStore,
    RunRecord,
    Sample,
    Status,
)


@dataclass(frozen=True)
class BenchOptions:
    """How to run: ``resume`` skips committed runs, ``force`` goes on past failed checks, ``only`` filters."""

    resume: bool = False
    force: bool = False
    only: tuple[str, ...] = ()
    strict_fidelity: bool = False  # a run whose testbed did not keep up fails instead of being flagged


@dataclass(frozen=True)
class BenchResult:
    """What an experiment did: counts, where the results are."""

    experiment_id: int
    name: str
    done: int
    failed: int
    skipped: int
    database: Path
    runs_dir: Path
    seconds: float
    checks: tuple[Any, ...] = ()


@dataclass(frozen=True)
class AgentAccess:
    """How the controller reaches the environment's agents."""

    env_id: str
    secret: str
    port: int


def agent_access(env: Environment) -> AgentAccess:
    """The agents' id, secret and port as deployed for ``env`` (state ``agent`` entry, else the defaults)."""
    state = env.state()
    env_id = state.agent.env_id if state.agent is not None and state.agent.env_id else env.name
    return AgentAccess(env_id, env.secret(), state.agent_port)


def environment_roles(env: Environment) -> Roles:
    deployed = env.state().deployed
    if deployed is None:
        raise BenchError(f"{env.root}: no hosts acquired; run `enosnet deploy` first")
    return deployed


def run_experiment(env: Environment, spec: Experiment, *, options: BenchOptions | None = None,
                   on_event: Listener | None = None, roles: Roles | None = None) -> BenchResult:
    """Run ``spec`` on the hosts of ``env`` and store everything in ``env.db_file``.

    Raises ``CheckFailed`` (before the first run) when an environment check
    fails and ``options.force`` is not set; ``ConfigError`` when the
    experiment does not fit the hosts; ``UsageError`` when runs of it are
    already committed and ``options.resume`` is not set; ``EnvironmentBusy``
    when another deploy, bench or destroy holds the environment.

    Example (needs deployed hosts running the agent)::

        result = run_experiment(Environment(".enosnet/incast"), load_experiment("examples/incast.yaml"),
                                options=BenchOptions(resume=True), on_event=print)
        print(result.done, result.failed, result.database)
    """
    with env.lock("bench"):
        bench = _Bench(env, spec, options or BenchOptions(), on_event, roles or environment_roles(env))
        return asyncio.run(bench.main())


class _Bench:
    def __init__(self, env: Environment, spec: Experiment, options: BenchOptions, on_event: Listener | None,
                 roles: Roles) -> None:
        self.env, self.spec, self.options, self.roles = env, spec, options, roles
        self.listener = on_event
        self.driver: Driver[BaseModel] = make_driver(spec.driver, roles, source=spec.source_path)
        self.plan: Plan = make_plan(spec, only=options.only)
        # each run's section, substituted and checked by the driver's model once
        self.sections = {r.key: self.driver.section(spec.driver_section(r.params)) for r in self.plan.runs}
        self.netem = {r.key: _conditions(spec.netem_section(r.params)) for r in self.plan.runs}
        for section in self.sections.values():
            self.driver.validate(section)
        self.session = Session()
        self.emulation = netem.Emulation(self.session, roles)
        self.events_file = env.runs_dir / f"{spec.name}.events.jsonl"

    # ── the experiment ──────────────────────────────────────────────────────

    async def main(self) -> BenchResult:
        started = time.monotonic()
        self.env.runs_dir.mkdir(parents=True, exist_ok=True)
        with ResultsStore.open(self.env.db_file) as store:
            try:
                async with self._coordinator() as coordinator:
                    return await self._experiment(store, coordinator, started)
            finally:
                self.session.close()

    def _coordinator(self) -> Coordinator:
        access = agent_access(self.env)
        extra = Roles()
        for section in self.sections.values():
            extra = extra | self.driver.extra_roles(section)
        workers = workers_from_roles(self.roles | extra, port=access.port)
        return Coordinator(workers, env_id=access.env_id, secret=access.secret, timeouts=Timeouts(request=5.0))

    async def _experiment(self, store: ResultsStore, coordinator: Coordinator, started: float) -> BenchResult:
        record = ExperimentRecord(name=self.spec.name, file_hash=self.spec.file_hash, seed=self.plan.seed,
                                  order=self.plan.order, enosnet_version=_version(),
                                  spec=self.spec.model_dump(mode="json"))
        existing = _existing(store, record.key)
        done = store.committed_runs(existing) if existing is not None else set()
        if done and not self.options.resume:
            raise UsageError(f"experiment {self.spec.name!r} (same file, seed {self.plan.seed}) already has "
                             f"{len(done)} committed runs in {self.env.db_file}: pass --resume to run the rest, "
                             "or change the name or seed to start a new experiment")
        if self.options.resume:
            await self._stop_leftover_runs(coordinator)
        todo = self.plan.without(done)
        checks, metadata = await self._checks(coordinator)
        forced = bool(checks.failed) and self.options.force
        results = checks.forced() if forced else checks.results
        exp_id = store.begin_experiment(replace(record, started=time.time(), checks=results, forced=forced))
        self._emit(ChecksDone(tuple(results), forced))
        if checks.failed and not self.options.force:
            raise CheckFailed(checks.summary() + "\n(results stored; fix the environment, or pass --force to "
                              "measure anyway, which the report will flag)")
        await asyncio.to_thread(self.driver.prepare, self.session, list(self.sections.values()))
        store.add_hosts(exp_id, self._host_records())
        store.add_metadata(exp_id, metadata)
        self._emit(ExperimentStarted(self.spec.name, exp_id, len(todo.runs), len(self.plan.runs) - len(todo.runs),
                                     self.plan.seed, self.plan.order, todo.estimate_s()))
        ok = failed = 0
        for index, run in enumerate(todo.runs):
            status = await self._one(store, coordinator, exp_id, run, index, len(todo.runs))
            ok, failed = ok + (status == "ok"), failed + (status != "ok")
        store.end_experiment(exp_id)
        seconds = time.monotonic() - started
        self._emit(ExperimentFinished(self.spec.name, ok, failed, str(self.env.db_file), str(self.env.runs_dir),
                                      seconds))
        return BenchResult(exp_id, self.spec.name, ok, failed, len(self.plan.runs) - len(todo.runs),
                           self.env.db_file, self.env.runs_dir, seconds, tuple(results))

    async def _stop_leftover_runs(self, coordinator: Coordinator) -> None:
        """A killed bench may have left servers running on the agents: stop every run they have."""
        try:
            await coordinator.stop_all(timeout=5.0)
        except EnosnetError:
            return  # the agent check names hosts that do not answer
        await asyncio.sleep(0.3)

    # ── checks ──────────────────────────────────────────────────────────────

    async def _checks(self, coordinator: Coordinator) -> tuple[chk.Checks, list[HostMeta]]:
        checks = chk.Checks()
        hosts = list(self.roles.all())
        reachable = await asyncio.to_thread(chk.check_reachable, self.session, hosts, checks)
        metadata, errors = await asyncio.to_thread(collect, self.session, reachable, "experiment")
        for host, why in errors.items():
            checks.add("metadata", False, why, host)
        metadata += self._controller_metadata(reachable)
        try:
            offsets = await coordinator.ready(list(self.roles))
            chk.check_clocks(offsets, self.spec.checks, checks)
        except EnosnetError as exc:
            checks.add("agent", False, f"{exc} (are the agents installed? `enosnet deploy` starts them)")
        ports: dict[Host, list[int]] = {}
        for section in self.sections.values():
            for server, used in self.driver.server_ports(section).items():
                ports[server] = sorted(set(ports.get(server, [])) | set(used))
        await asyncio.to_thread(chk.check_leftovers, self.session, reachable, ports, checks)
        chk.check_mtu(metadata, reachable, checks)
        await asyncio.to_thread(self._network_checks, checks)
        return checks, metadata

    def _network_checks(self, checks: chk.Checks) -> None:
        settings = list({c: None for c in self.netem.values() if c is not None})
        groups = settings[0].between if settings else self._driver_groups()
        if groups is None:
            return
        if settings:
            try:  # an interrupted experiment may have left its emulation in place: the baseline must be clean
                self.emulation.clear(settings[0])
            except EnosnetError as exc:
                checks.add("netem", False, f"clearing what an earlier run left: {exc}")
        baseline = chk.check_base_rtt(self.session, chk.pairs_between(self.roles, *groups), self.spec.checks, checks)
        if self.spec.checks.netem and settings:
            chk.check_netem(self.session, self.roles, settings, self.spec.checks, baseline, checks,
                            apply=self.emulation.apply, clear=self.emulation.clear)

    def _driver_groups(self) -> tuple[str, str] | None:
        section = next(iter(self.sections.values()), None)
        client, server = (getattr(section, f"{side}_role", None) for side in ("client", "server"))
        return (str(client), str(server)) if client is not None and server is not None else None

    def _controller_metadata(self, hosts: Sequence[Host]) -> list[HostMeta]:
        items = {"enosnet.version": _version(), "experiment.file_hash": self.spec.file_hash,
                 "experiment.file": self.spec.source_path or ""}
        return [HostMeta(h.name, k, v, "controller") for h in hosts for k, v in items.items() if v]

    def _host_records(self) -> list[HostRecord]:
        return [HostRecord(h.name, h.address, ",".join(self.roles.roles_of(h)),
                           str(h.extra.get("enosnet_provider") or "") or None,
                           h.extra.get("enosnet_instance_type"), h.extra.get("enosnet_az"))
                for h in self.roles.all()]

    # ── one run ─────────────────────────────────────────────────────────────

    async def _one(self, store: ResultsStore, coordinator: Coordinator, exp_id: int, run: PlannedRun, index: int,
                   total: int) -> str:
        t0 = time.monotonic()
        folder = self.env.runs_dir / f"{self.spec.name}-{run.position:04d}-{run.key[:8]}"
        if folder.exists():
            shutil.rmtree(folder)  # an attempt killed before its commit: nothing of it was stored
        folder.mkdir(parents=True)
        self._emit(RunStarted(run.position, index, total, run.label()), folder)
        record, measured = await self._measure(coordinator, run, folder)
        store.record_run(exp_id, record)
        self._emit(RunFinished(run.position, index, total, run.label(), record.status, record.reason,
                               measured.headline, time.monotonic() - t0, str(folder),
                               fidelity=tuple(record.fidelity)), folder)
        return record.status

    async def _measure(self, coordinator: Coordinator, run: PlannedRun, folder: Path) -> tuple[RunRecord, Measured]:
        conditions = self.netem[run.key]
        executed: Executed | None = None
        problems: list[str] = []
        try:
            if conditions is not None and conditions.active:
                await asyncio.to_thread(self.emulation.apply, conditions)
            executed = await self.driver.execute(coordinator, self.sections[run.key], duration_s=self.spec.duration_s,
                                                 timeout_s=self._timeout())
        except EnosnetError as exc:
            problems.append(str(exc))
        metadata = await asyncio.to_thread(self._after_run, executed, folder, conditions, problems)
        measured = self._parse(executed, folder, problems)
        flags = fidelity.check(measured.samples, duration_s=self.spec.duration_s, metadata=metadata,
                               asked_loss=conditions.loss_fraction if conditions is not None else 0.0)
        if flags and self.options.strict_fidelity:
            measured.problems.append("the testbed did not keep up (--strict-fidelity): " + "; ".join(flags))
        return self._record(run, executed, measured, metadata, flags), measured

    def _timeout(self) -> float:
        return float(self.spec.timeout) if self.spec.timeout else self.spec.duration_s + 30.0

    def _after_run(self, executed: Executed | None, folder: Path, conditions: netem.Conditions | None,
                   problems: list[str]) -> list[HostMeta]:
        """One command per host, all in parallel: per-run metadata (netem still in place), clear netem, pull."""
        by_host: dict[str, list[Labelled]] = {}
        for item in executed.records if executed else []:
            if item.record.run_dir:
                by_host.setdefault(item.host, []).append(item)
        clear = self.emulation.clear_lines(conditions) if conditions is not None and conditions.active else {}
        outcomes = fan_out(list(self.roles.all()),
                           lambda h: self._pull(h, by_host.get(h.name, []), folder, clear.get(h)))
        metadata: list[HostMeta] = []
        for items, problem in outcomes.values():
            metadata += items
            if problem:
                problems.append(problem)
        if conditions is not None and conditions.active:
            applied = f"{conditions.label} ({self.emulation.backend})"
            metadata += [HostMeta(h.name, "emulation", applied, "controller") for h in clear]
        return metadata

    def _pull(self, host: Host, items: Sequence[Labelled], folder: Path,
              clear: str | None) -> tuple[list[HostMeta], str | None]:
        before = RUN_PROBE + (f"; {clear}" if clear else "")
        staging = folder / host.name / ".pull"
        try:
            text = self.session.pull_dirs(host, [i.record.run_dir or "" for i in items], staging, before=before)
            for item in items:
                (staging / Path(item.record.run_dir or "").name).rename(folder / host.name / item.label)
            if staging.exists():
                staging.rmdir()
        except (OSError, EnosnetError) as exc:
            return [], f"{host.name}: pulling outputs failed: {exc}"
        return parse_run_probe(host.name, text), None

    def _parse(self, executed: Executed | None, folder: Path, problems: list[str]) -> Measured:
        if executed is None:
            return Measured(problems=problems)
        started = _start_ns(executed.clients)
        measured = self.driver.parse(executed, folder, started_ns=started)
        measured.problems = problems + measured.problems
        for item in executed.records:
            rec = item.record
            if not rec.ok and item.client:
                measured.problems.append(f"{item.host}: {rec.action} {rec.state} rc={rec.rc} {rec.error or ''}".strip())
        seen: set[str] = set()
        for item in sorted(executed.records, key=lambda i: not i.client):
            if item.host in seen:
                continue
            seen.add(item.host)
            samples = read_agent_samples(folder / item.host / item.label / "samples.jsonl", host=item.host,
                                         start_ns=started)
            measured.samples += samples
            measured.metrics += cpu_metric(samples, item.host)
        return measured

    def _record(self, run: PlannedRun, executed: Executed | None, measured: Measured,
                metadata: list[HostMeta], flags: Sequence[str] = ()) -> RunRecord:
        processes = [_process(item) for item in (executed.records if executed else [])]
        clients = executed.clients if executed else []
        starts = [p.started for p, item in zip(processes, executed.records if executed else [], strict=True)
                  if p.started is not None and item in clients]
        ends = [p.ended for p in processes if p.ended is not None]
        status: Status = "failed" if measured.problems or not clients else "ok"
        reason = "; ".join(measured.problems)[:2000] or (None if clients else "no client ran")
        return RunRecord(
            key=run.key, params=dict(run.params), repetition=run.repetition, position=run.position,
            seed=self.plan.seed, status=status, reason=reason if status == "failed" else None,
            scheduled_start=executed.scheduled_ns / 1e9 if executed and executed.scheduled_ns else None,
            started=min(starts) if starts else None, ended=max(ends) if ends else None,
            start_skew=max(starts) - min(starts) if starts else None, processes=processes,
            metrics=_finite(measured.metrics), samples=_finite(measured.samples),
            metadata=[*metadata, *measured.metadata], fidelity=tuple(flags))

    def _emit(self, event: Event, folder: Path | None = None) -> None:
        line = json.dumps(event_json(event), default=str) + "\n"
        for path in (self.events_file, folder / "events.jsonl" if folder else None):
            if path is not None:
                with path.open("a") as out:
                    out.write(line)
        if self.listener is not None:
            self.listener(event)


def _conditions(section: Mapping[str, Any] | None) -> netem.Conditions | None:
    return netem.Conditions.from_section(section) if section else None


def committed_keys(env: Environment, spec: Experiment) -> set[str]:
    """Keys of the runs of ``spec`` (same name, file and seed) already committed in ``env``'s database."""
    if not env.db_file.exists():
        return set()
    key = ExperimentRecord(name=spec.name, file_hash=spec.file_hash, seed=spec.effective_seed).key
    with ResultsStore.open(env.db_file, create=False) as store:
        found = _existing(store, key)
        return store.committed_runs(found) if found is not None else set()


def _existing(store: ResultsStore, key: str) -> int | None:
    for exp in store.experiments():
        if f"{exp.name}:{exp.file_hash or '-'}:{exp.seed if exp.seed is not None else '-'}" == key:
            return exp.id
    return None


def _start_ns(clients: Sequence[Labelled]) -> int | None:
    starts = [r.record.start_coordinator_ns for r in clients if r.record.start_coordinator_ns is not None]
    return min(starts) if starts else None


def _process(item: Labelled) -> ProcessRecord:
    rec, offset = item.record, item.record.offset_ns or 0

    def seconds(ns: int | None) -> float | None:
        return None if ns is None else (ns - offset) / 1e9

    return ProcessRecord(item.host, rec.action, item.role, seconds(rec.scheduled_ns), seconds(rec.start_ns),
                         seconds(rec.end_ns), rec.rc)


def _finite(values: list[Any]) -> list[Any]:
    return [v for v in values if isinstance(v, Metric | Sample) and v.value == v.value and abs(v.value) != float("inf")]


def _version() -> str:
    from enosnet import __version__

    return __version__
