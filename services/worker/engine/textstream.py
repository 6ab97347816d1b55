"""Token ids in, text out, a piece at a time, never past a stop string.

Decoding one token alone loses what depends on its neighbours (a leading space that
SentencePiece writes as part of the token, a UTF-8 character split over two byte
tokens), so each new piece is the difference between two decodes of a short window:
the window up to the last emitted token and the same window plus the new tokens. A
piece ending in U+FFFD (half a character) waits for the next token.

Stop strings: text that could still become a stop string (a suffix that is a prefix
of one) is held back; once a stop string appears, the text ends just before it.
"""

from __future__ import annotations

from typing import Any

_INCOMPLETE = "\ufffd"
_WINDOW = 6  # tokens of left context decoded with each new token


class TextStream:
    """The text generated so far, and how much of it has been released to the client."""

    def __init__(
        self,
        tokenizer: Any,
        stops: list[str],
        *,
        prefix_ids: list[int] | None = None,
        delivered_text: str = "",
    ) -> None:
        self._tokenizer = tokenizer
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        prefix = list(prefix_ids or [])
        # A resumed stream starts from what the previous attempt generated; the client has
        # seen ``delivered_text`` of it, the rest (held back there) is released from here.
        # A prefix that ends inside a character (its last tokens are part of one) is read
        # only up to that character: the tokens after it complete it at the next push.
        read = len(prefix)
        text = self._decode(prefix) if prefix else ""
        while text.endswith(_INCOMPLETE) and len(prefix) - read < 4 and read > 0:
            read -= 1
            text = self._decode(prefix[:read])
        self.text = text
        self.released = min(len(delivered_text), len(self.text))
        self._read = read  # ids[:_read] are in ``text``
        self._window = max(0, self._read - _WINDOW)
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, ids: list[int]) -> str:
        """``ids`` is every generated id so far; returns newly releasable text ('' if none)."""
        if self.stopped:
            return ""
        before = self._decode(ids[self._window : self._read])
        after = self._decode(ids[self._window :])
        if after.endswith(_INCOMPLETE) and len(ids) - self._read < 4:
            return ""  # half a character: wait (a few tokens at most) for the rest
        keep = len(before) if after.startswith(before) else _common_prefix(before, after)
        self._window, self._read = max(self._read, len(ids) - _WINDOW), len(ids)
        self.text += after[keep:]
        return self._release()

    def _release(self) -> str:
        end = len(self.text)
        if self._stops:
            start = self.released
            hits = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                end = len(self.text)
            else:
                end -= self._held_back()
        out = self.text[self.released : end] if end > self.released else ""
        self.released = max(self.released, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of ``text`` that starts some stop string."""
        for n in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0

    def finish(self) -> str:
        """Release everything left (the generation is over)."""
        out = self.text[self.released :]
        self.released = len(self.text)
        return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
