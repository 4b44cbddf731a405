"""Dynamic batching for a server: many small requests become few model-sized batches.

Requests queue up; a batch runs once the queued series reach ``max_batch_size`` or the
oldest request has waited ``max_wait_ms``. While a batch runs (in a worker thread, so the
event loop keeps accepting), the next one fills, so batch size grows with load by itself.
The queue is bounded: a full queue refuses new work at once with :class:`Overloaded`
rather than letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class Overloaded(RuntimeError):
    """The queue is full; retry later."""


class RequestTimeout(RuntimeError):
    """A request was not answered within its timeout."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass(frozen=True)
class BatcherConfig:
    """``max_batch_size``: series per model call. ``max_wait_ms``: how long the oldest request
    may wait for others. ``max_queue``: requests waiting before new ones are refused.
    ``timeout_s``: default per-request timeout (None: wait as long as it takes).
    ``concurrent_batches``: model calls in flight at once; 1 suits a backend that uses every
    core for one batch, more suit a GPU or single-threaded CPU sessions (like Triton's
    instance count)."""

    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    timeout_s: float | None = None
    concurrent_batches: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {self.max_queue}")
        if self.concurrent_batches < 1:
            raise ValueError(f"concurrent_batches must be at least 1, got {self.concurrent_batches}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


@dataclass(eq=False)
class _Pending:
    batch: np.ndarray
    future: asyncio.Future
    enqueued: float


#: what a model call returns: one array, or named arrays (e.g. forecast and quantiles), each
#: with the batch on its first axis; a request gets the same kind, sliced to its rows
Outputs = np.ndarray | dict[str, np.ndarray]


class MicroBatcher:
    """Runs ``run([N, L]) -> [N, ...]`` on batches gathered from concurrent :meth:`submit` calls.

    ``on_batch(size, compute_s, queued_s)`` is called after each model call (for metrics):
    the series in the batch, the call's time in its worker thread, and how long each of its
    requests waited in the queue. One failing request never fails the others: if a merged
    batch raises, its requests are retried one by one and only the failing ones get the error.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], Outputs],
        config: BatcherConfig = BatcherConfig(),
        on_batch: Callable[[int, float, list[float]], None] | None = None,
    ):
        self._run = run
        self.config = config
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_series = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: set[asyncio.Task] = set()
        self._closing = False

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.concurrent_batches, thread_name_prefix="prunecast-batch"
        )
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="prunecast-batcher")

    async def submit(self, batch: np.ndarray, timeout_s: float | None = None) -> Outputs:
        """Outputs for ``batch`` ``[n, L]`` (validated float32), once its turn comes.

        Raises :class:`Overloaded` when the queue is full, :class:`BatcherClosed` during
        shutdown and :class:`RequestTimeout` when ``timeout_s`` (or the config's default)
        passes first; a request that times out while queued is never run.
        """
        if self._worker is None:
            raise RuntimeError("batcher not started: await start() first")
        if self._closing:
            raise BatcherClosed("shutting down; not accepting new requests")
        if len(self._queue) >= self.config.max_queue:
            raise Overloaded(f"queue full ({self.config.max_queue} requests waiting); retry later")
        loop = asyncio.get_running_loop()
        pending = _Pending(batch, loop.create_future(), loop.time())
        self._queue.append(pending)
        self._queued_series += len(batch)
        if len(self._queue) == 1 or self._queued_series >= self.config.max_batch_size:
            self._wakeup.set()
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        expiry = None
        if timeout_s is not None:
            expiry = loop.call_later(timeout_s, _expire, pending.future, timeout_s)
        try:
            return await pending.future
        finally:
            if expiry is not None:
                expiry.cancel()

    async def close(self) -> None:
        """Refuse new requests, answer every queued one, then stop the worker."""
        if self._worker is None or self._closing:
            return
        self._closing = True
        self._wakeup.set()
        await self._worker
        if self._running:
            await asyncio.gather(*self._running)
        self._executor.shutdown(wait=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.config.concurrent_batches)
        while True:
            await slots.acquire()  # a model slot is free: gather the next batch for it
            items = await self._next_batch(loop)
            if not items:  # closing, and nothing left
                return
            call = self._start(loop, items)  # on the model now, before the loop turns to anything else
            task = loop.create_task(self._finish(loop, items, call, slots.release))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Pending]:
        """Wait until ``max_batch_size`` series are queued or the oldest has waited ``max_wait_ms``."""
        max_wait = self.config.max_wait_ms / 1000
        while True:
            if not self._queue:
                if self._closing:
                    return []
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait = self._queue[0].enqueued + max_wait - loop.time()
            if self._queued_series < self.config.max_batch_size and wait > 0 and not self._closing:
                self._wakeup.clear()
                timer = loop.call_later(wait, self._wakeup.set)
                await self._wakeup.wait()
                timer.cancel()
                continue
            items = self._take()
            if items:
                return items

    def _take(self) -> list[_Pending]:
        """Queued requests up to ``max_batch_size`` series (at least one), skipping expired ones."""
        items: list[_Pending] = []
        size = 0
        while self._queue and (not items or size + len(self._queue[0].batch) <= self.config.max_batch_size):
            pending = self._queue.popleft()
            self._queued_series -= len(pending.batch)
            if not pending.future.done():  # timed out or cancelled (client gone) while queued
                items.append(pending)
                size += len(pending.batch)
        return items

    def _start(self, loop: asyncio.AbstractEventLoop, items: list[_Pending]) -> tuple[asyncio.Future, float]:
        """Hand the batch of ``items`` to a worker thread: its model call's future, and when it started."""
        batch = items[0].batch if len(items) == 1 else np.concatenate([p.batch for p in items])
        return loop.run_in_executor(self._executor, self._timed_run, batch), loop.time()

    async def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        items: list[_Pending],
        call: tuple[asyncio.Future, float],
        release: Callable[[], None],
    ) -> None:
        """Answer ``items`` once their model call returns. The slot is released before the answers
        are delivered, so the next batch is on the model while this one's responses are written;
        otherwise the loop writes them all first and the model waits idle meanwhile."""
        future, started = call
        try:
            out, compute_s = await future
        except Exception as exc:  # noqa: BLE001 - delivered to the requests, never lost
            try:
                if len(items) == 1:
                    _deliver(items[0].future, exc=exc)
                else:  # one by one, in this slot: only the failing requests get the error
                    for pending in items:
                        await self._finish(loop, [pending], self._start(loop, [pending]), _nothing)
            finally:
                release()
            return
        release()
        if self._on_batch is not None:
            size = sum(len(p.batch) for p in items)
            self._on_batch(size, compute_s, [started - p.enqueued for p in items])
        start = 0
        for pending in items:
            stop = start + len(pending.batch)
            _deliver(pending.future, result=_rows(out, start, stop))
            start = stop

    def _timed_run(self, batch: np.ndarray) -> tuple[Outputs, float]:
        """The model call and its time, taken in the worker thread (no executor hand-off in it)."""
        start = time.perf_counter()
        out = self._run(batch)
        return out, time.perf_counter() - start


def _nothing() -> None:
    """The release of a retry, which runs in its batch's slot."""


def _rows(out: Outputs, start: int, stop: int) -> Outputs:
    if isinstance(out, dict):
        return {name: array[start:stop] for name, array in out.items()}
    return out[start:stop]


def _deliver(future: asyncio.Future, result=None, exc: BaseException | None = None) -> None:
    if future.done():  # timed out or cancelled while its batch ran
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _expire(future: asyncio.Future, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(f"not answered within {timeout_s:g} s"))
