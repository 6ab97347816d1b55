"""TextStream against a byte-level decoder: characters split over tokens, resumed mid-character."""

from __future__ import annotations

from services.worker.engine.textstream import TextStream


class ByteTokens:
    """One token per UTF-8 byte, decoded as byte-level BPE tokenizers do (half a character: U+FFFD)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


TEXT = "Cats 🐦 and わら"


def _stream(tok: ByteTokens, ids: list[int], start: int, s: TextStream) -> str:
    out = "".join(s.push(ids[:n]) for n in range(start + 1, len(ids) + 1))
    return out + s.finish()


def test_a_character_split_over_tokens_comes_out_whole() -> None:
    tok = ByteTokens()
    ids = tok.encode(TEXT)
    s = TextStream(tok, [])
    assert _stream(tok, ids, 0, s) == TEXT and s.text == TEXT


def test_resuming_after_any_token_gives_the_same_text_without_a_replacement_character() -> None:
    tok = ByteTokens()
    ids = tok.encode(TEXT)
    for k in range(1, len(ids)):
        first = TextStream(tok, [])
        delivered = "".join(first.push(ids[:n]) for n in range(1, k + 1))
        resumed = TextStream(tok, [], prefix_ids=ids[:k], delivered_text=delivered)
        rest = _stream(tok, ids, k, resumed)
        assert delivered + rest == TEXT, (k, delivered, rest)
        assert resumed.text == TEXT and "\ufffd" not in resumed.text, (k, resumed.text)
