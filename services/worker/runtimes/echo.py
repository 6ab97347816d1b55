"""EchoRuntime: returns its input unchanged (pipeline tests and benchmarks)."""

from __future__ import annotations

from .base import RunRequest, RunResult, Task


class EchoRuntime:
    """The cheapest possible runtime: no model, no thread hop, input back as output."""

    def __init__(self, model_id: str = "echo", version: str = "1", task: Task = Task.ECHO) -> None:
        self.model_id = model_id
        self.version = version
        self.task = task

    def load(self) -> None:
        return None

    async def run(self, request: RunRequest) -> RunResult:
        return RunResult(output=request.input, finish_reason="stop")

    def close(self) -> None:
        return None
