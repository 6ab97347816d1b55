"""Per-role NATS users and subject permissions for ``infra/nats/prod.conf``.

``render_auth(users)`` writes the ``authorization { users = [...] }`` block the
production config includes (``auth.conf``). Each role may publish and subscribe
only where its job needs (``PERMISSIONS``); a worker user is bound to one worker
id and may subscribe only to that worker's dispatch subject and publish
heartbeats only under its own id. Passwords are random; the file is mode 0600.
nats-server denies anything not allowed and reports a permissions violation.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from streams import ARTIFACTS_BUCKET, TRUST_BUCKET
from streams.kv import (
    APIKEYS_BUCKET,
    CANARY_BUCKET,
    GATEWAYS_BUCKET,
    IDEMPOTENCY_BUCKET,
    QUOTA_BUCKET,
    RESUME_BUCKET,
)
from tether import subjects
from tether.identity import write_private_file

ROLES = ("admin", "scheduler", "gateway", "worker", "publisher", "client")

# JetStream reads every role that follows the trust bucket or reads the object store needs.
_JS_READ = [
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.FC.>",
]
_P = subjects.PREFIX


def permissions(role: str, worker_id: str | None = None) -> dict[str, object]:
    """``{"publish": {"allow": [...]}, "subscribe": {"allow": [...]}}`` for one user."""
    if role == "admin":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if role == "worker":
        if not worker_id:
            raise ValueError("a worker user is bound to a worker id")
        wid = subjects.encode_token(worker_id)
        pub = [
            f"{_P}.presence.*.{wid}",
            f"{_P}.models.>",
            f"{_P}.results.>",
            f"{_P}.reports.*.{wid}",  # its own reports only: the scheduler trusts the sender token
            f"{_P}.events.>",  # drained / stopped
            *_JS_READ,
            "$JS.API.CONSUMER.INFO.>",  # the start-up check that the streams and consumer exist
            # watching the trust bucket / reading the artifact store: consumer create, with or without
            # the filter subject in the API subject (nats-py uses both forms)
            f"$JS.API.CONSUMER.CREATE.KV_{TRUST_BUCKET}",
            f"$JS.API.CONSUMER.CREATE.KV_{TRUST_BUCKET}.>",
            f"$JS.API.CONSUMER.CREATE.OBJ_{ARTIFACTS_BUCKET}",
            f"$JS.API.CONSUMER.CREATE.OBJ_{ARTIFACTS_BUCKET}.>",
        ]
        sub = [subjects.dispatch_subject(worker_id), f"{_P}.control.>", "_INBOX.>"]
        return {"publish": {"allow": pub}, "subscribe": {"allow": sub}, "allow_responses": True}
    if role == "scheduler":
        pub = [
            f"{_P}.dispatch.>", f"{_P}.results.>", f"{_P}.dlq.>", f"{_P}.events.>",
            f"{_P}.control.cancel.>",  # stop abandoned attempts
            "$JS.API.>", "$JS.ACK.>", "$JS.FC.>",
            f"$KV.{RESUME_BUCKET}.>",  # parked streaming jobs' prefixes, shared with the other schedulers
        ]
        sub = [
            f"{_P}.presence.>", f"{_P}.models.>", f"{_P}.reports.>", f"{_P}.results.>",
            f"{_P}.control.drain.>",  # a drained worker's placements move at once
            f"{_P}.control.cancel.>",  # job-wide cancels, kept for jobs still waiting (cancels.py)
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",  # the dead-letter path
            "_INBOX.>",
        ]
        return {"publish": {"allow": pub}, "subscribe": {"allow": sub}, "allow_responses": True}
    if role == "gateway":
        pub = [
            f"{_P}.jobs.>", f"{_P}.control.cancel.>", "$JS.API.>", "$JS.FC.>",
            f"{_P}.events.canary.>",  # a canary's verdict (rolled back, stepped, promoted)
            *(
                f"$KV.{bucket}.>"
                for bucket in (QUOTA_BUCKET, IDEMPOTENCY_BUCKET, GATEWAYS_BUCKET, APIKEYS_BUCKET, CANARY_BUCKET)
            ),
        ]
        sub = [
            subjects.INFER, f"{subjects.INFER}.*",  # tether.infer and tether.infer.<tenant>
            f"{_P}.results.>", f"{_P}.presence.>", f"{_P}.models.>", "_INBOX.>",
            f"{_P}.control.canary.>",  # an operator's canary change, applied at once
        ]
        return {"publish": {"allow": pub}, "subscribe": {"allow": sub}, "allow_responses": True}
    if role == "publisher":
        obj = f"OBJ_{ARTIFACTS_BUCKET}"
        pub = [f"$O.{ARTIFACTS_BUCKET}.>", *_JS_READ, f"$JS.API.STREAM.PURGE.{obj}"]
        return {"publish": {"allow": pub}, "subscribe": {"allow": ["_INBOX.>"]}}
    if role == "client":
        return {
            "publish": {"allow": [subjects.INFER]},
            "subscribe": {"allow": ["_INBOX.>", f"{_P}.results.>"]},
        }
    raise ValueError(f"unknown NATS role {role!r}; expected one of {', '.join(ROLES)}")


@dataclass(frozen=True, slots=True)
class NatsUser:
    name: str
    role: str
    password: str
    worker_id: str | None = None

    @classmethod
    def new(cls, role: str, worker_id: str | None = None) -> NatsUser:
        name = f"worker-{worker_id}" if role == "worker" else role
        return cls(name, role, secrets.token_urlsafe(24), worker_id)

    def url(self, host: str = "127.0.0.1", port: int = 4222) -> str:
        return f"tls://{self.name}:{self.password}@{host}:{port}"


def render_auth(users: list[NatsUser]) -> str:
    """The ``auth.conf`` text (nats-server accepts JSON values in its config)."""
    entries = [
        {"user": u.name, "password": u.password, "permissions": permissions(u.role, u.worker_id)}
        for u in users
    ]
    return "# written by `tether certs users`: one user per role, one per worker\n" + (
        f"authorization {{\n  users = {json.dumps(entries, indent=2)}\n}}\n"
    )


def write_auth(out: Path, users: list[NatsUser]) -> Path:
    """``auth.conf`` and ``credentials.json`` (user -> password), both mode 0600."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("auth.conf", render_auth(users)),
        ("credentials.json", json.dumps({u.name: u.password for u in users}, indent=2) + "\n"),
    ):
        write_private_file(out / name, text.encode())
    return out / "auth.conf"
