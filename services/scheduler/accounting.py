"""What an attempt's outcome says about the model (its breaker) and the worker (its reliability).

Refusals for lack of capacity say nothing about the model's health and are not counted;
neither are final errors about the request itself (bad input), nor a timeout the client
chose: a job whose own ``timeoutS`` is shorter than the model's execution budget ran out of
the client's time, not the model's. Counting those would let one tenant's tight deadlines
open a model's breaker for every tenant (the worker that was too slow still scores lower).
A worker that never acked or went offline counts against that worker's reliability only.
"""

from __future__ import annotations

from services.scheduler.attempts import WorkerUnreachable, model_budget
from services.scheduler.breakers import BreakerBoard, BreakerTicket
from services.scheduler.intake import Ticket
from services.scheduler.reliability import Reliability
from tether.errors import NoCapacity, TetherError, Timeout
from tether.settings import Settings


def clients_deadline(settings: Settings, t: Ticket) -> bool:
    """Whether the job's own ``timeoutS``, not the model's execution budget, bounds its attempts."""
    params = t.submission.params if t.submission else None
    return bool(params and params.timeout_s) and params.timeout_s < model_budget(settings, t)  # type: ignore[union-attr,operator]


def account(
    breakers: BreakerBoard,
    reliability: Reliability,
    breaker: BreakerTicket,
    worker_id: str,
    err: TetherError | None,
    *,
    clients_time: bool,
) -> None:
    """Feed one attempt's outcome to the model's breaker and the worker's reliability."""
    if err is None:
        breakers.success(breaker)
        reliability.record(worker_id, True)
    elif isinstance(err, WorkerUnreachable):  # the worker's fault, not the model's
        breakers.abandon(breaker)
        reliability.record(worker_id, False)
    elif isinstance(err, Timeout) and clients_time:  # the model's health is not in question; this
        breakers.abandon(breaker)  # worker was still slower than the client's deadline: prefer faster ones
        reliability.record(worker_id, False)
    elif err.retryable and err.code != NoCapacity.code:
        breakers.failure(breaker, f"{err.code}: {err.message}")
        reliability.record(worker_id, False)
    else:
        breakers.abandon(breaker)
