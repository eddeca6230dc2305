"""Cross-request dynamic batching: one scheduler per loaded model forms batches from the items of ALL
in-flight requests.

    request thread A ─ submit(key, item) ─┐                       ┌─ ticket A: results by index
    request thread B ─ submit(key, item) ─┼─> bounded queues ─> scheduler ─> runner.run(key, items)
    request thread C ─ submit(key, item) ─┘   (one per request)   │          (encode + generate once)
                                                                  └─ ticket B, C ...

- **Grouping**: only items with equal keys share a batch (the key carries every decode setting that
  CTranslate2 applies to a whole batch; per-item settings such as the language ride in the item).
- **Fairness**: a batch takes items round-robin across the requests that have items of its key, and the
  next batch starts with the next request, so a long file never starves short requests.
- **Waiting**: the scheduler waits at most `max_wait_s` after the oldest queued item arrived to fill a batch,
  and up to `fill_wait_s` while requests have announced items (`Ticket.expect`) that are not queued yet: a
  batch that would run part-empty waits only for items known to be coming.
- **Back-pressure**: `Ticket.submit` blocks while the queue holds `max_queued` items, or while its own
  request already has `max_queued_per_request` queued, so memory stays bounded under load.
- **Isolation**: if a batch fails, it is split in halves and each half runs again, down to the failing item
  (a batch of 64 with one bad item costs about 12 runs, not 64); an item that fails alone fails only its own
  request, whose queued items are then dropped.
- **Ceiling**: a key may ask for smaller batches (a request's `batch_size`), never larger than the batcher's.
- **Re-queueing**: the runner may answer `Requeue(new_key)` for an item (e.g. a temperature fallback); the
  item goes back to the front of its request's queue under the new key and is batched again with others.
  `submit(..., front=True)` queues an item ahead of its request's others (a continuation its result awaits).

The batcher knows nothing about Whisper: `koe.pipeline` supplies the keys, items and the runner.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from koe.errors import EngineError, KoeError

logger = logging.getLogger("koe.batcher")

P = TypeVar("P")  # an item's payload
R = TypeVar("R")  # an item's result
P_contra = TypeVar("P_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class Requeue:
    """A runner's answer for an item that must be run again, in a batch of `key`."""

    key: Hashable


class Runner(Protocol[P_contra, R_co]):
    """Runs one batch. Returns one answer per item, in order: a result, `Requeue`, or an exception (which
    fails only that item's request). Raising fails the whole batch (its items are then run again alone)."""

    def run(self, key: Hashable, payloads: Sequence[P_contra]) -> Sequence[R_co | Requeue | BaseException]: ...


@dataclass
class BatchRecord:
    """One batch the scheduler ran (kept in `Batcher.history` for tests and the benchmark)."""

    key: Hashable
    tickets: tuple[int, ...]  # the ticket id of each item, in batch order
    seconds: float
    ok: bool = True


@dataclass
class BatchStats:
    """Counters since the batcher started."""

    batches: int = 0
    items: int = 0
    mixed_batches: int = 0  # batches holding items of more than one request
    largest_batch: int = 0
    requeued: int = 0  # items sent round again by the runner (temperature fallbacks)
    failed_batches: int = 0
    failed_items: int = 0
    requests: int = 0
    busy_s: float = 0.0  # time spent inside runner.run

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Item(Generic[P]):
    ticket: Ticket[P, Any]
    index: int
    key: Hashable
    payload: P
    queued_at: float


