"""Reading a JOBS message into a ticket: the submission time a client claims is bounded."""

from __future__ import annotations

import json

import pytest

from services.scheduler.intake import ticket_from
from tether.settings import Settings

STORED_AT = 1_800_000_000.0


def _ticket(body: dict[str, object]):  # type: ignore[no-untyped-def]
    return ticket_from(
        "tether.jobs.acme.echo.1", json.dumps(body).encode(), {}, seq=7, enqueued_at=STORED_AT, settings=Settings()
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
