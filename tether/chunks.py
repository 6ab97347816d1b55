"""Token chunks (``tether.results.<job>.chunks``, core NATS) back in order, and what they missed."""

from __future__ import annotations

from typing import Any


class Reorder:
    """Releases chunks in ``seq`` order from 0; pure, so it is unit-tested on its own."""

    def __init__(self) -> None:
        self.next_seq = 0
        self._held: dict[int, str] = {}
        self.released_text: list[str] = []

    def push(self, seq: int, text: str) -> list[tuple[int, str]]:
        if seq < self.next_seq or seq in self._held:
            return []  # a repeat
        self._held[seq] = text
        out = []
        while self.next_seq in self._held:
            piece = self._held.pop(self.next_seq)
            out.append((self.next_seq, piece))
            self.released_text.append(piece)
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
