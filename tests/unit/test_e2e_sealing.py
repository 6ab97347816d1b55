"""Sealed inputs on the worker side: what cannot be opened or is not a valid input is a clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from nacl.public import PrivateKey, PublicKey, SealedBox

from schemas.messages import MAX_INPUTS
from tether.e2e import PREFIX, FleetBox, _b64, open_output, seal_input
from tether.errors import InvalidRequest, KeyFileInvalid


@pytest.fixture
def box(tmp_path: Path) -> FleetBox:
    return FleetBox.create(tmp_path / "fleet.box")


def _seal_raw(text: str, to: bytes) -> str:
    return PREFIX + _b64(SealedBox(PublicKey(to)).encrypt(text.encode()))


def test_round_trip(box: FleetBox) -> None:
    assert box.public_key is not None
    tenant = PrivateKey.generate()
    opened = box.open(seal_input(["a", "b"], box.public_key, tenant))
    assert opened.input == ["a", "b"]
    assert open_output(opened.seal_output("out"), tenant) == "out"


def test_deeply_nested_sealed_json_is_invalid_request_not_a_crash(box: FleetBox) -> None:
    assert box.public_key is not None
    deep = "[" * 100_000 + "]" * 100_000  # the fleet key is public: anyone can seal this
    with pytest.raises(InvalidRequest, match="could not be opened") as err:
        box.open(_seal_raw(deep, box.public_key))
    assert err.value.field == "input"


@pytest.mark.parametrize(
    "inner",
    [
        "",  # empty text
        [],  # empty list
        ["ok", ""],  # an empty item
        ["x"] * (MAX_INPUTS + 1),  # more items than a plain request may carry
        [{"role": "wizard", "content": "hi"}],  # not a chat role
        42,
        None,
    ],
    ids=["empty", "empty-list", "empty-item", "too-many", "bad-role", "number", "missing"],
)
def test_sealed_input_is_held_to_the_plain_input_rules(box: FleetBox, inner: object) -> None:
    assert box.public_key is not None
    reply = _b64(bytes(PrivateKey.generate().public_key))
    doc = {"replyKey": reply} if inner is None else {"input": inner, "replyKey": reply}
    with pytest.raises(InvalidRequest, match="sealed input must hold"):
        box.open(_seal_raw(json.dumps(doc), box.public_key))


def test_fleet_key_readable_by_others_is_refused(box: FleetBox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleet.box"
    os.chmod(path, 0o644)
    monkeypatch.delenv("TETHER_KEY_FILE_MODE", raising=False)
    with pytest.raises(KeyFileInvalid, match="mode 644"):
        FleetBox.load(path)
    monkeypatch.setenv("TETHER_KEY_FILE_MODE", "warn")
    assert FleetBox.load(path).key is not None


@pytest.mark.parametrize("content", ["", "{not json", '{"version": 1}', '{"box": "!!"}', '{"box": "AAAA"}'])
def test_corrupt_fleet_key_file_is_key_file_invalid(tmp_path: Path, content: str) -> None:
    path = tmp_path / "fleet.box"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileInvalid, match="not a fleet key file"):
        FleetBox.load(path)


def test_no_fleet_key_file_means_no_key(tmp_path: Path) -> None:
    assert FleetBox.load(tmp_path / "absent.box").key is None
