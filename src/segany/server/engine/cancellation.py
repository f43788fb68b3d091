"""Stopping abandoned work at its next batch boundary: the one cancellation mechanism of the engine.

Work that runs in a lane thread (an embed batch, an automatic mask generation) has a `LaneWork` shared by
the requests awaiting it. When the last of them goes (request timeout, job time limit, cancellation), the
work is marked stopped; its thread raises `WorkAbandoned` at the next stop check: between the generator's
point batches, and, within one embed, before each transformer block of the image encoder. Until it has
stopped it still holds the lane, so `Orphans` counts it in the queue depth.

The encoder checks are forward pre-hooks installed once per model (`hook_image_encoder`, outside the model
code); they run the check registered for the current thread by `stop_checks`, and nothing elsewhere
(another thread using the same model, e.g. a video session, is never stopped by this work's flag).
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from torch import nn

from segany.server.http.errors import WorkAbandoned

T = TypeVar("T")
StopCheck = Callable[[], None]  # raises WorkAbandoned when the work running on this thread should stop

_current = threading.local()
_hooked: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_hook_lock = threading.Lock()


class LaneWork:
    """Cancellation state of one piece of lane work, shared by the requests waiting for its result."""

    def __init__(self) -> None:
        self.stop = threading.Event()  # set when no request waits for the result any more
        self.running = False  # its thread is computing (guarded by the Orphans lock)
        self.waiters = 0  # requests awaiting it (changed on the event loop only)

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()


def all_stopped(works: Sequence[LaneWork], what: str) -> StopCheck:
    """A stop check for a batch: it stops only once every request of every item in it has gone."""

    def check() -> None:
        if all(work.stopped for work in works):
            raise WorkAbandoned(f"{what} stopped: every request waiting for it has gone")

    return check


@contextmanager
def stop_checks(check: StopCheck) -> Iterator[None]:
    """Within the block, on this thread, `check()` runs before each image-encoder block of a hooked model."""
    previous = getattr(_current, "check", None)
    _current.check = check
    try:
        yield
    finally:
        _current.check = previous


def check_now() -> None:
    """Run this thread's stop check, if any (at a batch boundary outside the encoder)."""
    check = getattr(_current, "check", None)
    if check is not None:
        check()


def _before_block(module: nn.Module, args: Any) -> None:
    check_now()


def encoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The image encoder's transformer blocks (`trunk.blocks`), else the trunk's children, else the trunk."""
    trunk = getattr(model, "trunk", None)
    if not isinstance(trunk, nn.Module):
        return []
    blocks = getattr(trunk, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks):
        return list(blocks)
    return list(trunk.children()) or [trunk]


def hook_image_encoder(model: nn.Module) -> int:
    """Install the stop-check pre-hooks on `model`'s encoder blocks (once per model); the number of blocks."""
    blocks = encoder_blocks(model)
    with _hook_lock:
        if model not in _hooked:
            for block in blocks:
                block.register_forward_pre_hook(_before_block)
            _hooked.add(model)
    return len(blocks)


class Orphans:
    """Stopped work whose thread has not reached its next stop check yet (it still holds its lane)."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._works: set[int] = set()
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._works)

    def begin(self, work: LaneWork) -> None:
        """Called by the lane thread as the work starts computing."""
        with self._lock:
            work.running = True

    def finish(self, work: LaneWork) -> None:
        """Called by the lane thread when the work returns or raises: it holds nothing any more."""
        with self._lock:
            work.running = False
            if id(work) in self._works:
                self._works.discard(id(work))
                self._on_change()

    def abandon(self, work: LaneWork) -> None:
        """Tell the work to stop; until it has, it counts (work not started, or finished, holds nothing)."""
        with self._lock:
            work.stop.set()
            if work.running:
                self._works.add(id(work))
                self._on_change()

    async def wait(self, pending: Awaitable[T], work: LaneWork, on_abandon: Callable[[], None] | None = None) -> T:
        """Await `pending` as one of `work`'s waiters; when the last waiter is cancelled the work is abandoned
        (and `on_abandon` runs, e.g. to withdraw a queued job)."""
        work.waiters += 1
        try:
            return await pending
        except asyncio.CancelledError:
            work.waiters -= 1
            if work.waiters == 0:
                self.abandon(work)
                if on_abandon is not None:
                    on_abandon()
            raise
