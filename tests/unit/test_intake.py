"""Reading a JOBS message into a ticket: the submission time a client claims is bounded."""

from __future__ import annotations

import json

import pytest

from services.scheduler.intake import ticket_from
from tether.settings import Settings

STORED_AT = 1_800_000_000.0


def _ticket(body: dict[str, object]):  # type: ignore[no-untyped-def]
    return ticket_from(
        "tether.jobs.acme.echo.1", json.dumps(body).encode(), {}, seq=7, stored_ns=int(STORED_AT * 1e9), settings=Settings()
    )


@pytest.mark.parametrize(
    ("claimed", "created"),
    [
        (STORED_AT - 2.5, STORED_AT - 2.5),  # the client's own clock, a moment before JetStream stored it
        (1e20, STORED_AT),  # in the future: it would sit atop every listing (and break `tether jobs`)
        (-5.0, STORED_AT),
        (0, STORED_AT),
        (None, STORED_AT),
    ],
)
def test_created_at_is_the_claimed_submission_time_but_never_after_it_was_stored(
    claimed: float | None, created: float
) -> None:
    body: dict[str, object] = {"jobId": "j-1", "input": "hi"}
    if claimed is not None:
        body["submittedAt"] = claimed
    t = _ticket(body)
    assert t.error is None
    assert t.key.created_at == created


@pytest.mark.parametrize("ns", [1_796_203_199_456_999_999, 1_796_203_199_000_000_000, 1_796_203_199_000_001_000])
def test_a_generated_id_is_the_same_on_delivery_and_on_a_direct_get(ns: int) -> None:
    """The dead-letter path reads the stored time as nats-py parses the server's RFC 3339 string (µs)."""
    from datetime import UTC, datetime

    from nats.js.api import RawStreamMsg

    from services.scheduler.intake import generated_job_id, stored_ns_of

    seconds, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    text += (f".{frac:09d}".rstrip("0") if frac else "") + "Z"  # Go's RFC3339Nano: trailing zeros cut
    parsed = RawStreamMsg.from_response({"subject": "x", "seq": 9, "time": text}).time
    assert generated_job_id(9, stored_ns_of(parsed)) == generated_job_id(9, ns)


def test_a_job_without_a_stored_time_falls_back_to_its_sequence() -> None:
    from services.scheduler.intake import generated_job_id

    assert generated_job_id(9, 0) == "job-9"
