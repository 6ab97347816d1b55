"""Settings: keyword-only dataclasses read from ``TETHER_*`` environment variables.

Every knob is listed in the README's configuration table; the defaults here are
the documented defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tether.errors import InvalidRequest

DEFAULT_NATS_PORT = 4222
DEFAULT_HEARTBEAT_S = 5.0
DEFAULT_MAX_PAYLOAD = 1_048_576  # bytes accepted in one request (input + params)
DEFAULT_MAX_NEW_TOKENS = 2048
#: How long a scheduler's hold on a job lasts unless renewed (JetStream ack wait, store lease).
DEFAULT_JOB_LEASE_S = 30.0


def default_verify_workers() -> int:
    """Processes checking presence signatures under load: one per core beside the event loop's, 1..4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise InvalidRequest(f"{name}={os.environ.get(name)!r} is not a number", field=name) from None


def _int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise InvalidRequest(f"{name}={os.environ.get(name)!r} is not a whole number", field=name) from None


@dataclass(slots=True, kw_only=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(".tether"))
    nats_url: str | None = None  # None: `tether up` starts its own server
    nats_port: int = DEFAULT_NATS_PORT
    # GOMAXPROCS of the nats-server `tether up` / `tether nats` starts; None: half the cores under
    # `tether up` (it shares the machine with the roles), Go's own default under `tether nats`; 0: Go's
    nats_gomaxprocs: int | None = None
    store: str = ""  # "" -> sqlite file under home; "sqlite:///path" or "rqlite://host:4001"
    region: str = "local"
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    replicas: int = 0  # JetStream stream replicas; 0: follow the cluster size (1 single node, 3 in a cluster)
    results_max_age_s: float = 7 * 24 * 3600.0
    results_dedupe_s: float = 24 * 3600.0
    jobs_dedupe_s: float = 600.0
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    request_timeout_s: float = 300.0  # how long the gateway waits for a final result
    dispatch_ack_s: float = 5.0  # a worker must accept an assignment within this
    job_lease_s: float = DEFAULT_JOB_LEASE_S  # a dead scheduler's jobs pass to another after this
    exec_timeout_base_s: float = 30.0  # execution timeout = base + per_token * max_new_tokens
    exec_timeout_per_token_s: float = 0.5
    exec_timeout_cap_s: float = 900.0
    max_attempts: int = 3
    max_deliver: int = 100  # JetStream deliveries of one job before the DLQ advisory path takes it
    breaker_threshold: int = 5  # failures of a (model, region) within the window that open its breaker
    breaker_window_s: float = 30.0
    breaker_open_s: float = 10.0  # open this long, then one probe (half-open)
    reliability_half_life_s: float = 600.0
    placement_weights: str = ""  # "load=2,warm=3,..." overrides (see scoring.Weights)
    placement_sample: int = 8  # candidates scored per decision
    queue_wait_s: float = 120.0  # a job waits at most this long for a worker serving its model
    scheduler_batch: int = 256  # jobs fetched from JOBS per pull
    max_inflight: int = 4096  # jobs one scheduler holds at once (JOBS ack pending)
    worker_concurrency: int = 256  # jobs one worker runs at once (echo); heavy runtimes serialise
    models: list[str] = field(default_factory=lambda: ["echo"])
    max_batch: int = 32  # rows one model's engine decodes together
    batch_wait_ms: float = 1.0  # how long an idle engine waits to fill its first batch
    model_memory_mb: float = 0.0  # warm-model budget; 0: 80% of the memory available at start
    pin_models: list[str] = field(default_factory=list)  # "model:version" never evicted
    worker_tenant_limit: int = 0  # jobs one tenant may have on a worker at once (0: no limit)
    worker_max_queue: int = 0  # jobs a worker holds before refusing with no_capacity (0: worker_concurrency)
    admission_bench: bool = True  # run the matmul / allocation benchmark at worker start
    http_port: int = 8080
    insecure: bool = False  # --insecure / TETHER_INSECURE=1: any signing key is trusted (never the default)
    allowlist: Path | None = None  # None: $TETHER_HOME/trust/allowlist
    skew_s: float = 30.0  # signed messages older / newer than this are refused
    trust_reload_s: float = 2.0  # how often the allowlist file is checked for changes
    verify_workers: int = field(default_factory=default_verify_workers)  # presence signature helpers

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        s = cls(
            home=Path(_env("TETHER_HOME", ".tether")),
            nats_url=os.environ.get("TETHER_NATS_URL") or None,
            nats_port=_int("TETHER_NATS_PORT", DEFAULT_NATS_PORT),
            nats_gomaxprocs=_int("TETHER_NATS_GOMAXPROCS", 0) if os.environ.get("TETHER_NATS_GOMAXPROCS") else None,
            store=_env("TETHER_STORE", ""),
            region=_env("TETHER_REGION", "local"),
            heartbeat_s=_float("TETHER_HEARTBEAT_S", DEFAULT_HEARTBEAT_S),
            replicas=_int("TETHER_REPLICAS", 0),
            results_max_age_s=_float("TETHER_RESULTS_MAX_AGE_S", 7 * 24 * 3600.0),
            max_payload=_int("TETHER_MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD),
            max_new_tokens=_int("TETHER_MAX_NEW_TOKENS", DEFAULT_MAX_NEW_TOKENS),
            request_timeout_s=_float("TETHER_REQUEST_TIMEOUT_S", 300.0),
            dispatch_ack_s=_float("TETHER_DISPATCH_ACK_S", 5.0),
            job_lease_s=_float("TETHER_JOB_LEASE_S", DEFAULT_JOB_LEASE_S),
            max_attempts=_int("TETHER_MAX_ATTEMPTS", 3),
            max_deliver=_int("TETHER_MAX_DELIVER", 100),
            breaker_threshold=_int("TETHER_BREAKER_THRESHOLD", 5),
            breaker_window_s=_float("TETHER_BREAKER_WINDOW_S", 30.0),
            breaker_open_s=_float("TETHER_BREAKER_OPEN_S", 10.0),
            reliability_half_life_s=_float("TETHER_RELIABILITY_HALF_LIFE_S", 600.0),
            placement_weights=_env("TETHER_WEIGHTS", ""),
            placement_sample=_int("TETHER_PLACEMENT_SAMPLE", 8),
            queue_wait_s=_float("TETHER_QUEUE_WAIT_S", 120.0),
            models=[m for m in _env("TETHER_MODELS", "echo").split(",") if m.strip()],
            max_batch=_int("TETHER_MAX_BATCH", 32),
            batch_wait_ms=_float("TETHER_BATCH_WAIT_MS", 1.0),
            model_memory_mb=_float("TETHER_MODEL_MEMORY_MB", 0.0),
            pin_models=[m.strip() for m in _env("TETHER_PIN_MODELS", "").split(",") if m.strip()],
            worker_tenant_limit=_int("TETHER_WORKER_TENANT_LIMIT", 0),
            worker_max_queue=_int("TETHER_WORKER_MAX_QUEUE", 0),
            admission_bench=_env("TETHER_ADMISSION_BENCH", "1").lower() not in ("0", "false", "no", "off"),
            http_port=_int("TETHER_HTTP_PORT", 8080),
            # only an explicit yes turns verification off: "False", "off", "NO" keep it on
            insecure=_env("TETHER_INSECURE", "").strip().lower() in ("1", "true", "yes", "on"),
            allowlist=Path(os.environ["TETHER_ALLOWLIST"]) if os.environ.get("TETHER_ALLOWLIST") else None,
            skew_s=_float("TETHER_SKEW_S", 30.0),
            verify_workers=_int("TETHER_VERIFY_WORKERS", default_verify_workers()),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        return s

    @property
    def url(self) -> str:
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"

    @property
    def allowlist_path(self) -> Path:
        return self.allowlist or self.home / "trust" / "allowlist"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.home / 'tether.db'}"
