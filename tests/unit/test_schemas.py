"""The published JSON Schemas, the wire codec and the subject map."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgpack
import pytest
from jsonschema import Draft202012Validator

from schemas import InferRequest, JobSubmission, generate
from schemas.messages import PUBLIC_MESSAGES
from tether import codec, subjects
from tether.errors import InvalidRequest

SCHEMA_FILES = sorted(generate.JSON_DIR.glob("*.json"))
EXAMPLE = {"tenantId": "demo", "modelId": "echo", "version": "1", "input": "hello"}


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((generate.JSON_DIR / f"{name}.json").read_text()))


# ---------------------------------------------------------------------- JSON Schema files


def test_schema_files_are_not_stale() -> None:
    assert generate.stale() == [], "run: python -m schemas.generate"


def test_check_mode_exits_zero_when_fresh() -> None:
    assert generate.main(["--check"]) == 0


def test_every_public_message_has_a_file_and_no_file_is_orphaned() -> None:
    assert SCHEMA_FILES, f"no schema files in {generate.JSON_DIR}"
    on_disk = {p.stem for p in SCHEMA_FILES}
    assert on_disk == set(PUBLIC_MESSAGES)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_each_file_is_a_valid_2020_12_schema(path: Path) -> None:
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://tether.dev/schemas/{path.name}"


def test_example_infer_request_validates() -> None:
    validator = _validator("infer_request")
    validator.validate(EXAMPLE)
    validator.validate({**EXAMPLE, "input": ["one", "two"], "params": {"maxNewTokens": 8, "seed": 1}})
    validator.validate({**EXAMPLE, "input": [{"role": "user", "content": "hi"}]})
    # The pydantic model agrees with the published schema.
    PUBLIC_MESSAGES["infer_request"].model_validate(EXAMPLE)


@pytest.mark.parametrize(
    "bad",
    [
        {**EXAMPLE, "tenantId": 1},
        {k: v for k, v in EXAMPLE.items() if k != "tenantId"},
        {**EXAMPLE, "input": ""},
        {**EXAMPLE, "input": []},
        {**EXAMPLE, "input": 42},
        {**EXAMPLE, "tenant_id": "demo"},  # unknown (snake_case) field
        {**EXAMPLE, "params": {"maxNewTokens": 0}},
        {**EXAMPLE, "params": {"temprature": 0.5}},
    ],
    ids=[
        "tenant-int",
        "tenant-missing",
        "input-empty",
        "input-empty-list",
        "input-int",
        "extra",
        "zero",
        "typo",
    ],
)
def test_bad_infer_requests_do_not_validate(bad: dict) -> None:
    assert not _validator("infer_request").is_valid(bad)


# ---------------------------------------------------------------------- codec


@pytest.mark.parametrize("headers", [None, {}, {"correlation-id": "x"}, {codec.CONTENT_TYPE: ""}])
def test_json_is_the_default(headers: dict | None) -> None:
    assert codec.content_type_of(headers) == codec.JSON


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/json", codec.JSON),
        ("application/json; charset=utf-8", codec.JSON),
        ("Application/JSON", codec.JSON),
        ("application/msgpack", codec.MSGPACK),
        ("application/x-msgpack", codec.MSGPACK),
        ("application/vnd.msgpack", codec.MSGPACK),
        (" msgpack ", codec.MSGPACK),
    ],
)
def test_content_type_aliases(value: str, expected: str) -> None:
    assert codec.content_type_of({codec.CONTENT_TYPE: value}) == expected


@pytest.mark.parametrize("name", ["content-type", "CONTENT-TYPE", "Content-type", "content-Type"])
def test_header_name_in_any_case_is_honoured(name: str) -> None:
    assert codec.content_type_of({name: "application/msgpack", "correlation-id": "c"}) == codec.MSGPACK


@pytest.mark.parametrize("value", ["text/xml", "application/cbor", "application/protobuf"])
def test_unknown_content_type_is_invalid_request(value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        codec.content_type_of({codec.CONTENT_TYPE: value})
    assert info.value.field == "Content-Type"
    assert value in info.value.message


def test_json_round_trip_and_no_header_decodes_json() -> None:
    obj = {"input": "héllo ✓", "params": {"maxNewTokens": 8, "temperature": 0.5}, "n": None}
    data = codec.encode(obj)
    assert json.loads(data) == obj
    assert "héllo ✓".encode() in data  # UTF-8, not \u escapes
    assert codec.decode(data) == obj
    assert codec.decode(data, codec.content_type_of(None)) == obj


def test_msgpack_round_trip() -> None:
    obj = {
        "tenantId": "demo",
        "input": ["a", "ü", "日本"],
        "params": {"seed": -3, "temperature": 0.25, "chat": False, "stop": None},
        "nested": {"vec": [0.1, -2.5, 3.0]},
        "blob": b"\x00\x01\xff",
    }
    data = codec.encode(obj, codec.MSGPACK)
    assert msgpack.unpackb(data, raw=False) == obj
    assert codec.decode(data, codec.MSGPACK) == obj
    assert codec.decode(msgpack.packb(EXAMPLE), codec.MSGPACK) == EXAMPLE


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"a": 1', b"\xff\xfe\xfa", b"[1, 2,]"])
def test_malformed_json_is_invalid_request(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        codec.decode(data, codec.JSON)
    assert info.value.field == "body" and "JSON" in info.value.message


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"input": "\\ud800"}', "surrogate"),
        (b'{"input": "a\\uDFFFb"}', "surrogate"),
        (b'{"e\\udbff": 1}', "surrogate"),
        (b'{"input": [NaN]}', "NaN is not a JSON value"),
        (b'{"params": {"timeoutS": Infinity}}', "Infinity is not a JSON value"),
        (b'{"x": -Infinity}', "-Infinity is not a JSON value"),
    ],
    ids=["lone-high", "lone-low", "in-a-key", "nan", "infinity", "minus-infinity"],
)
def test_text_that_is_not_unicode_and_non_json_numbers_are_invalid_request(data: bytes, why: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        codec.decode(data, codec.JSON)
    assert info.value.code == "invalid_request" and info.value.field == "body"
    assert why in info.value.message


def test_surrogate_pairs_and_escaped_backslashes_still_decode() -> None:
    assert codec.decode(b'{"input": "\\ud83d\\ude00"}') == {"input": "\U0001f600"}
    assert codec.decode(b'{"input": "\\\\ud800"}') == {"input": "\\ud800"}  # a backslash, then text
    assert codec.decode(b'{"n": "NaN", "m": 1e308}') == {"n": "NaN", "m": 1e308}


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # array of two with one element
        b"\x01\x02",  # trailing data
        b"",
        msgpack.packb({1: "int keys are refused"}),
    ],
    ids=["reserved", "truncated", "extra", "empty", "int-key"],
)
def test_malformed_msgpack_is_invalid_request(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        codec.decode(data, codec.MSGPACK)
    assert info.value.field == "body" and "msgpack" in info.value.message


# ---------------------------------------------------------------------- subjects


@pytest.mark.parametrize(
    "value",
    [
        "echo",
        "Qwen/Qwen2.5-0.5B",
        "model:v1.2",
        "with space\tand tab",
        "wild*card>",
        "tilde~already~2E",
        "ünïcødé",
        "日本語モデル",
        "emoji 🚀",
        "a.b/c:d e",
        "under_score-dash",
    ],
)
def test_encode_decode_round_trip(value: str) -> None:
    token = subjects.encode_token(value)
    assert re.fullmatch(r"[A-Za-z0-9_~-]+", token), token
    assert subjects.decode_token(token) == value


def test_encoding_examples() -> None:
    assert subjects.encode_token("echo") == "echo"
    assert subjects.encode_token("Qwen/Qwen2.5-0.5B") == "Qwen~2FQwen2~2E5-0~2E5B"
    assert subjects.encode_token("a:b c") == "a~3Ab~20c"
    assert subjects.encode_token("~") == "~7E"
    assert subjects.encode_token("é") == "~C3~A9"


def test_encoding_is_injective_on_lookalikes() -> None:
    values = ["a.b", "a~2Eb", "a_b", "a-b", "a b", "a/b"]
    assert len({subjects.encode_token(v) for v in values}) == len(values)


def test_empty_token_cannot_be_encoded() -> None:
    with pytest.raises(InvalidRequest):
        subjects.encode_token("")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",  # a subject separator
        "a b",
        "a*",
        "a>",
        "a/b",
        "~",  # escape with no digits
        "~2",  # escape with one digit
        "~2e",  # lower-case hex is not our encoding
        "~ZZ",
        "abc~",
        "~FF",  # not UTF-8
        "~C3",  # truncated UTF-8 sequence
        "é",
    ],
)
def test_invalid_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidRequest):
        subjects.decode_token(token)


def test_job_subject_round_trip() -> None:
    subject = subjects.job_subject("acme corp", "Qwen/Qwen2.5-0.5B", "2.1")
    assert subject == "tether.jobs.acme~20corp.Qwen~2FQwen2~2E5-0~2E5B.2~2E1"
    assert subjects.parse_job_subject(subject) == ("acme corp", "Qwen/Qwen2.5-0.5B", "2.1")
    assert subjects.parse_job_subject("tether.jobs.demo.echo.1") == ("demo", "echo", "1")


@pytest.mark.parametrize(
    "subject",
    [
        "tether.jobs.demo.echo",  # too few tokens
        "tether.jobs.demo.echo.1.extra",  # too many
        "tether.results.demo.echo.1",
        "other.jobs.demo.echo.1",
        "tether.jobs.demo.*.1",
        "tether.jobs.demo.echo.>",
        "tether.jobs.demo.bad~zz.1",
        "tether.jobs..echo.1",
    ],
)
def test_bad_job_subjects_are_rejected(subject: str) -> None:
    with pytest.raises(InvalidRequest):
        subjects.parse_job_subject(subject)


def test_result_subject_round_trip() -> None:
    job_id = "j-01HX.weird/id"
    subject = subjects.result_subject(job_id)
    assert subject.startswith("tether.results.") and subject.count(".") == 2
    assert subjects.job_id_from_result_subject(subject) == job_id
    assert subjects.chunks_subject(job_id) == f"{subject}.chunks"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_from_msgpack_are_refused_in_every_message(bad: float) -> None:
    """JSON cannot carry NaN or infinity (the codec refuses them there); msgpack can, so the models refuse
    them too: nothing non-finite reaches a store row, a log line or a JSON reply."""
    from schemas import JobSubmission, ResultMessage, parse
    from tether.errors import InvalidRequest

    body = codec.decode(codec.encode({"jobId": "j-1", "input": "hi", "submittedAt": bad}, codec.MSGPACK), codec.MSGPACK)
    with pytest.raises(InvalidRequest, match="submittedAt"):
        parse(JobSubmission, body)
    with pytest.raises(ValueError):
        ResultMessage.model_validate(
            {"jobId": "j", "status": "completed", "tenantId": "t", "modelId": "m", "version": "1", "finishedAt": bad}
        )


@pytest.mark.parametrize(
    "body",
    [
        {"tenantId": "t", "modelId": "m", "input": "hello"},
        {"tenantId": "t", "modelId": "m", "version": "2", "input": "x", "idempotencyKey": "k-1"},
        {
            "tenantId": "t",
            "modelId": "m",
            "input": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "params": {"maxNewTokens": 5, "temperature": 0.5, "stop": ["\n"], "timeoutS": 3, "minTier": 2},
        },
    ],
)
def test_a_submission_built_from_a_request_is_what_validating_it_again_gives(body: dict) -> None:
    req = InferRequest.model_validate(body)
    again = JobSubmission(
        job_id="j-1",
        input=req.input,
        params=req.params,
        idempotency_key=req.idempotency_key,
        submitted_at=1700000000.25,
    ).wire()
    assert JobSubmission.wire_of(req, "j-1", 1700000000.25) == again
