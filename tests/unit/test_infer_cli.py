"""``tether infer --stream``: what is printed once the final result is in."""

from __future__ import annotations

from tether.infer_cli import stream_ending


def test_a_result_that_continues_the_stream_adds_nothing() -> None:
    assert stream_ending("The cat sat", "The cat sat on the mat") == ""
    assert stream_ending("", "") == ""


def test_a_result_that_is_not_text_is_printed_whole() -> None:
    assert stream_ending("", [[0.1, 0.2]]) == "[[0.1, 0.2]]"  # embeddings stream no chunks


def test_a_retry_that_wrote_other_text_replaces_what_was_shown() -> None:
    out = stream_ending("The cat sat on", "The cat ran away")
    assert "superseded by a retry" in out and out.endswith("\nThe cat ran away")
