"""An error on the wire is bounded: a message or field quoting what was refused never makes it too large
to travel."""

from __future__ import annotations

from tether.errors import MAX_FIELD, MAX_MESSAGE, InvalidRequest, error_from_wire


def test_a_long_message_and_field_are_cut_saying_how_much() -> None:
    wire = InvalidRequest("x" * (MAX_MESSAGE + 10), field="f" * (MAX_FIELD + 5)).to_wire()
    assert wire["message"].endswith("... (10 more characters)") and len(wire["message"]) < MAX_MESSAGE + 40
    assert wire["field"].endswith("... (5 more characters)")
    assert error_from_wire(wire).code == "invalid_request"


def test_a_short_error_is_unchanged() -> None:
    assert InvalidRequest("bad", field="input").to_wire() == {
        "code": "invalid_request", "message": "bad", "retryable": False, "field": "input"
    }
