"""Who is trusted: allowed keys per role and one denylist, from a file and a KV bucket.

Both sources are reloadable without a restart: the file is re-read when it
changes (one ``stat`` per reload tick), and the KV bucket is watched.

Allowlist file (``TETHER_HOME/trust/allowlist`` unless ``TETHER_ALLOWLIST``),
one entry per line, ``#`` starts a comment::

    <public key> [role ...]          allow for the named roles (no role: any role)
    allow <public key> [role ...]    the same
    deny <public key>                denied for every role; deny wins over allow

Public keys are urlsafe base64 (43 characters) or 64 hex characters; roles are
``worker``, ``scheduler``, ``gateway``, ``publisher``. A key file's ``.pub``
file is a valid line.

KV bucket ``TETHER_TRUST`` (``streams.TRUST_BUCKET``): key
``allow.<role>.<public key>`` (``allow.any.<key>`` for any role) or
``deny.<public key>``; the value is a free-form note. Deleting the key withdraws
the entry.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from streams import TRUST_BUCKET
from streams.kv import live_entries
from tether.identity import PUBLIC_KEY_BYTES, ROLES, decode_public_key, encode_public_key
from tether.tasks import TaskGroup

log = logging.getLogger(__name__)

#: How often the trust bucket is read in full, besides following its updates.
KV_RESYNC_S = 30.0

ANY_ROLE: Final = "any"
KeyLike = bytes | str


def as_key(key: KeyLike) -> bytes:
    """A raw 32-byte public key from bytes or its text form; ValueError otherwise."""
    if isinstance(key, str):
        return decode_public_key(key)
    if len(key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(key)}")
    return bytes(key)


def _check_roles(roles: Iterable[str]) -> frozenset[str]:
    out = frozenset(roles) or frozenset({ANY_ROLE})
    bad = out - {*ROLES, ANY_ROLE}
    if bad:
        raise ValueError(f"unknown role(s) {sorted(bad)}; expected {', '.join(ROLES)}")
    return out


@dataclass(slots=True)
class TrustLists:
    """Allowed keys (each with the roles it may act in) and denied keys."""

    allowed: dict[bytes, frozenset[str]] = field(default_factory=dict)
    denied: set[bytes] = field(default_factory=set)

    def allow(self, key: KeyLike, roles: Iterable[str] = ()) -> None:
        k = as_key(key)
        self.allowed[k] = self.allowed.get(k, frozenset()) | _check_roles(roles)

    def deny(self, key: KeyLike) -> None:
        self.denied.add(as_key(key))


def parse_allowlist(text: str, *, source: str = "<allowlist>") -> TrustLists:
    """Parse allowlist text (format in the module docstring); ValueError names the bad line."""
    lists = TrustLists()
    for lineno, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        verb = "allow"
        if tokens[0] in ("deny", "allow"):
            verb, tokens = tokens[0], tokens[1:]
        try:
            if not tokens or (verb == "deny" and len(tokens) != 1):
                raise ValueError(f"expected '[deny|allow] <public key> [role ...]', got {raw.strip()!r}")
            if verb == "deny":
                lists.deny(tokens[0])
            else:
                lists.allow(tokens[0], tokens[1:])
        except ValueError as e:
            raise ValueError(f"{source}:{lineno}: {e}") from None
    return lists


def allowlist_line(key: bytes, roles: Iterable[str] = (), note: str = "") -> str:
    """One allowlist line for ``key``."""
    parts = [encode_public_key(key), *sorted(r for r in roles if r != ANY_ROLE)]
    return " ".join(parts) + (f"  # {note}" if note else "") + "\n"


def append_allowlist(path: Path, lines: str) -> None:
    """Append lines to an allowlist file atomically (a full copy renamed over it), creating it.

    Readers never see a half-written file (the rename), and two writers at once (two ``tether keys
    allow`` runs, ``tether up`` making its keys) take turns on a lock of the directory (the file
    itself is replaced, so it cannot carry the lock), so neither's lines are lost to the other's copy.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the descriptor closes
        text = path.read_text() if path.exists() else "# Tether allowlist: <public key> [role ...] | deny <key>\n"
        if not text.endswith("\n"):
            text += "\n"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text + lines)
        tmp.replace(path)
    finally:
        os.close(lock)


def kv_key(verb: str, key: bytes, role: str = ANY_ROLE) -> str:
    """The KV key for an allow (per role) or deny entry."""
    if verb == "deny":
        return f"deny.{encode_public_key(key)}"
    return f"allow.{next(iter(_check_roles([role])))}.{encode_public_key(key)}"


def _parse_kv_key(name: str) -> tuple[str, str, bytes] | None:
    parts = name.split(".")
    try:
        if len(parts) == 2 and parts[0] == "deny":
            return "deny", ANY_ROLE, as_key(parts[1])
        if len(parts) == 3 and parts[0] == "allow":
            return "allow", next(iter(_check_roles([parts[1]]))), as_key(parts[2])
    except ValueError:
        pass
    return None


