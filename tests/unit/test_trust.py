"""The trust store: allowlist file format, roles, the denylist, reloading without a restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether.envelope import EnvelopeRejected, Verifier, seal
from tether.identity import Identity
from tether.trust import (
    ANY_ROLE,
    TrustStore,
    allowlist_line,
    append_allowlist,
    kv_key,
    parse_allowlist,
)

NOW = 1_700_000_000.0


def write_list(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def reason(v: Verifier, data: bytes, **kw: object) -> str:
    with pytest.raises(EnvelopeRejected) as ei:
        v.verify(data, purpose="presence", now=NOW, **kw)  # type: ignore[arg-type]
    return ei.value.reason


def test_parse_allowlist_formats() -> None:
    a, b, c, d = (Identity.generate("worker") for _ in range(4))
    text = (
        "# fleet keys\n"
        f"{a.public_key_b64}   # w-1\n"
        "\n"
        f"allow {b.public_key.hex()} worker publisher\n"
        f"deny {c.public_key_b64}\n"
        f"{d.public_key_b64} scheduler\n"
    )
    lists = parse_allowlist(text)
    assert lists.allowed == {
        a.public_key: frozenset({ANY_ROLE}),
        b.public_key: frozenset({"worker", "publisher"}),
        d.public_key: frozenset({"scheduler"}),
    }
    assert lists.denied == {c.public_key}
    with pytest.raises(ValueError, match=":2:"):
        parse_allowlist(f"{a.public_key_b64}\nnot-a-key\n")
    with pytest.raises(ValueError, match="unknown role"):
        parse_allowlist(f"{a.public_key_b64} admin\n")
    with pytest.raises(ValueError):
        parse_allowlist(f"deny {a.public_key_b64} worker\n")


def test_pub_file_is_an_allowlist_line_for_its_role(tmp_path: Path) -> None:
    worker = Identity.generate("worker")
    worker.save(tmp_path / "w.key")
    lists = parse_allowlist((tmp_path / "w.key.pub").read_text())
    assert lists.allowed == {worker.public_key: frozenset({"worker"})}


def test_roles_are_enforced_by_the_verifier() -> None:
    worker, publisher = Identity.generate("worker"), Identity.generate("publisher")
    trust = TrustStore()
    trust.add_allowed(worker.public_key, ["worker"])
    trust.add_allowed(publisher.public_key, ["publisher"])
    presence = Verifier(trust=trust, role="worker")
    assert presence.verify(seal(worker, b"x", "presence", timestamp=NOW), purpose="presence", now=NOW)
    # a publisher key is trusted, but not to speak as a worker
    assert reason(presence, seal(publisher, b"x", "presence", timestamp=NOW)) == "unknown_key"
    # and a worker-role verifier refuses a node id of another role even for the right key
    data = seal(worker, b"x", "presence", timestamp=NOW)
    assert reason(presence, data, expect_node_id="s" + worker.node_id[1:]) == "id_mismatch"


def test_allowlist_reload_on_change(tmp_path: Path) -> None:
    a, b = Identity.generate("worker"), Identity.generate("worker")
    path = tmp_path / "allowlist"
    write_list(path, f"{a.public_key_b64}\n", 1_000_000_000)
    v = Verifier.from_file(path)
    assert v.verify(seal(a, b"x", "presence", timestamp=NOW), purpose="presence", now=NOW)
    assert reason(v, seal(b, b"x", "presence", timestamp=NOW)) == "unknown_key"
    assert v.reload() is False  # unchanged: nothing re-read

    write_list(path, f"deny {a.public_key_b64}\n{b.public_key_b64}\n", 2_000_000_000)
    assert v.reload() is True
    assert v.reload() is False
    assert reason(v, seal(a, b"x", "presence", timestamp=NOW)) == "denied_key"
    assert v.verify(seal(b, b"x", "presence", timestamp=NOW), purpose="presence", now=NOW)


def test_reload_keeps_lists_on_bad_or_missing_file(tmp_path: Path) -> None:
    a = Identity.generate("worker")
    path = tmp_path / "allowlist"
    write_list(path, f"{a.public_key_b64}\n", 1_000_000_000)
    v = Verifier.from_file(path)
    write_list(path, "garbage line here\n", 2_000_000_000)
    assert v.reload() is False
    assert v.allowed == {a.public_key}
    path.unlink()
    assert v.reload() is False
    assert v.allowed == {a.public_key}


def test_bad_file_is_an_error_at_start(tmp_path: Path) -> None:
    path = tmp_path / "allowlist"
    path.write_text("garbage\n")
    with pytest.raises(ValueError, match="allowlist:1"):
        Verifier.from_file(path)


def test_runtime_keys_survive_reload(tmp_path: Path) -> None:
    a, b = Identity.generate("worker"), Identity.generate("worker")
    path = tmp_path / "allowlist"
    write_list(path, "# empty\n", 1_000_000_000)
    v = Verifier.from_file(path)
    v.add_allowed(a.public_key)
    write_list(path, f"{b.public_key_b64}\n", 2_000_000_000)
    assert v.reload()
    assert v.allowed == {a.public_key, b.public_key}


def test_from_file_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Verifier.from_file(tmp_path / "nope")
    v = Verifier.from_file(tmp_path / "later", missing_ok=True)
    assert v.allowed == frozenset()
    a = Identity.generate("worker")
    write_list(tmp_path / "later", f"{a.public_key_b64}\n", 1_000_000_000)
    assert v.reload() is True
    assert v.allowed == {a.public_key}


def test_append_allowlist_keeps_entries(tmp_path: Path) -> None:
    a, b = Identity.generate("worker"), Identity.generate("scheduler")
    path = tmp_path / "trust" / "allowlist"
    append_allowlist(path, allowlist_line(a.public_key, ["worker"], a.node_id))
    append_allowlist(path, allowlist_line(b.public_key, ["scheduler"]))
    lists = parse_allowlist(path.read_text())
    assert lists.allowed == {a.public_key: {"worker"}, b.public_key: {"scheduler"}}
    assert [p.name for p in path.parent.iterdir()] == ["allowlist"]


def test_kv_entries_allow_deny_and_withdraw() -> None:
    a = Identity.generate("worker")
    trust = TrustStore()
    trust.apply_kv(kv_key("allow", a.public_key, "worker"), present=True)
    assert trust.allows(a.public_key, "worker") and not trust.allows(a.public_key, "scheduler")
    trust.apply_kv(kv_key("deny", a.public_key), present=True)
    assert trust.is_denied(a.public_key)
    trust.apply_kv(kv_key("deny", a.public_key), present=False)
    trust.apply_kv(kv_key("allow", a.public_key, "worker"), present=False)
    assert not trust.is_denied(a.public_key) and not trust.allows(a.public_key)
    trust.apply_kv("allow.worker.not-a-key", present=True)  # ignored, logged
    assert trust.allowed == frozenset()


def _append_many(path: str, who: int, n: int) -> None:
    from tether.trust import append_allowlist

    for i in range(n):
        append_allowlist(Path(path), f"# writer {who} line {i}\n")


def test_concurrent_allowlist_writers_lose_no_lines(tmp_path: Path) -> None:
    """Two `tether keys allow` at once: each copies the file and renames it over; without the lock one loses."""
    import multiprocessing

    path = tmp_path / "keys" / "allowlist"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert sorted(x for x in lines if x.startswith("# writer")) == sorted(
        f"# writer {w} line {i}" for w in range(4) for i in range(40)
    )
