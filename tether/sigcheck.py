"""Ed25519 signature checks in bulk, in helper processes (``tether.presence_ingest``).

One verification costs ~70-100 us of CPU, and a Python thread cannot run them
in parallel with a busy event loop (libsodium drops the GIL, but every check
has to take it back). So a receiver under load hands batches to child
processes started as ``python -m tether.sigcheck``, which import only PyNaCl
and msgpack.

Protocol on the child's stdin / stdout: frames of a 4-byte big-endian length
and a msgpack body. Request: a list of ``[public_key, signed_bytes, signature]``.
Answer: a list of bools, one per item, in order. Requests are answered in the
order they were sent. The child exits at end of input, so it never outlives
its parent (even a ``kill -9``ed one).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

_LEN = struct.Struct(">I")
_keys: dict[bytes, VerifyKey] = {}


def check_batch(items: Sequence[Sequence[bytes]]) -> list[bool]:
    """One bool per ``(public_key, signed_bytes, signature)``: does the signature verify?"""
    out: list[bool] = []
    for pk, signed, sig in items:
        key = _keys.get(pk)
        if key is None:
            if len(_keys) >= 100_000:
                _keys.clear()
            key = _keys[pk] = VerifyKey(pk)
        try:
            key.verify(signed, sig)
            out.append(True)
        except BadSignatureError:
            out.append(False)
    return out


class SigChecker:
    """One child process checking batches; ``check`` awaits the answer to one batch."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._waiting: deque[asyncio.Future[list[bool]]] = deque()
        self._reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._reader is not None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *helper_command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="sigcheck-reader")

    async def check(self, items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
        if not self.alive:
            raise RuntimeError("signature checker is not running")
        assert self._proc is not None and self._proc.stdin is not None
        body = msgpack.packb(items, use_bin_type=True)
        fut: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._proc.stdin.write(_LEN.pack(len(body)) + body)
        await self._proc.stdin.drain()
        return await fut

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        error: BaseException = RuntimeError("signature checker exited")
        try:
            while True:
                (n,) = _LEN.unpack(await out.readexactly(_LEN.size))
                answer = msgpack.unpackb(await out.readexactly(n))
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, IndexError) as e:
            error = RuntimeError(f"signature checker exited: {type(e).__name__}")
        finally:
            self._reader = None
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(error)

    def kill(self) -> None:
        """End a child that stopped answering (its reader then fails what still waits)."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def helper_command() -> list[str]:
    """The helper runs this very copy of ``tether``, never one found in the current directory.

    ``python -m`` would put the working directory first on ``sys.path``: a ``tether`` package
    there would then decide which signatures are valid. ``-P`` leaves it out, and the path of
    the package this process imported is put first instead.
    """
    root = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; sys.path.insert(0, {root!r}); from tether.sigcheck import main; main()"
    return [sys.executable, "-P", "-c", code]


def main() -> None:  # pragma: no cover - runs in the child process
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        (n,) = _LEN.unpack(head)
        answer = msgpack.packb(check_batch(msgpack.unpackb(stdin.read(n))))
        stdout.write(_LEN.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    main()