class Ticket(Generic[P, R]):
    """One request's handle on the batcher: submit items, then wait for their results by index.

    Use it as a context manager: leaving it drops the request's items that are still queued.
    """

    def __init__(self, batcher: Batcher[P, R], ticket_id: int) -> None:
        self._batcher = batcher
        self.id = ticket_id
        self._queue: deque[_Item[P]] = deque()  # guarded by the batcher's lock
        self._results: dict[int, R] = {}
        self._next = 0
        self._error: BaseException | None = None
        self._closed = False
        self._expected = 0  # items announced by `expect` and not submitted yet (guarded by the batcher's lock)
        self._cond = threading.Condition()

    def __enter__(self) -> Ticket[P, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def submit(self, key: Hashable, payload: P, timeout: float | None = None, *, front: bool = False) -> int:
        """Queue one item (blocking while the queue is full) and return its index for `wait`/`poll`.
        `front`: ahead of this request's other queued items."""
        index = self._next
        self._next += 1
        self._batcher._put(self, index, key, payload, timeout, front)
        return index

    def expect(self, count: int) -> None:
        """Announce that about `count` more items will come (0: no more), so part-empty batches wait for
        them a little (`fill_wait_s`) instead of running at once."""
        self._batcher._expect(self, count)

    def wait(self, index: int, timeout: float | None = None) -> R:
        """The result of item `index`, waiting for it; raises the request's error if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while index not in self._results:
                if self._error is not None:
                    raise self._error
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"item {index} of request {self.id} is not done")
                self._cond.wait(remaining)
            return self._results[index]

    def poll(self, index: int) -> R | None:
        """The result of item `index` if it is done, else None; raises the request's error if it failed."""
        with self._cond:
            if self._error is not None and index not in self._results:
                raise self._error
            return self._results.get(index)

    @property
    def delivered(self) -> int:
        """How many results have arrived so far."""
        return len(self._results)

    def wait_delivered(self, count: int, timeout: float | None = None) -> None:
        """Wait until more than `count` results have arrived; raises the request's error if it failed."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._results) > count or self._error is not None, timeout)
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Drop this request's queued items; results already computed stay readable."""
        self._batcher._drop(self)

    def _deliver(self, index: int, result: R) -> None:
        with self._cond:
            self._results[index] = result
            self._cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()


class Batcher(Generic[P, R]):
    """The scheduler: `workers` threads (one per model replica) each take a batch and run it."""

    def __init__(
        self,
        runner: Runner[P, R],
        *,
        batch_size: int = 16,
        max_wait_s: float = 0.005,
        fill_wait_s: float = 0.05,
        max_queued: int | None = None,
        max_queued_per_request: int | None = None,
        batch_size_of: BatchSizeOf | None = None,
        workers: int = 1,
        replicas: int | None = None,
        name: str = "koe-batcher",
        history: int = 1000,
    ) -> None:
        if batch_size < 1 or workers < 1:
            raise ValueError("batch_size and workers must be at least 1")
        self.runner = runner
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.fill_wait_s = fill_wait_s
        self.max_queued = max_queued or max(8 * batch_size, 64)
        self.max_queued_per_request = max_queued_per_request or max(2 * batch_size, 2)
        self._batch_size_of = batch_size_of
        self.stats = BatchStats()
        self.history: deque[BatchRecord] = deque(maxlen=history)
        mutex = threading.Lock()
        self._lock = threading.Condition(mutex)  # items arrived / stop
        self._space = threading.Condition(mutex)  # room in the queue
        self._rotation: deque[Ticket[P, R]] = deque()  # requests with queued items, in serving order
        self._queued = 0
        self._expected = 0  # announced items of all requests, not queued yet
        self._ids = itertools.count(1)
        self._stopped = False
        # Batches the model can run at once (its replicas); more scheduler threads than that keep the next
        # batch ready while Python judges the last one's results, but never launch it onto a busy model.
        self.replicas = min(replicas or workers, workers)
        self._running = 0
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- the request side --------------------------------------------------------------------------

    def open(self) -> Ticket[P, R]:
        """A ticket for one new request."""
        with self._lock:
            if self._stopped:
                raise EngineError("the batcher is closed")
            self.stats.requests += 1
            return Ticket(self, next(self._ids))

    @property
    def queued(self) -> int:
        return self._queued

    def close(self, timeout: float = 5.0) -> None:
        """Stop the scheduler; requests still waiting fail with EngineError."""
        with self._lock:
            self._stopped = True
            tickets = list(self._rotation)
            for ticket in tickets:
                self._queued -= len(ticket._queue)
                ticket._queue.clear()
            self._rotation.clear()
            self._wake()
        for ticket in tickets:
            ticket._fail(EngineError("the engine was closed before this request finished"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _put(
        self, ticket: Ticket[P, R], index: int, key: Hashable, payload: P, timeout: float | None, front: bool
    ) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._stopped:
                    raise EngineError("the batcher is closed")
                if ticket._error is not None:
                    raise ticket._error
                if ticket._closed:
                    raise EngineError(f"request {ticket.id} is closed")
                full = self._queued >= self.max_queued or len(ticket._queue) >= self.max_queued_per_request
                if not full:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("the batcher's queue stayed full")
                self._space.wait(remaining)
            if ticket._expected:
                ticket._expected -= 1
                self._expected -= 1
            self._enqueue(_Item(ticket, index, key, payload, time.monotonic()), front)

    def _expect(self, ticket: Ticket[P, R], count: int) -> None:
        with self._lock:
            self._expected += max(0, count) - ticket._expected
            ticket._expected = max(0, count)
            self._lock.notify_all()

    def _enqueue(self, item: _Item[P], front: bool = False) -> None:
        ticket = item.ticket
        if not ticket._queue and ticket not in self._rotation:
            self._rotation.append(ticket)
        if front:
            ticket._queue.appendleft(item)
        else:
            ticket._queue.append(item)
        self._queued += 1
        self._lock.notify_all()

    def _drop(self, ticket: Ticket[P, R]) -> None:
        with self._lock:
            ticket._closed = True
            self._queued -= len(ticket._queue)
            self._expected -= ticket._expected
            ticket._expected = 0
            ticket._queue.clear()
            if ticket in self._rotation:
                self._rotation.remove(ticket)
            self._wake()

    def _wake(self) -> None:
        """Wake the scheduler AND the requests blocked on a full queue (they wait on `_space`; a request
        whose ticket just failed or closed must see it, not wait forever). Call with the lock held."""
        self._lock.notify_all()
        self._space.notify_all()

    # -- the scheduler side ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # never let the scheduler die: fail the batch's requests
                logger.exception("batcher: unexpected error")
                for item in batch:
                    self._fail_ticket(item.ticket, exc)
            finally:
                with self._lock:
                    self._running -= 1
                    self._lock.notify_all()  # a replica is free: a waiting batch may go

    def _take(self) -> list[_Item[P]] | None:
        """Wait for items, then take one batch: the key of the next request in rotation, filled
        round-robin across requests, waiting at most `max_wait_s` for a full batch (`fill_wait_s` while
        announced items are coming). While every replica is busy the batch keeps filling: launching it would
        only queue it behind the running one, with fewer items."""
        with self._lock:
            while True:
                if self._stopped:
                    return None
                if not self._rotation:
                    self._lock.wait()
                    continue
                key = self._rotation[0]._queue[0].key
                limit = self._limit(key)
                available = sum(1 for t in self._rotation for it in t._queue if it.key == key)
                oldest = min(t._queue[0].queued_at for t in self._rotation)
                wait = self.fill_wait_s if self._expected > 0 else self.max_wait_s
                remaining = oldest + wait - time.monotonic()
                busy = self._running >= self.replicas
                if not busy and (available >= limit or remaining <= 0):
                    self._running += 1
                    return self._pick(key, limit)
                self._lock.wait(None if busy else remaining)

    def _limit(self, key: Hashable) -> int:
        size = self._batch_size_of(key) if self._batch_size_of else None
        return min(size or self.batch_size, self.batch_size)  # the batcher's size is the ceiling

    def _pick(self, key: Hashable, limit: int) -> list[_Item[P]]:
        batch: list[_Item[P]] = []
        served: list[Ticket[P, R]] = []
        while len(batch) < limit:
            took = False
            for ticket in list(self._rotation):
                if len(batch) >= limit:
                    break
                item = next((it for it in ticket._queue if it.key == key), None)
                if item is None:
                    continue
                ticket._queue.remove(item)
                batch.append(item)
                took = True
                if ticket not in served:
                    served.append(ticket)
            if not took:
                break
        self._queued -= len(batch)
        # The requests just served go to the back of the rotation; empty ones leave it.
        for ticket in served:
            self._rotation.remove(ticket)
            if ticket._queue:
                self._rotation.append(ticket)
        self._space.notify_all()
        return batch

    def _run(self, batch: list[_Item[P]]) -> None:
        key = batch[0].key
        started = time.perf_counter()
        try:
            answers = list(self.runner.run(key, [it.payload for it in batch]))
            if len(answers) != len(batch):
                raise EngineError(f"runner answered {len(answers)} results for {len(batch)} items")
        except Exception as exc:
            self._record(key, batch, time.perf_counter() - started, ok=False)
            if len(batch) == 1:
                self._answer(batch[0], exc)
                return
            logger.warning("batch of %d failed (%s); running it again in halves", len(batch), exc)
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        self._record(key, batch, time.perf_counter() - started, ok=True)
        for item, answer in zip(batch, answers, strict=True):
            self._answer(item, answer)

    def _answer(self, item: _Item[P], answer: object) -> None:
        ticket = item.ticket
        if isinstance(answer, Requeue):
            with self._lock:
                self.stats.requeued += 1
                stopped = self._stopped
                if ticket._error is None and not ticket._closed and not stopped:
                    item.key = answer.key
                    item.queued_at = time.monotonic()
                    self._enqueue(item, front=True)
            if stopped:
                ticket._fail(EngineError("the engine was closed before this request finished"))
            return
        if isinstance(answer, BaseException):
            with self._lock:
                self.stats.failed_items += 1
            self._fail_ticket(ticket, answer)
            return
        ticket._deliver(item.index, answer)

    def _fail_ticket(self, ticket: Ticket[P, Any], error: BaseException) -> None:
        if not isinstance(error, KoeError):
            wrapped = EngineError(f"transcription failed: {error}")
            wrapped.__cause__ = error
            error = wrapped
        ticket._fail(error)  # first, so a request blocked in `submit` wakes to its own error
        self._drop(ticket)

    def _record(self, key: Hashable, batch: list[_Item[P]], seconds: float, ok: bool) -> None:
        ids = tuple(it.ticket.id for it in batch)
        with self._lock:
            stats = self.stats
            stats.busy_s += seconds
            if ok:
                stats.batches += 1
                stats.items += len(batch)
                stats.largest_batch = max(stats.largest_batch, len(batch))
                if len(set(ids)) > 1:
                    stats.mixed_batches += 1
            else:
                stats.failed_batches += 1
            self.history.append(BatchRecord(key, ids, seconds, ok))


class BatchSizeOf(Protocol):
    """Optional per-key batch size (None: the batcher's)."""

    def __call__(self, key: Hashable) -> int | None: ...


__all__ = ["BatchRecord", "BatchStats", "Batcher", "Requeue", "Runner", "Ticket"]
