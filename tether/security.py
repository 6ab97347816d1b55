"""Security wiring from settings: node identities, the trust store, verifiers, development keys.

Security is on unless a role runs with ``--insecure`` (``TETHER_INSECURE=1``),
which logs a warning at every start. Without an allowlist and without
``--insecure`` every signed message is refused as ``unknown_key`` and an error
says how to fix it; nothing is silently let through.

Development mode (``tether up``) calls ``ensure_dev_trust`` on first start: it
creates the worker, scheduler and publisher keys and the fleet's sealed-box key
under ``TETHER_HOME/keys``, and an allowlist under ``TETHER_HOME/trust`` naming
each signing key in its role.
"""

from __future__ import annotations

import logging
import sys

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from tether.e2e import FleetBox, fleet_key_path
from tether.envelope import Verifier
from tether.identity import Identity, Role
from tether.settings import Settings
from tether.trust import TrustStore, allowlist_line, append_allowlist, parse_allowlist

log = logging.getLogger(__name__)

INSECURE_WARNING = (
    "WARNING: running with --insecure: any Ed25519 key is trusted (signatures, timestamps and "
    "nonces are still checked, the allowlist is not). Never use this outside development."
)
DEV_KEYS: tuple[tuple[str, Role], ...] = (
    ("worker", "worker"),
    ("scheduler", "scheduler"),
    ("publisher", "publisher"),
)


def warn_insecure(settings: Settings) -> None:
    """Print and log the insecure-mode warning when it applies."""
    if settings.insecure:
        if logging.getLogger().handlers:  # logs go somewhere of their own: say it there too
            log.warning(INSECURE_WARNING)
        print(INSECURE_WARNING, file=sys.stderr, flush=True)


def key_path(settings: Settings, name: str) -> str:
    return str(settings.keys_dir / f"{name}.key")


def node_identity(settings: Settings, role: Role, name: str | None = None) -> Identity:
    """The identity ``TETHER_HOME/keys/<name>.key`` (created on first use, with a hint to allow it)."""
    path = settings.keys_dir / f"{name or role}.key"
    existed = path.exists()
    ident = Identity.load_or_create(path, role)
    if not existed:
        log.warning(
            "new %s key %s; allow it with `tether keys allow %s --role %s`",
            role,
            path,
            ident.public_key_b64,
            role,
        )
    return ident


def open_trust(settings: Settings) -> TrustStore:
    """The trust store read from the settings' allowlist file (missing file: empty, logged)."""
    path = settings.allowlist_path
    if not path.exists() and not settings.insecure:
        log.error(
            "no allowlist at %s: every signed message will be refused; create it with "
            "`tether keys allow KEY --role ROLE`, start with `tether up` (development keys), "
            "or run with --insecure",
            path,
        )
    elif path.exists():
        parse_allowlist(path.read_text(), source=str(path))  # fail at start on a broken file
    return TrustStore(path)


def verifier_for(settings: Settings, role: Role, trust: TrustStore | None = None) -> Verifier:
    """A verifier admitting signers allowed in ``role`` (any key with ``--insecure``)."""
    return Verifier(
        trust=trust if trust is not None else open_trust(settings),
        role=role,
        skew_s=settings.skew_s,
        allow_all=settings.insecure,
    )


async def start_trust(trust: TrustStore, js: JetStreamContext, settings: Settings) -> None:
    """Load the trust KV bucket's entries and keep following it and the file."""
    from streams import TRUST_BUCKET

    try:
        await js.key_value(TRUST_BUCKET)
    except BucketNotFoundError:  # not declared on this server: the file alone decides
        await trust.start(None, reload_s=settings.trust_reload_s)
        return
    await trust.start(js, bucket=TRUST_BUCKET, reload_s=settings.trust_reload_s)


def ensure_dev_trust(settings: Settings, extra_workers: int = 0) -> list[Identity]:
    """Create the development keys and an allowlist naming them (first start only).

    Keys that exist are kept; keys missing from the allowlist are appended to it.
    Returns the identities (worker, scheduler, publisher, then extra workers).
    """
    names = [*DEV_KEYS, *((f"worker-{i}", "worker") for i in range(1, extra_workers + 1))]
    idents = [Identity.load_or_create(key_path(settings, name), role) for name, role in names]
    box = fleet_key_path(settings.keys_dir)
    if not box.exists():
        FleetBox.create(box)  # the fleet's sealed-box key, for end-to-end encrypted payloads
    path = settings.allowlist_path
    known = parse_allowlist(path.read_text(), source=str(path)).allowed if path.exists() else {}
    added = [i for i in idents if i.public_key not in known]
    if added:
        append_allowlist(path, "".join(allowlist_line(i.public_key, [i.role], i.node_id) for i in added))
    return idents
