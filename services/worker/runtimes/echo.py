"""EchoRuntime: returns its input unchanged (pipeline tests and benchmarks).

Test and benchmark aids, set by model-spec options (``echo;delay_ms=50;poison=BOOM``):

``delay_ms=N``
    sleep N ms (asynchronously) before answering, so jobs stay in flight;
``load_ms=N``
    take N ms to load (blocking the load thread, as a large download would);
``fail=always``
    every run fails with a retryable ``worker_failed`` error (a broken worker);
``poison=MARKER``
    a run whose input contains MARKER crashes the runtime (an unexpected exception),
    every time, on every worker with the option.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, replace
from typing import Any

from tether import errors

from .base import RunRequest, RunResult, Task

#: Spec options this runtime understands (parsed by ``EchoFaults.with_option``).
ECHO_OPTIONS = ("delay_ms", "load_ms", "fail", "poison")
_FAIL_MODES = ("never", "always")
_MAX_DELAY_MS = 600_000


class PoisonCrash(RuntimeError):
    """What a poison input does to the echo runtime: an unexpected, non-Tether exception."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EchoFaults:
    """Deliberate slowness and failures for fault tests; the default is none."""

    delay_ms: int = 0
    load_ms: int = 0
    fail: str = "never"  # "never" | "always"
    poison: str | None = None  # runs whose input contains this crash

    def with_option(self, key: str, value: str, spec_text: str) -> EchoFaults:
        """This with ``key=value`` applied; InvalidRequest naming the spec when it does not parse."""
        if key in ("delay_ms", "load_ms"):
            try:
                ms = int(value)
            except ValueError:
                ms = -1
            if not 0 <= ms <= _MAX_DELAY_MS:
                raise _bad(f"{key} must be an integer from 0 to {_MAX_DELAY_MS}, not {value!r}", spec_text)
            return replace(self, **{key: ms})
        if key == "fail":
            if value not in _FAIL_MODES:
                raise _bad(f"fail must be one of {', '.join(_FAIL_MODES)}, not {value!r}", spec_text)
            return replace(self, fail=value)
        if key == "poison":
            return replace(self, poison=value)
        raise _bad(f"unknown echo option {key!r}; expected one of {', '.join(ECHO_OPTIONS)}", spec_text)

    def is_default(self) -> bool:
        return self == EchoFaults()


def _bad(message: str, spec_text: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{message} (model spec {spec_text!r})", field="model")


class EchoRuntime:
    """The cheapest possible runtime: no model, no thread hop, input back as output."""

    def __init__(
        self,
        model_id: str = "echo",
        version: str = "1",
        task: Task = Task.ECHO,
        *,
        faults: EchoFaults | None = None,
    ) -> None:
        self.model_id = model_id
        self.version = version
        self.task = task
        self.faults = faults or EchoFaults()

    def load(self) -> None:
        if self.faults.load_ms:
            time.sleep(self.faults.load_ms / 1000)

    async def run(self, request: RunRequest) -> RunResult:
        f = self.faults
        if f.delay_ms:
            await asyncio.sleep(f.delay_ms / 1000)
        if f.fail == "always":
            raise errors.WorkerFailed(
                f"{self.model_id}:{self.version} is configured to fail every run (fail=always)",
                job_id=request.job_id,
            )
        if f.poison is not None and f.poison in _text_of(request.input):
            raise PoisonCrash(f"{self.model_id}:{self.version} crashed on poison input {f.poison!r}")
        return RunResult(output=request.input, finish_reason="stop")

    def close(self) -> None:
        return None


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
