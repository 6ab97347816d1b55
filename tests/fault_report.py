"""What a fault test's batch came to: counts per outcome, and every way a job can go wrong."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fault_load import Batch

_ROW_STATUS = {"completed": "COMPLETED", "failed": "FAILED", "dead_lettered": "DEAD_LETTERED"}


@dataclass(slots=True, kw_only=True)
class Report:
    submitted: int
    accepted: int
    elapsed_s: float
    outcome: dict[str, str] = field(default_factory=dict)  # job id -> final status (first stored result)
    lost: list[str] = field(default_factory=list)  # accepted, no final result in RESULTS
    not_accepted: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # job id -> results stored in RESULTS
    core_duplicates: dict[str, int] = field(default_factory=dict)  # job id -> results a core subscriber got
    wrong_output: list[str] = field(default_factory=list)
    store_mismatch: dict[str, str] = field(default_factory=dict)  # job id -> what is wrong with its row
    reply_mismatch: dict[str, str] = field(default_factory=dict)  # infer: job id -> what is wrong
    attempts: Counter[int] = field(default_factory=Counter)  # attempts of the final result -> jobs
    publish_retries: int = 0
    request_errors: int = 0
    done_without_client: int = 0
    faults: list[tuple[str, int, int]] = field(default_factory=list)

    @classmethod
    def build(cls, batch: Batch, elapsed_s: float, rows: dict[str, dict[str, Any]]) -> Report:
        by_input = {j.job_id: j.input for j in batch.jobs}
        r = cls(
            submitted=len(batch.jobs),
            accepted=len(batch.accepted),
            elapsed_s=elapsed_s,
            publish_retries=batch.publish_retries,
            request_errors=sum(len(v) for v in batch.request_errors.values()),
            done_without_client=len(batch.done_without_client),
            faults=list(batch.faults),
        )
        for job_id, expected in by_input.items():
            if job_id not in batch.accepted:
                r.not_accepted.append(job_id)
                continue
            stored = batch.ledger.stored.get(job_id, [])
            if len(stored) > 1:
                r.duplicates[job_id] = len(stored)
            if batch.ledger.core[job_id] > 1:
                r.core_duplicates[job_id] = batch.ledger.core[job_id]
            if not stored:
                r.lost.append(job_id)
                continue
            result = stored[0][1]
            status = str(result.status)
            r.outcome[job_id] = status
            r.attempts[result.attempts] += 1
            if status == "completed" and result.result != expected:
                r.wrong_output.append(job_id)
            row = rows.get(job_id)
            if row is None:
                r.store_mismatch[job_id] = "no row"
            elif row["status"] != _ROW_STATUS[status]:
                r.store_mismatch[job_id] = f"row {row['status']}, result {status}"
            for reply in batch.replies.get(job_id, []):
                if reply.get("jobId") != job_id or reply.get("result") != expected:
                    r.reply_mismatch[job_id] = f"reply {reply!r}"
            if batch.via == "infer" and len(batch.replies.get(job_id, [])) != 1:
                r.reply_mismatch[job_id] = f"{len(batch.replies.get(job_id, []))} replies"
        return r

    def count(self, status: str) -> int:
        return sum(1 for s in self.outcome.values() if s == status)

    def summary(self) -> str:
        faults = "; ".join(
            f"{what} with {acc - fin} in flight ({fin} done)" for what, acc, fin in self.faults
        )
        return (
            f"accepted={self.accepted}/{self.submitted} completed={self.count('completed')} "
            f"failed={self.count('failed')} dead_lettered={self.count('dead_lettered')} lost={len(self.lost)} "
            f"duplicates={len(self.duplicates)} core_duplicates={len(self.core_duplicates)} "
            f"wrong_output={len(self.wrong_output)} store_mismatch={len(self.store_mismatch)} "
            f"attempts={dict(sorted(self.attempts.items()))} publish_retries={self.publish_retries} "
            f"request_errors={self.request_errors} done_without_client={self.done_without_client} "
            f"elapsed={self.elapsed_s:.1f}s | fault: {faults or 'none'}"
        )

    def check(self, *, dead_lettered: Collection[str] = (), require_fault: bool = True) -> None:
        """Every accepted job has exactly one final result, as expected, with a matching store row."""
        assert not self.not_accepted, f"never accepted: {self.not_accepted[:10]}"
        assert not self.lost, f"{len(self.lost)} lost jobs: {self.lost[:10]}"
        assert not self.duplicates, (
            f"two results stored for one job: {dict(list(self.duplicates.items())[:10])}"
        )
        assert not self.core_duplicates, (
            f"a subscriber got two results for one job: {dict(list(self.core_duplicates.items())[:10])}"
        )
        assert not self.wrong_output, f"output is not the input: {self.wrong_output[:10]}"
        assert not self.reply_mismatch, f"bad replies: {dict(list(self.reply_mismatch.items())[:5])}"
        assert not self.store_mismatch, f"store rows disagree: {dict(list(self.store_mismatch.items())[:10])}"
        dead = {j for j, s in self.outcome.items() if s == "dead_lettered"}
        assert dead == set(dead_lettered), f"dead-lettered {sorted(dead)}, expected {sorted(dead_lettered)}"
        others = {j: s for j, s in self.outcome.items() if s != "completed" and j not in dead}
        assert not others, f"jobs that did not complete: {dict(list(others.items())[:10])}"
        if not require_fault:
            return
        assert self.faults, "no fault was injected"
        assert all(acc > fin for _, acc, fin in self.faults), f"no job in flight at the fault: {self.faults}"
