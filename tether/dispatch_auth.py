"""Signed assignments: the scheduler seals each dispatch message, the worker admits only trusted ones.

One Ed25519 signature per dispatch *message* (a ``DispatchBatch`` may carry many
jobs), so signing stays off the per-job cost. The envelope's purpose is
``dispatch.<worker id>``: a batch sealed for one worker is refused by every
other (``wrong_purpose``), and a replay to the same worker is refused by its
nonce cache (``replayed``). Workers trust scheduler keys from the allowlist
(role ``scheduler``), cached after the first verification.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from tether.envelope import PURPOSE_DISPATCH, EnvelopeRejected, Verifier, seal
from tether.identity import Identity, encode_public_key
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

    def seal(self, worker_id: str, payload: bytes) -> bytes:
        return seal(self.identity, payload, dispatch_purpose(worker_id))


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
    def from_settings(cls, settings: Settings, worker_id: str) -> DispatchGate:
        from tether.security import verifier_for

        return cls(verifier_for(settings, "scheduler"), worker_id)

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
