"""Micro-batching lanes: jobs with equal keys that arrive close together run as one batch.

A lane owns one worker thread, so inference never runs on the event loop and batches of one lane run
one after another. While a batch runs, new jobs queue up and the next round takes them all (up to
`max_batch` per key), which is what batches concurrent requests under load; with an idle lane a job
waits at most `max_wait_s` for company.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("segany.server")

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]
OnBatch = Callable[[Hashable, int, float], None]
Weight = Callable[[Any], int]


@dataclass
class _Job:
    key: Hashable
    payload: Any
    future: asyncio.Future


class BatchLane:
    """Runs `run_batch(key, payloads) -> results` (same length and order) in the lane's worker thread.

    A batch holds payloads whose `weight`s (default 1 each; e.g. prompts per decode job) sum to at most
    `max_batch`; a single heavier payload runs alone.
    """

    def __init__(self, name: str, run_batch: RunBatch, max_batch: int, max_wait_s: float,
                 on_batch: OnBatch | None = None, weight: Weight | None = None) -> None:
        self.name = name
        self._run_batch = run_batch
        self._weight = weight or (lambda payload: 1)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"segany-{name}")

    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"segany-lane-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one unbatched call in this lane's thread (serialised with its batches)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, key: Hashable, payload: Any) -> asyncio.Future:
        """Queue one job; the returned future resolves to its result (cancel it to withdraw the job)."""
        if self._queue is None:
            raise RuntimeError(f"lane {self.name} is not started")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(key, payload, future))
        return future

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while True:
            while not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            remaining = deadline - time.monotonic()
            same_key = sum(self._weight(job.payload) for job in jobs if job.key == jobs[0].key)
            if remaining <= 0 or same_key >= self.max_batch:
                return jobs
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                # Jobs whose request timed out or was cancelled are dropped before any work is done.
                for batch in self._split([job for job in group if not job.future.done()]):
                    await self._run(loop, key, batch)

    def _split(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Consecutive batches whose weights sum to at most `max_batch` (a heavier job alone)."""
        batches: list[list[_Job]] = []
        current: list[_Job] = []
        total = 0
        for job in jobs:
            weight = self._weight(job.payload)
            if current and total + weight > self.max_batch:
                batches.append(current)
                current, total = [], 0
            current.append(job)
            total += weight
        if current:
            batches.append(current)
        return batches

    async def _run(self, loop: asyncio.AbstractEventLoop, key: Hashable, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # withdrawn while earlier batches ran
        if not jobs:
            return
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, key, [j.payload for j in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"lane {self.name}: {len(results)} results for {len(jobs)} jobs")
        except asyncio.CancelledError:
            for job in jobs:
                if not job.future.done():
                    job.future.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - every error goes back to the requests that caused it
            if len(jobs) > 1:
                # One bad job must not fail the others it happened to be batched with: retry each alone.
                for job in jobs:
                    await self._run(loop, key, [job])
                return
            if not jobs[0].future.done():
                jobs[0].future.set_exception(error)
            return
        if self._on_batch is not None:
            self._on_batch(key, len(jobs), time.perf_counter() - started)
        for job, result in zip(jobs, results):
            if not job.future.done():
                job.future.set_result(result)
