"""The placement interface: a policy picks one worker for a job and says why.

The scheduler's policy is ``scoring.AffinityPlacement``; anything with this
``choose`` can replace it (tests, experiments).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from services.scheduler.scoring import JobNeeds


@dataclass(frozen=True, slots=True)
class Choice:
    worker_id: str
    explanation: dict[str, Any] = field(default_factory=dict)


class Placement(Protocol):
    def choose(
        self, needs: JobNeeds, *, inflight: Mapping[str, int], avoid: Collection[str] = ()
    ) -> Choice | None: ...
