"""Authenticated assignments: the scheduler seals each dispatch message, the worker admits only trusted ones.

One seal per dispatch *message* (a ``DispatchBatch`` may carry many jobs). The seal is
a pairwise tag (``tether.pairwise``: a keyed BLAKE2b under the key only this scheduler
and this worker can derive from their identities) when the scheduler knows the worker's
public key from its signed heartbeats, which is always so unless a worker's presence
came unsigned; otherwise an Ed25519 signature. A dispatch is meant for one worker and
checked by that worker alone, so a tag authenticates it as well as a signature does, at
about 2 µs on each side instead of an Ed25519 sign (~30 µs) and verify (~90 µs) on the
latency path of every job. The envelope's purpose is ``dispatch.<worker id>``: a batch
sealed for one worker is refused by every other (``wrong_purpose``; a tag made with
another worker's key does not verify either), and a replay to the same worker is
refused by its nonce cache (``replayed``). Workers trust scheduler keys from the
allowlist (role ``scheduler``), checked before the tag, as for a signature.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from tether.envelope import PURPOSE_DISPATCH, EnvelopeRejected, Verifier, seal, seal_pairwise
from tether.identity import Identity, encode_public_key
from tether.pairwise import PairKeys
from tether.settings import Settings
from tether.signed import ENVELOPE, RejectionLog


def dispatch_purpose(worker_id: str) -> str:
    return f"{PURPOSE_DISPATCH}.{worker_id}"


class DispatchSigner:
    """The scheduler's side: seal one dispatch message for one worker."""

    content_type = ENVELOPE

    def __init__(self, identity: Identity) -> None:
        if identity.role != "scheduler":
            raise ValueError(f"dispatches are signed with a scheduler key, not a {identity.role} key")
        self.identity = identity
        self.pair_keys = PairKeys(identity)

    def seal(self, worker_id: str, payload: bytes, worker_key: bytes | None = None) -> bytes:
        """Tag the payload for ``worker_key`` (the worker's public key) when known, else sign it."""
        purpose = dispatch_purpose(worker_id)
        if worker_key is not None:
            try:
                return seal_pairwise(self.pair_keys, worker_key, payload, purpose)
            except ValueError:  # not a usable key (cannot come from a verified heartbeat): sign instead
                pass
        return seal(self.identity, payload, purpose)


#: How far before a worker's start a dispatch may be sealed and still run: the schedulers' clocks may
#: run a little behind the worker's. A dispatch sealed for the earlier run that long before the restart
#: never ran there (that run had died), so running it once now is not a second run.
NOT_BEFORE_MARGIN_S = 1.0


class DispatchGate:
    """The worker's side: the payload of a dispatch signed by a trusted scheduler, for this worker."""

    def __init__(
        self, verifier: Verifier, worker_id: str, *, rejection_log: RejectionLog | None = None
    ) -> None:
        if verifier.role != "scheduler":
            raise ValueError("a dispatch gate verifies scheduler keys")
        self.verifier = verifier
        self.purpose = dispatch_purpose(worker_id)
        self.log = rejection_log or RejectionLog()
        #: Dispatches sealed before this (wall time) are refused as ``stale``: the worker sets its own
        #: start, so a dispatch captured before a restart cannot run again on the new process, whose
        #: nonce cache starts empty (the scheduler re-places what the earlier run held anyway).
        self.not_before = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, identity: Identity) -> DispatchGate:
        """The gate of the worker ``identity``: it admits signed and pairwise-tagged dispatches."""
        from tether.security import verifier_for

        verifier = verifier_for(settings, "scheduler")
        verifier.pair_keys = PairKeys(identity)
        return cls(verifier, identity.node_id)

    def open(self, data: bytes) -> bytes:
        """The verified payload; EnvelopeRejected (counted, logged once per offender a minute) otherwise."""
        try:
            env = self.verifier.verify(data, purpose=self.purpose)
            if env.timestamp < self.not_before:
                raise self.verifier.reject(
                    "stale", "sealed before this worker process started (a replay across a restart)",
                    env.public_key,
                )
            return env.payload
        except EnvelopeRejected as err:
            self.log.note(encode_public_key(err.signer) if err.signer else "dispatch", err)
            raise

    async def start(self, js: JetStreamContext, settings: Settings) -> None:
        from tether.security import start_trust

        await start_trust(self.verifier.trust, js, settings)

    async def stop(self) -> None:
        await self.verifier.trust.stop()