class TrustStore:
    """The merged view of the allowlist file, the KV bucket and keys added at run time.

    ``allows(key, role)`` and ``is_denied(key)`` are dictionary lookups: cheap
    enough to call on every message. Not thread-safe: one per event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        allowed: Iterable[KeyLike] = (),
        denied: Iterable[KeyLike] = (),
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._extra = TrustLists()
        for k in allowed:
            self._extra.allow(k)
        for k in denied:
            self._extra.deny(k)
        self._file = TrustLists()
        self._kv: dict[str, tuple[str, str, bytes]] = {}
        self._file_stat: tuple[int, int, int] | None = None
        self._allowed: dict[bytes, frozenset[str]] = {}
        self._denied: frozenset[bytes] = frozenset()
        self._tasks = TaskGroup("trust")
        self._started = False
        self.reload()
        self._rebuild()

    # -- lookups ------------------------------------------------------------

    def allows(self, key: bytes, role: str | None = None) -> bool:
        roles = self._allowed.get(key)
        if roles is None:
            return False
        return role is None or ANY_ROLE in roles or role in roles

    def is_denied(self, key: bytes) -> bool:
        return key in self._denied

    @property
    def allowed(self) -> frozenset[bytes]:
        return frozenset(self._allowed)

    @property
    def denied(self) -> frozenset[bytes]:
        return self._denied

    def allowed_for(self, role: str) -> frozenset[bytes]:
        return frozenset(k for k in self._allowed if self.allows(k, role) and k not in self._denied)

    # -- changes ------------------------------------------------------------

    def add_allowed(self, key: KeyLike, roles: Iterable[str] = ()) -> None:
        """Allow a key at run time (kept across reloads). A denied key stays denied."""
        self._extra.allow(key, roles)
        self._rebuild()

    def deny(self, key: KeyLike) -> None:
        """Deny a key at run time (kept across reloads); deny wins over allow."""
        self._extra.deny(key)
        self._rebuild()

    def reload(self) -> bool:
        """Re-read the allowlist file if it changed; True when reloaded.

        A missing or unparsable file keeps the previous lists (and logs). Replace
        the file atomically (write + rename) so a half-written file is never read.
        """
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._file_stat is not None:
                log.warning("allowlist %s disappeared; keeping the previous lists", self.path)
                self._file_stat = None
            return False
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self._file_stat:
            return False
        self._file_stat = sig
        try:
            lists = parse_allowlist(self.path.read_text(), source=str(self.path))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.error("allowlist %s not reloaded, keeping the previous lists: %s", self.path, e)
            return False
        self._file = lists
        self._rebuild()
        log.info(
            "allowlist %s loaded: %d allowed, %d denied", self.path, len(lists.allowed), len(lists.denied)
        )
        return True

    def apply_kv(self, name: str, present: bool) -> None:
        """One KV entry appeared (``present``) or was deleted."""
        parsed = _parse_kv_key(name)
        if parsed is None:
            log.warning("ignoring malformed trust KV key %r", name)
            return
        if present:
            self._kv[name] = parsed
        else:
            self._kv.pop(name, None)
        self._rebuild()

    def _rebuild(self) -> None:
        merged = TrustLists(dict(self._file.allowed), set(self._file.denied))
        for k, roles in self._extra.allowed.items():
            merged.allowed[k] = merged.allowed.get(k, frozenset()) | roles
        merged.denied |= self._extra.denied
        for verb, role, k in self._kv.values():
            if verb == "deny":
                merged.denied.add(k)
            else:
                merged.allowed[k] = merged.allowed.get(k, frozenset()) | {role}
        self._allowed, self._denied = merged.allowed, frozenset(merged.denied)

    # -- background reloading ----------------------------------------------

    async def start(
        self,
        js: JetStreamContext | None = None,
        *,
        bucket: str = TRUST_BUCKET,
        reload_s: float = 2.0,
        resync_s: float = KV_RESYNC_S,
    ) -> None:
        """Load the KV bucket's entries now, then keep following it and the file in the background.

        The watcher is opened before the bucket is read, so no update falls between the two; the
        initial read does not use the watcher's own first pass, which can end before its entries
        arrive (``streams.kv.live_entries``). The bucket is also read in full every ``resync_s``:
        nats-py's watcher stops delivering for good after a nats-server restart, and a revocation
        must not wait for a process restart.
        """
        if self._started:
            return
        self._started = True
        if js is not None:
            watcher = await (await js.key_value(bucket)).watchall()
            self._load_kv(await live_entries(js, bucket))
            self._tasks.spawn(self._follow_kv(watcher), name="trust-kv")
            self._tasks.spawn(self._resync_kv(js, bucket, resync_s), name="trust-kv-resync")
        self._tasks.spawn(self._follow_file(reload_s), name="trust-file")

    def _load_kv(self, entries: dict[str, bytes]) -> None:
        self._kv = {name: p for name in entries if (p := _parse_kv_key(name))}
        self._rebuild()

    async def _resync_kv(self, js: JetStreamContext, bucket: str, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                entries = await live_entries(js, bucket)
            except Exception as exc:  # NATS away: the last known lists stay in force
                log.warning("trust bucket resync failed", extra={"error": repr(exc)})
                continue
            self._load_kv(entries)

    def _apply_entry(self, entry: KeyValue.Entry) -> None:
        self.apply_kv(entry.key, entry.value is not None and entry.operation is None)

    async def _follow_kv(self, watcher: KeyValue.KeyWatcher) -> None:
        while True:
            try:
                entry = await watcher.updates(timeout=3600.0)
            except TimeoutError:
                continue
            if entry is not None:
                self._apply_entry(entry)

    async def _follow_file(self, reload_s: float) -> None:
        while True:
            await asyncio.sleep(reload_s)
            self.reload()

    async def stop(self) -> None:
        await self._tasks.close()
        self._started = False
