"""The continuous-batching loop: one thread per model, one shared forward pass per step.

Requests arrive from the event loop (``submit``), wait in a queue, and join the running
batch between decoding steps: they are prefilled together and merged into the batch's KV
cache (``batch.py``). Each step feeds every row its last token, picks each row's next
token, streams it, and removes rows that finished (end of sequence, stop string, token
limit) or were cancelled, so a freed slot is reused at the next step. When the batch is
empty the loop waits up to ``max_wait_s`` for more requests before the first prefill, so
a burst starts as one batch. Models whose cache cannot be merged (sliding-window or
linear-attention layers) still batch, but new rows join only an empty batch.

Deltas and outcomes go back to each request's event loop in order, at most every
``stream_interval_s`` (a row's first token and every outcome go at once): consecutive
deltas of a request are merged into one, so a saturated engine wakes the loop (and
publishes chunks) tens of times a second, not once per step per row.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.worker.runtimes.base import Delta, RunResult
from tether.errors import Cancelled, TetherError, WorkerFailed

from .batch import DecodeBatch
from .prefix import PrefixCache
from .sampling import next_tokens
from .sequence import Sequence

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_S = 0.001
DEFAULT_STREAM_INTERVAL_S = 0.02

Outcome = RunResult | BaseException | None
Event = tuple[Sequence, Delta | None, Outcome]


@dataclass(slots=True)
class EngineStats:
    steps: int = 0
    prefills: int = 0
    tokens: int = 0
    rows_stepped: int = 0  # sum of batch sizes over decoding steps
    largest_batch: int = 0

    @property
    def mean_batch(self) -> float:
        return self.rows_stepped / self.steps if self.steps else 0.0


class GenerationEngine:
    """Continuous batching over one causal LM. ``prepare`` encodes a request on the engine thread."""

    def __init__(
        self,
        model: Any,
        *,
        pad_id: int,
        prepare: Callable[[Sequence], None],
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S,
        prefix_cache: bool = True,
        name: str = "engine",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stream_interval_s = stream_interval_s
        self.stats = EngineStats()
        self._prepare = prepare
        self._queue: queue.SimpleQueue[Sequence | None] = queue.SimpleQueue()
        self._waiting: deque[Sequence] = deque()
        self._batch = DecodeBatch(model)
        self.prefixes = PrefixCache(model) if prefix_cache else None
        self._mergeable: bool | None = None  # learnt from the first prefill
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=f"{name}-engine", daemon=True)

    # ------------------------------------------------------------------ event-loop side

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        if self._stopping:
            raise WorkerFailed(f"engine stopped; job {seq.job_id} not started", job_id=seq.job_id)
        self._queue.put(seq)

    @property
    def depth(self) -> int:
        """Requests queued or decoding (approximate when read from another thread)."""
        return self._queue.qsize() + len(self._waiting) + len(self._batch)

    @property
    def running(self) -> int:
        return len(self._batch)

    def generated(self, job_id: str) -> int | None:
        """Tokens generated so far for a running job (None when it is not decoding)."""
        for seq in list(self._batch.rows):
            if seq.job_id == job_id:
                return len(seq.generated)
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """Fail whatever is queued or running and end the thread (blocking, idempotent)."""
        self._stopping = True
        self._queue.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ engine thread

    def _main(self) -> None:
        outbox = _Outbox(self.stream_interval_s)
        try:
            self._loop(outbox)
        except BaseException as exc:  # a bug here must not leave jobs waiting forever on a dead thread
            log.exception("engine loop crashed", extra={"engine": self._thread.name})
            self._stopping = True  # submit() refuses from now on
            self._fail_all(WorkerFailed(f"the model's engine crashed: {type(exc).__name__}: {exc}"))

    def _loop(self, outbox: _Outbox) -> None:
        while not self._stopping:
            if not self._batch and not self._waiting:
                first = self._queue.get()
                if first is None:
                    break
                self._waiting.append(first)
                self._gather(time.monotonic() + self.max_wait_s)
            else:
                self._gather(None)
            if self._stopping:
                break
            events: list[Event] = []
            self._drop_cancelled_waiting(events)
            self._admit(events)
            outbox.add(events, idle=False)  # first tokens leave before the next step
            events = []
            if self._batch:
                self._step(events)
            outbox.add(events, idle=not self._batch and not self._waiting)
        outbox.flush()
        self._fail_all(WorkerFailed("the model's engine stopped"))

    def _gather(self, deadline: float | None) -> None:
        """Move queued requests to ``_waiting``; with a deadline, wait for a full batch until then."""
        room = self.max_batch - len(self._batch)
        # with a batch running (no deadline) take everything queued, so a cancel reaches it while it waits
        while deadline is None or len(self._waiting) < max(room, 1):
            timeout = None if deadline is None else deadline - time.monotonic()
            try:
                item = self._queue.get_nowait() if timeout is None or timeout <= 0 else self._queue.get(
                    timeout=timeout
                )
            except queue.Empty:
                return
            if item is None:
                self._stopping = True
                return
            self._waiting.append(item)

    def _drop_cancelled_waiting(self, events: list[Event]) -> None:
        """Resolve waiting requests whose caller cancelled: they end now, not when a slot frees up."""
        if any(s.cancelled for s in self._waiting):
            for seq in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(seq)
                events.append((seq, None, _cancelled(seq)))

    def _admit(self, events: list[Event]) -> None:
        room = self.max_batch - len(self._batch)
        if room <= 0 or not self._waiting or (self._batch and self._mergeable is False):
            return
        group: list[Sequence] = []
        while self._waiting and len(group) < room:
            seq = self._waiting.popleft()
            if seq.cancelled:
                events.append((seq, None, _cancelled(seq)))
                continue
            try:
                self._prepare(seq)
            except Exception as exc:
                events.append((seq, None, exc))
                continue
            if seq.check_done():  # a resumed prefix that had already reached its end
                events.append((seq, None, seq.result()))
                continue
            group.append(seq)
        if not group:
            return
        fresh = DecodeBatch(self.model, self.prefixes)
        try:
            logits = fresh.prefill(group, self.pad_id)
        except Exception as exc:
            log.exception("prefill failed", extra={"rows": len(group)})
            events.extend((s, None, _failure(s, exc)) for s in group)
            return
        self.stats.prefills += 1
        try:
            self._advance(fresh, logits, events)
            if self._mergeable is None and fresh.rows:
                self._mergeable = fresh.mergeable()
            self._batch.merge(fresh)
        except Exception as exc:  # fails this group only; the running batch goes on
            log.exception("admitting a group failed", extra={"rows": len(group)})
            events.extend((s, None, _failure(s, exc)) for s in group if not s.finished)

    def _step(self, events: list[Event]) -> None:
        batch = self._batch
        live = [not s.cancelled for s in batch.rows]
        events.extend((s, None, _cancelled(s)) for s, ok in zip(batch.rows, live, strict=True) if not ok)
        batch.keep(live)
        if not batch:
            return
        try:
            logits = batch.step()
        except Exception as exc:
            log.exception("decoding step failed", extra={"rows": len(batch)})
            events.extend((s, None, _failure(s, exc)) for s in batch.rows)
            batch.keep([False] * len(batch))
            return
        self.stats.steps += 1
        self.stats.rows_stepped += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        try:
            self._advance(batch, logits, events)
        except Exception as exc:
            log.exception("choosing tokens failed", extra={"rows": len(batch)})
            events.extend((s, None, _failure(s, exc)) for s in batch.rows)
            batch.keep([False] * len(batch))

    def _advance(self, batch: DecodeBatch, logits: Any, events: list[Event]) -> None:
        """Pick each row's next token, record it, and drop the rows that finished."""
        rows = batch.rows
        tokens = next_tokens(logits, [s.params for s in rows], [s.generator for s in rows])
        self.stats.tokens += len(tokens)
        for seq, token in zip(rows, tokens, strict=True):
            delta = seq.append(token)
            events.append((seq, delta, seq.result() if seq.finished else None))
        batch.set_last(tokens)
        batch.keep([not s.finished for s in rows])

    def _fail_all(self, exc: TetherError) -> None:
        events: list[Event] = [(s, None, exc) for s in self._batch.rows]
        events += [(s, None, exc) for s in self._waiting]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                events.append((item, None, exc))
        self._waiting.clear()
        self._batch.keep([False] * len(self._batch))
        _deliver(events)


