"""``SyncCoordinator``: the asyncio ``Coordinator`` for plain scripts (its loop runs in a thread)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from enosnet.coordinator.core import AgentStatus, Coordinator, PairResult, Params, Worker, WorkerRecord

T = TypeVar("T")


class SyncCoordinator:
    """Blocking twin of ``Coordinator``: same methods, same errors.

    >>> with SyncCoordinator([], env_id="demo", secret="0" * 32) as c:
    ...     c.status()
    []
    """

    def __init__(self, workers: Iterable[Worker], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="enosnet-coordinator", daemon=True)
        self._thread.start()
        self.coordinator = Coordinator(workers, **options)
        self._call(self.coordinator.open())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self.coordinator.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> SyncCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self, roles: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
        return self._call(self.coordinator.ready(roles))

    def start(self, role: str, action: str, params: Params | None = None, **options: Any) -> str:
        return self._call(self.coordinator.start(role, action, params, **options))

    def wait_ready(self, role: str, *, timeout: float | None = None) -> None:
        self._call(self.coordinator.wait_ready(role, timeout=timeout))

    def wait_done(self, role: str, *, timeout: float) -> list[WorkerRecord]:
        return self._call(self.coordinator.wait_done(role, timeout=timeout))

    def run(self, role: str, action: str, params: Params | None = None, **options: Any) -> list[WorkerRecord]:
        return self._call(self.coordinator.run(role, action, params, **options))

    def stop(self, role: str, *, timeout: float | None = None) -> list[WorkerRecord]:
        return self._call(self.coordinator.stop(role, timeout=timeout))

    def stop_all(self, roles: Sequence[str] | None = None, *, timeout: float | None = None) -> list[str]:
        return self._call(self.coordinator.stop_all(roles, timeout=timeout))

    def run_pair(self, **options: Any) -> PairResult:
        return self._call(self.coordinator.run_pair(**options))

    def status(self, *, force: bool = False, roles: Sequence[str] | None = None) -> list[AgentStatus]:
        return self._call(self.coordinator.status(force=force, roles=roles))

    def collect(self, *, timeout: float = 30.0) -> list[WorkerRecord]:
        return self._call(self.coordinator.collect(timeout=timeout))

    def records(self, run_id: str) -> list[WorkerRecord]:
        return self.coordinator.records(run_id)
