"""Node identity: ids, key files, encodings."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from tether.identity import (
    ROLES,
    Identity,
    decode_public_key,
    encode_public_key,
    load,
    load_or_create,
    node_id_matches,
    pub_path,
    role_of_node_id,
    worker_id_for,
)


def test_node_id_shape_and_derivation() -> None:
    for role in ROLES:
        ident = Identity.generate(role)
        assert re.fullmatch(r"[a-z0-9-]+", ident.node_id)
        expected = f"{role[0]}-{hashlib.sha256(ident.public_key).hexdigest()[:16]}"
        assert ident.node_id == expected == worker_id_for(ident.public_key, role)
        assert role_of_node_id(ident.node_id) == role
        assert node_id_matches(ident.node_id, ident.public_key)
    other = Identity.generate("worker")
    assert not node_id_matches(other.node_id, Identity.generate("worker").public_key)
    assert not node_id_matches("not-an-id", other.public_key)


def test_unknown_role_rejected() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        Identity.generate("admin")


def test_public_key_encoding_roundtrip() -> None:
    ident = Identity.generate("worker")
    b64 = ident.public_key_b64
    assert len(b64) == 43 and "=" not in b64
    assert encode_public_key(ident.public_key) == b64
    assert decode_public_key(b64) == ident.public_key
    assert decode_public_key(ident.public_key.hex()) == ident.public_key
    assert decode_public_key(b64 + "=") == ident.public_key
    with pytest.raises(ValueError):
        decode_public_key("too-short")
    with pytest.raises(ValueError):
        decode_public_key("!" * 43)


def test_repr_does_not_leak_secret() -> None:
    ident = Identity.generate("worker")
    assert bytes(ident.signing_key).hex() not in repr(ident)
    assert "signing_key" not in repr(ident)


def test_save_mode_0600_and_pub_file(tmp_path: Path) -> None:
    ident = Identity.generate("worker")
    path = tmp_path / "keys" / "worker.key"
    ident.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = pub_path(path)
    assert pub.name == "worker.key.pub"
    line = pub.read_text()
    assert line.split()[0] == ident.public_key_b64
    assert ident.node_id in line
    assert bytes(ident.signing_key).hex() not in line


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "worker.key"
    first = Identity.generate("worker")
    first.save(path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        Identity.generate("worker").save(path)
    assert load(path).public_key == first.public_key


def test_save_force_replaces_and_keeps_0600(tmp_path: Path) -> None:
    path = tmp_path / "worker.key"
    Identity.generate("worker").save(path)
    os.chmod(path, 0o644)
    second = Identity.generate("worker")
    second.save(path, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path).public_key == second.public_key
    assert pub_path(path).read_text().split()[0] == second.public_key_b64
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_node_id_stable_across_save_load(tmp_path: Path) -> None:
    ident = Identity.generate("scheduler")
    path = tmp_path / "s.key"
    ident.save(path)
    again = Identity.load(path)
    assert again.node_id == ident.node_id
    assert again.role == "scheduler"
    assert again.public_key == ident.public_key
    assert again.sign(b"m") == ident.sign(b"m")  # Ed25519 is deterministic


def test_load_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("not json\n")
    os.chmod(path, 0o600)
    with pytest.raises(ValueError, match="not a tether key file"):
        load(path)
    path.write_text('{"version": 1, "role": "worker", "seed": "c2hvcnQ"}\n')
    with pytest.raises(ValueError, match="not a tether key file"):
        load(path)


def test_load_refuses_a_key_others_may_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.errors import KeyFileInvalid

    path = tmp_path / "w.key"
    ident = Identity.generate("worker")
    ident.save(path)
    for mode in (0o640, 0o604, 0o620, 0o644):
        os.chmod(path, mode)
        with pytest.raises(KeyFileInvalid, match=f"has mode {mode:o}.*chmod 600"):
            load(path)
    monkeypatch.setenv("TETHER_KEY_FILE_MODE", "warn")  # the documented way out (mounted secrets)
    assert load(path).public_key == ident.public_key
    monkeypatch.delenv("TETHER_KEY_FILE_MODE")
    os.chmod(path, 0o400)
    assert load(path).public_key == ident.public_key


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "gw.key"
    first = load_or_create(path, "gateway")
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_or_create(path, "gateway")
    assert second.node_id == first.node_id
    with pytest.raises(ValueError, match="belongs to a gateway"):
        load_or_create(path, "worker")
