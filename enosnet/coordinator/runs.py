"""What the coordinator knows of each run on each agent: ready and done events, records, active runs.

One ``RunBook`` per coordinator, keyed by (run id, worker id): when a
service said it was ready, when a completion report arrived and what it
said, which records were handed to the caller, and which run is the active
one of each role. ``wait_until`` wakes whenever an event changes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from enosnet.coordinator.channel import Link
from enosnet.coordinator.model import Worker, WorkerRecord

Key = tuple[str, str]  # (run id, worker id)


class RunBook:
    """Events and records of runs, per (run, worker)."""

    def __init__(self, roles_of: Mapping[str, tuple[str, ...]]) -> None:
        self.roles_of = roles_of
        self.records: dict[Key, WorkerRecord] = {}
        self.delivered: set[Key] = set()
        self.ready: set[Key] = set()
        self.ready_at: dict[Key, int] = {}
        self.done_at: dict[Key, int] = {}
        self.active: dict[str, str] = {}  # role → its active run
        self._changed: asyncio.Event | None = None

    def open(self) -> None:
        self._changed = asyncio.Event()

    def on_event(self, link: Link, payload: Mapping[str, Any]) -> bool:
        """Take a ``ready`` or ``done`` event; False for anything else."""
        kind = payload.get("kind")
        if kind == "ready":
            key = (str(payload.get("run")), link.id)
            self.ready.add(key)
            self.ready_at.setdefault(key, time.time_ns())
        elif kind == "done" and isinstance(payload.get("rec"), dict):
            record = self.record(link, payload["rec"])
            self.records.setdefault((record.run, link.id), record)
            self.done_at.setdefault((record.run, link.id), time.time_ns())
        else:
            return False
        return True

    def record(self, link: Link, rec: Mapping[str, Any]) -> WorkerRecord:
        """A completion report as a ``WorkerRecord`` (its role from the run id or the role's active run)."""
        run_id = str(rec.get("run"))
        roles = self.roles_of.get(link.id, ())
        role = next((r for r, active in self.active.items() if active == run_id), roles[0] if roles else "")
        if run_id.startswith(tuple(f"{r}-" for r in roles)):
            role = run_id.split("-", 1)[0]

        def num(key: str) -> int | None:
            value = rec.get(key)
            return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        run_dir = rec.get("dir")
        if not isinstance(run_dir, str) or not run_dir.endswith(f"/{run_id}"):
            run_dir = None  # cut down to fit a datagram (a very long workdir): no folder beats a wrong one

        return WorkerRecord(worker=link.id, role=role, run=run_id, action=str(rec.get("action")),
                            state=str(rec.get("state")), rc=num("rc"), error=rec.get("error"),
                            scheduled_ns=num("scheduled"), start_ns=num("start_wall"),
                            start_mono_ns=num("start_mono"), exec_ns=num("exec_ns"), end_ns=num("end_wall"),
                            pid=num("pid"), run_dir=run_dir, offset_ns=link.offset_ns)

    def all_reported(self, run_id: str, workers: Sequence[Worker]) -> bool:
        return all((run_id, w.id) in self.records for w in workers)

    def error_of(self, run_id: str, worker_id: str) -> str:
        record = self.records.get((run_id, worker_id))
        return (record.error or "") if record is not None else ""

    def of_run(self, run_id: str) -> list[WorkerRecord]:
        return [r for (run, _), r in sorted(self.records.items()) if run == run_id]

    def times(self, table: Mapping[Key, int], run_id: str) -> dict[str, int]:
        return {worker: at for (run, worker), at in table.items() if run == run_id}

    def bump(self) -> None:
        """Wake every ``wait_until``: something changed."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0 or self._changed is None:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return done()
        return True
