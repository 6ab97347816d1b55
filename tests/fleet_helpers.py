"""What the fleet and placement tests build: a settable clock and a worker's presence."""

from __future__ import annotations

from schemas import ModelState, Presence, ServedModel


class Clock:
    """A clock the test moves by setting ``t``."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def presence(
    worker_id: str,
    *,
    models: dict[str, ModelState] | None = None,
    region: str = "eu",
    device: str = "cpu",
    depth: int = 0,
    capacity: int = 8,
    seq: int = 1,
    started_at: float = 1.0,
    draining: bool = False,
    **extra: object,
) -> Presence:
    """A heartbeat of ``worker_id`` serving ``models`` (default: model ``m`` version 1, warm)."""
    return Presence(
        worker_id=worker_id,
        region=region,
        device_class=device,
        capacity=capacity,
        queue_depth=depth,
        models=[
            ServedModel(model_id=m, version="1", task="generate", state=st)
            for m, st in (models or {"m": ModelState.WARM}).items()
        ],
        heartbeat_s=1.0,
        started_at=started_at,
        seq=seq,
        ts=0.0,
        draining=draining,
        **extra,  # type: ignore[arg-type]
    )
