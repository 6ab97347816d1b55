"""The JOBS messages a scheduler holds while their jobs run.

A job's message stays unacknowledged until the job has its final result, so a
scheduler that dies simply lets JetStream redeliver it. While held, every
message is kept alive (``in_progress``) and the job's lease in the store is
renewed. A second delivery of a job already held here (a bare publish repeated
without ``Nats-Msg-Id``, or a redelivery while it runs) is kept as a twin and
settled (acked or naked) together with the first, so one scheduler never runs a
job twice at once. On close everything still held is handed back at once: naked,
and its lease released so another scheduler need not wait it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.aio.msg import Msg

from tether.store import JobStore


class HeldJobs:
    def __init__(self, store: JobStore, scheduler_id: str, lease_s: float) -> None:
        self._store = store
        self._scheduler_id = scheduler_id
        self._lease_s = lease_s
        self._held: dict[str, Msg] = {}
        self._twins: dict[str, list[Msg]] = {}
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._held

    def take(self, job_id: str, msg: Msg) -> bool:
        """Hold ``msg``; False when ``job_id`` is already held here (then ``msg`` waits on its outcome)."""
        if job_id in self._held:
            self._twins.setdefault(job_id, []).append(msg)
            self.duplicates += 1
            return False
        self._held[job_id] = msg
        return True

    def _messages(self, job_id: str) -> list[Msg]:
        first = self._held.get(job_id)
        return [*([first] if first is not None else []), *self._twins.get(job_id, ())]

    async def ack(self, job_id: str) -> None:
        for msg in self._messages(job_id):
            await msg.ack()

    async def nak(self, job_id: str, delay: float) -> None:
        for msg in self._messages(job_id):
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)

    def forget(self, job_id: str) -> None:
        self._held.pop(job_id, None)
        self._twins.pop(job_id, None)

    async def keep_alive(self) -> None:
        """Forever: tell JetStream and the store, every third of the lease, that these jobs are still ours."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            job_ids = list(self._held)
            for msg in [m for jid in job_ids for m in self._messages(jid)]:
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            with contextlib.suppress(Exception):
                await self._store.renew_leases(job_ids, self._scheduler_id, time.time() + self._lease_s)

    def snapshot(self) -> tuple[list[str], list[Msg]]:
        """The held job ids and every held message (first deliveries and twins)."""
        return list(self._held), [m for jid in self._held for m in self._messages(jid)]

    async def hand_back(self, job_ids: list[str], messages: list[Msg]) -> None:
        """Nak ``messages`` and release the leases of ``job_ids`` (a snapshot taken before handlers stopped)."""
        for msg in messages:
            with contextlib.suppress(Exception):
                await msg.nak()
        with contextlib.suppress(Exception):
            await self._store.renew_leases(job_ids, self._scheduler_id, time.time())
        self._held.clear()
        self._twins.clear()
