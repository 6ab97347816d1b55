"""Token chunks (``tether.results.<job>.chunks``, core NATS) back in order, and what they missed."""

from __future__ import annotations

from typing import Any


class Reorder:
    """Releases chunks in ``seq`` order from 0; pure, so it is unit-tested on its own.

    A released chunk must also continue exactly where the released ones ended. A later
    attempt that resumed (the scheduler handed it the delivered prefix) continues the
    sequence, and its first chunk's token ``offset`` is the number of tokens released.
    One that restarted from the beginning instead (no prefix reached it) shows up with a
    sequence number already released, or at another offset: its text cannot be spliced
    onto what the client has token for token, so from then on nothing more is streamed
    and ``remainder`` delivers the rest of the final text. Chunks without token counts
    (``offset``/``tokens`` None) are ordered by ``seq`` alone.
    """

    def __init__(self) -> None:
        self.next_seq = 0
        self.next_offset: int | None = 0
        self.attempt = 0  # the latest attempt seen
        self.stopped = False  # a restarted attempt took over: the final result carries the rest
        self._held: dict[int, tuple[str, int | None, int | None, int]] = {}  # seq -> text, offset, tokens, attempt
        self.released_text: list[str] = []

    def push(
        self, seq: int, text: str, *, attempt: int = 1, offset: int | None = None, tokens: int | None = None
    ) -> list[tuple[int, str]]:
        if attempt < self.attempt:
            return []  # an abandoned attempt still running somewhere until its cancel lands: never spliced in
        newer = attempt > self.attempt
        self.attempt = attempt
        if newer:  # what an older attempt left waiting for a gap is not the newer attempt's text
            self._held = {k: v for k, v in self._held.items() if v[3] == attempt}
        if self.stopped:
            return []
        if seq < self.next_seq or seq in self._held:
            if newer and seq < self.next_seq:
                self.stopped = True  # a new attempt starting over: it repeats what the client has
            return []  # otherwise a repeat
        self._held[seq] = (text, offset, tokens, attempt)
        out = []
        while self.next_seq in self._held:
            piece, at, n, _ = self._held[self.next_seq]
            if at is not None and self.next_offset is not None and at != self.next_offset:
                self.stopped = True  # does not continue the released tokens
                self._held.clear()
                break
            del self._held[self.next_seq]
            out.append((self.next_seq, piece))
            self.released_text.append(piece)
            self.next_offset = at + n if at is not None and n is not None else None
            self.next_seq += 1
        return out

    def remainder(self, final: Any) -> str:
        """The part of the final text the released chunks did not deliver ('' when none is missing)."""
        if not isinstance(final, str):
            return ""
        sent = "".join(self.released_text)
        if final.startswith(sent):
            return final[len(sent) :]
        return "" if sent else final

    def diverged(self, final: Any) -> bool:
        """Whether the released chunks are not a prefix of the final text.

        It happens when an attempt that could not resume (it restarted from the beginning, with
        sampling) wrote other text than the streamed part: no chunk can take back what the client
        has, so a client that reads only chunks must be told; the final result has the whole text.
        """
        return isinstance(final, str) and not final.startswith("".join(self.released_text))