class _Outbox:
    """Events waiting for the next hand-over to the event loop, with a request's deltas merged."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._events: list[Event] = []
        self._at: dict[int, int] = {}  # id(seq) -> index of its pending delta-only event
        self._last = time.monotonic()

    def add(self, events: list[Event], *, idle: bool) -> None:
        urgent = idle
        for seq, delta, outcome in events:
            urgent = urgent or outcome is not None or (delta is not None and delta.offset == len(seq.resume_ids))
            i = self._at.get(id(seq))
            if i is not None and delta is not None:
                _, held, _ = self._events[i]
                assert held is not None
                merged = Delta(
                    text=held.text + delta.text, token_ids=held.token_ids + delta.token_ids, offset=held.offset
                )
                self._events[i] = (seq, merged, outcome)
            else:
                self._events.append((seq, delta, outcome))
                i = len(self._events) - 1
            if outcome is None:
                self._at[id(seq)] = i
            else:
                self._at.pop(id(seq), None)
        if urgent or time.monotonic() - self._last >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        events, self._events = self._events, []
        self._at.clear()
        self._last = time.monotonic()
        if events:
            _deliver(events)


def _cancelled(seq: Sequence) -> Cancelled:
    reason = seq.cancel.reason if seq.cancel is not None else ""
    return Cancelled(f"job {seq.job_id} cancelled: {reason or 'cancelled'}", job_id=seq.job_id)


def _failure(seq: Sequence, exc: BaseException) -> TetherError:
    if isinstance(exc, TetherError):
        return exc
    return WorkerFailed(f"{type(exc).__name__}: {exc}", job_id=seq.job_id)


def _deliver(events: list[Event]) -> None:
    """Hand each event loop its events, one call per loop per step."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Event]] = {}
    for event in events:
        loop = event[0].loop
        if loop is not None:
            by_loop.setdefault(loop, []).append(event)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_on_loop, items)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            continue


def _on_loop(items: list[Event]) -> None:
    for seq, delta, outcome in items:
        if delta is not None and seq.on_delta is not None:
            try:
                seq.on_delta(delta)
            except Exception:
                log.exception("delta callback failed", extra={"job": seq.job_id})
        fut = seq.future
        if outcome is None or fut is None or fut.done():
            continue
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
