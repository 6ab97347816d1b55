"""API keys: ``Authorization: Bearer <key>`` -> tenant, with only the key's SHA-256 stored.

Keys are 32 random bytes (``tk_`` + URL-safe base64), so a plain SHA-256 is enough to
make the stored hash useless for signing in (no dictionary to try). They live in the KV
bucket ``tether_apikeys`` (``k.<hex digest>`` -> ``{"tenant", "name", "createdAt"}``), so
every gateway sees a key as soon as ``tether apikeys add`` has written it, and a revoked key
is refused at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from streams.kv import APIKEYS_BUCKET, live_entries
from tether.errors import InvalidRequest, StoreError, Unauthorized

KEY_PREFIX = "tk_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    digest: str
    tenant: str
    name: str
    created_at: float


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <api key>'", field="Authorization")
    return token.strip()


class ApiKeys:
    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self._kv = kv
        self._js = js

    @classmethod
    async def open(cls, js: JetStreamContext) -> ApiKeys:
        return cls(await js.key_value(APIKEYS_BUCKET), js)

    async def add(self, tenant: str, name: str = "") -> tuple[str, ApiKey]:
        """Create a key for ``tenant``; the clear key is returned once and never stored."""
        if not tenant.strip():
            raise InvalidRequest("a key needs a tenant", field="tenant")
        key = new_key()
        record = ApiKey(digest=digest_of(key), tenant=tenant.strip(), name=name, created_at=time.time())
        value = {"tenant": record.tenant, "name": record.name, "createdAt": record.created_at}
        await self._kv.put("k." + record.digest, json.dumps(value).encode())
        return key, record

    async def lookup(self, key: str) -> ApiKey | None:
        digest = digest_of(key)
        try:
            entry = await self._kv.get("k." + digest)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        except Exception as exc:  # JetStream away: the key cannot be checked now (503, retryable), not a crash
            raise StoreError(f"cannot check the API key now: {type(exc).__name__}: {exc}") from None
        if not entry.value:
            return None
        data = json.loads(entry.value)
        return ApiKey(digest=digest, tenant=data["tenant"], name=data.get("name", ""), created_at=data["createdAt"])

    async def list(self) -> list[ApiKey]:
        out = []
        for k, value in (await live_entries(self._js, APIKEYS_BUCKET)).items():
            data = json.loads(value)
            out.append(ApiKey(k.removeprefix("k."), data["tenant"], data.get("name", ""), data["createdAt"]))
        return sorted(out, key=lambda a: a.created_at)

    async def revoke(self, digest_prefix: str) -> int:
        """Delete every key whose digest starts with ``digest_prefix`` (at least 8 hex digits)."""
        if len(digest_prefix) < 8:
            raise InvalidRequest("give at least 8 hex digits of the key's digest", field="digest")
        gone = 0
        for key in await self.list():
            if key.digest.startswith(digest_prefix):
                await self._kv.delete("k." + key.digest)
                gone += 1
        return gone
