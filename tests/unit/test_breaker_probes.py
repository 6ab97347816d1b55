"""Half-open breakers: one probe at a time, taken atomically at placement and tied to its attempt;
only that attempt's outcome moves the breaker."""

from __future__ import annotations

from services.scheduler.breakers import BreakerBoard, BreakerPolicy, BreakerState
from tests.fleet_helpers import Clock

KEY = ("m", "1", "eu")


def _opened(clock: Clock) -> BreakerBoard:
    board = BreakerBoard(BreakerPolicy(threshold=2, window_s=30, open_s=10), clock=clock)
    board.failure(KEY, "boom")
    board.failure(KEY, "boom")
    assert board.state(KEY) is BreakerState.OPEN
    return board


def test_concurrent_placements_on_a_half_open_breaker_get_exactly_one_probe() -> None:
    clock = Clock()
    board = _opened(clock)
    clock.t += 10
    tickets = [board.try_acquire(KEY) for _ in range(5)]  # five jobs placed before any awaits
    probes = [t for t in tickets if t is not None]
    assert len(probes) == 1 and probes[0].probe
    assert board.state(KEY) is BreakerState.HALF_OPEN and not board.allows(KEY)


def test_a_stale_success_placed_before_the_breaker_opened_does_not_close_it() -> None:
    clock = Clock()
    board = BreakerBoard(BreakerPolicy(threshold=2, window_s=30, open_s=10), clock=clock)
    old = board.try_acquire(KEY)  # placed while CLOSED
    assert old is not None and not old.probe
    board.failure(KEY, "boom")
    board.failure(KEY, "boom")
    clock.t += 1
    board.success(old)
    assert board.state(KEY) is BreakerState.OPEN and not board.allows(KEY)
    clock.t += 9
    probe = board.try_acquire(KEY)  # half-open now: a success that was not its probe changes nothing
    late = board.try_acquire(KEY)
    assert probe is not None and late is None
    board.success(probe)
    assert board.state(KEY) is BreakerState.CLOSED


def test_an_unrelated_abandon_does_not_release_the_probe_and_a_stale_failure_does_not_reopen() -> None:
    clock = Clock()
    board = BreakerBoard(BreakerPolicy(threshold=2, window_s=30, open_s=10), clock=clock)
    older = [board.try_acquire(KEY) for _ in range(2)]  # placed while CLOSED, still running
    board.failure(KEY, "boom")
    board.failure(KEY, "boom")
    clock.t += 10
    probe = board.try_acquire(KEY)
    assert probe is not None and probe.probe
    assert older[0] is not None and older[1] is not None
    board.abandon(older[0])  # a refusal / unreachable worker on an attempt placed earlier
    assert not board.allows(KEY), "the probe is still out"
    board.failure(older[1], "late")
    assert board.state(KEY) is BreakerState.HALF_OPEN and not board.allows(KEY)
    board.failure(probe, "probe failed")
    assert board.state(KEY) is BreakerState.OPEN


def test_an_attempt_block_left_without_a_verdict_releases_its_probe() -> None:
    clock = Clock()
    board = _opened(clock)
    clock.t += 10
    try:
        with board.attempt(KEY) as ticket:
            assert ticket is not None and ticket.probe
            raise RuntimeError("store briefly unavailable")
    except RuntimeError:
        pass
    assert board.allows(KEY) and board.state(KEY) is BreakerState.HALF_OPEN
    with board.attempt(KEY) as ticket:
        assert ticket is not None
        board.success(ticket)
    assert board.state(KEY) is BreakerState.CLOSED
