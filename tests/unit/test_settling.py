"""``streams.apply.settling``: which JetStream answers a starting role waits out (a cluster forming or
electing) and which it reports at once (no JetStream at all, not enabled, a permission it lacks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, ServiceUnavailableError

from streams.apply import settling


@dataclass
class Conn:
    """What ``settling`` reads of a connection: the server's INFO and the last async error."""

    _server_info: dict[str, object] = field(default_factory=lambda: {"jetstream": True})
    last_error: Exception | None = None


@pytest.mark.parametrize(
    "exc",
    [
        ServiceUnavailableError(),  # its JetStream API does not answer yet
        NoRespondersError(),
        NatsTimeoutError(),  # an election under way
        APIError(code=503, err_code=10008, description="JetStream system temporarily unavailable"),
        APIError(code=500, err_code=10005, description="no suitable peers for placement"),
        APIError(code=500, err_code=10009, description="JetStream cluster can not handle request"),
    ],
)
def test_a_cluster_still_forming_is_waited_for(exc: Exception) -> None:
    assert settling(exc, Conn())


@pytest.mark.parametrize(
    ("exc", "conn"),
    [
        (ServiceUnavailableError(), Conn({"jetstream": False})),  # a server without JetStream
        (NoRespondersError(), Conn({})),
        (APIError(code=503, err_code=10039, description="JetStream not enabled for account"), Conn()),
        (APIError(code=503, err_code=10076, description="JetStream not enabled"), Conn()),
        (NatsTimeoutError(), Conn(last_error=Exception("nats: permissions violation for publish to $JS.API.X"))),
        (APIError(code=400, err_code=10058, description="stream name already in use"), Conn()),
    ],
)
def test_what_no_wait_can_change_is_reported_at_once(exc: Exception, conn: Conn) -> None:
    assert not settling(exc, conn)
