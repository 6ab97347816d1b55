"""The scheduler's delivered prefix grows only by chunks that continue it exactly."""

from __future__ import annotations

from dataclasses import dataclass

from schemas import ResultChunk
from services.scheduler.progress import StreamProgress, _Delivered
from tether import codec


@dataclass
class _Msg:
    data: bytes
    headers: dict[str, str] | None = None


def _chunk(seq: int, text: str, offset: int, attempt: int = 1) -> _Msg:
    chunk = ResultChunk(job_id="j", seq=seq, text=text, offset=offset, token_ids=[7] * len(text), attempt=attempt)
    return _Msg(codec.encode(chunk.wire()))


def _fed(*msgs: _Msg) -> _Delivered:
    progress = StreamProgress(nc=None, fleet=None)  # type: ignore[arg-type]  # _record needs neither
    state = _Delivered()
    for m in msgs:
        progress._record(state, m)  # type: ignore[arg-type]
    return state


def test_contiguous_chunks_of_one_attempt_and_its_resumed_successor_build_the_prefix() -> None:
    state = _fed(_chunk(0, "ab", 0), _chunk(1, "c", 2), _chunk(2, "de", 3, attempt=2))
    prefix = state.prefix()
    assert (prefix.text, len(prefix.token_ids), prefix.seq) == ("abcde", 5, 3)


def test_zombies_repeats_gaps_and_restarts_do_not_enter_the_prefix() -> None:
    state = _fed(
        _chunk(0, "ab", 0),
        _chunk(1, "c", 2, attempt=2),  # attempt 2 took over, resumed
        _chunk(2, "zz", 3, attempt=1),  # attempt 1 still emitting: a zombie
        _chunk(1, "c", 2, attempt=2),  # a repeat
        _chunk(3, "x", 9, attempt=2),  # past a lost chunk (seq 2)
    )
    assert (state.prefix().text, state.prefix().seq) == ("abc", 2)
    restarted = _fed(_chunk(0, "ab", 0), _chunk(1, "a", 0, attempt=2))  # attempt 2 started over
    assert (restarted.prefix().text, restarted.prefix().seq) == ("ab", 1)


class _Sub:
    def __init__(self) -> None:
        self.closed = False

    async def unsubscribe(self) -> None:
        self.closed = True


class _Nc:
    def __init__(self) -> None:
        self.subs: dict[str, _Sub] = {}

    async def subscribe(self, subject: str, cb: object = None) -> _Sub:
        self.subs[subject] = _Sub()
        return self.subs[subject]


async def test_long_parked_jobs_are_forgotten_even_when_nothing_is_parked_again(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import services.scheduler.progress as progress_module
    from tether import subjects

    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    nc = _Nc()
    progress = StreamProgress(nc=nc, fleet=None, keep_s=10.0)  # type: ignore[arg-type]
    await progress.watch("a")
    await progress.park("a")  # another scheduler took it, and this one never parks again
    now[0] = 5.0
    await progress.watch("b")
    assert not nc.subs[subjects.chunks_subject("a")].closed  # kept while it may come back
    now[0] = 11.0
    await progress.watch("c")  # a new job is enough to let the stale one go
    assert nc.subs[subjects.chunks_subject("a")].closed and progress.prefix("a") is None
    assert "a" not in progress._jobs and not nc.subs[subjects.chunks_subject("b")].closed
