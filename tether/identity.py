"""Node identity: one Ed25519 key per node (PyNaCl), and the node id derived from it.

Encodings (one rule everywhere):

- Public keys are written as **urlsafe base64 without padding** (43 characters).
  ``decode_public_key`` also accepts 64 hex characters and padded base64.
- A node id is ``"<role letter>-<first 16 hex chars of sha256(public key)>"``,
  e.g. ``w-3f2a9c0d1b7e4a55``; only ``[a-z0-9-]``, so it is a NATS subject token.
  Role letters: worker ``w``, scheduler ``s``, gateway ``g``, publisher ``p``.

Key files: ``<path>`` holds the secret seed as one JSON line
``{"version": 1, "role": ..., "seed": <urlsafe b64>}`` with mode 0600;
``<path>.pub`` holds ``<public key> <role>  # <node id>``, a valid allowlist line
(see ``tether.trust``) that allows the key in its own role only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from nacl.signing import SigningKey

from tether.errors import KeyFileInvalid

log = logging.getLogger(__name__)

Role = Literal["worker", "scheduler", "gateway", "publisher"]
ROLES: tuple[Role, ...] = ("worker", "scheduler", "gateway", "publisher")
ROLE_PREFIX: dict[str, str] = {"worker": "w", "scheduler": "s", "gateway": "g", "publisher": "p"}
_PREFIX_ROLE: dict[str, Role] = {v: cast(Role, k) for k, v in ROLE_PREFIX.items()}

PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
KEY_FILE_VERSION = 1
_NODE_ID_RE = re.compile(r"^([a-z])-([0-9a-f]{16})$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def encode_public_key(key: bytes) -> str:
    """Raw 32-byte public key -> urlsafe base64 without padding."""
    if len(key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(key)}")
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def decode_public_key(text: str) -> bytes:
    """Parse a public key written as urlsafe base64 (padding optional) or 64 hex chars."""
    s = text.strip()
    if _HEX_RE.match(s):
        return bytes.fromhex(s)
    try:
        raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not a public key (urlsafe base64 or hex): {text!r}") from e
    if len(raw) != PUBLIC_KEY_BYTES or encode_public_key(raw) != s.rstrip("="):
        raise ValueError(f"not a {PUBLIC_KEY_BYTES}-byte public key: {text!r}")
    return raw


def _check_role(role: str) -> Role:
    if role not in ROLE_PREFIX:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return cast(Role, role)


def worker_id_for(public_key: bytes, role: str = "worker") -> str:
    """The node id a public key has in a role (same rule as ``Identity.node_id``)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return f"{ROLE_PREFIX[_check_role(role)]}-{hashlib.sha256(public_key).hexdigest()[:16]}"


node_id_for = worker_id_for


def role_of_node_id(node_id: str) -> Role | None:
    """The role a node id claims, or None when it is not a well-formed node id."""
    m = _NODE_ID_RE.match(node_id)
    return _PREFIX_ROLE.get(m.group(1)) if m else None


def node_id_matches(node_id: str, public_key: bytes) -> bool:
    """True when ``node_id`` is the id of ``public_key`` in the role its prefix names."""
    role = role_of_node_id(node_id)
    if role is None or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    return worker_id_for(public_key, role) == node_id


def pub_path(path: str | os.PathLike[str]) -> Path:
    """Where the public-key file of a key file lives (``<path>.pub``)."""
    p = Path(path)
    return p.with_name(p.name + ".pub")


@dataclass(frozen=True, slots=True)
class Identity:
    """An Ed25519 signing key and the role it acts in."""

    signing_key: SigningKey = field(repr=False)
    role: Role
    public_key: bytes = field(init=False, repr=False)
    node_id: str = field(init=False)

    def __post_init__(self) -> None:
        _check_role(self.role)
        pk = bytes(self.signing_key.verify_key)
        object.__setattr__(self, "public_key", pk)
        object.__setattr__(self, "node_id", worker_id_for(pk, self.role))

    @property
    def public_key_b64(self) -> str:
        """Public key as urlsafe base64 without padding."""
        return encode_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte Ed25519 signature of ``message``."""
        return self.signing_key.sign(message).signature

    @classmethod
    def generate(cls, role: str) -> Identity:
        """A fresh random identity."""
        return cls(SigningKey.generate(), _check_role(role))

    @classmethod
    def from_seed(cls, seed: bytes, role: str) -> Identity:
        """Rebuild an identity from its 32-byte seed."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
        return cls(SigningKey(seed), _check_role(role))

    def save(self, path: str | os.PathLike[str], *, force: bool = False) -> None:
        """Write the secret key file (mode 0600) and ``<path>.pub``.

        Refuses to replace an existing key file unless ``force``; with ``force`` the
        new file is written beside it and renamed over it atomically.
        """
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed = base64.urlsafe_b64encode(bytes(self.signing_key)).rstrip(b"=").decode("ascii")
        body = json.dumps({"version": KEY_FILE_VERSION, "role": self.role, "seed": seed}) + "\n"
        if force:
            _replace_atomic(p, body.encode(), 0o600)
        else:
            try:
                _write_new(p, body.encode())
            except FileExistsError:
                raise FileExistsError(
                    f"key file {p} already exists; refusing to overwrite a node identity "
                    "(pass force=True to replace it)"
                ) from None
        line = f"{self.public_key_b64} {self.role}  # {self.node_id}\n"
        _replace_atomic(pub_path(p), line.encode("ascii"), 0o644)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by ``save``; ValueError when it is not one."""
        p = Path(path)
        check_key_mode(p)
        try:
            data = json.loads(p.read_text(encoding="ascii"))
            if not isinstance(data, dict) or data.get("version") != KEY_FILE_VERSION:
                raise ValueError("unsupported key file version")
            s = str(data["seed"])
            seed = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
            return cls.from_seed(seed, str(data["role"]))
        except (KeyError, TypeError, ValueError, binascii.Error, UnicodeDecodeError) as e:
            raise KeyFileInvalid(f"{p} is not a tether key file: {e}") from e

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str], role: str) -> Identity:
        """Load the key at ``path``, creating it on first use (development mode).

        ValueError when the existing key was made for another role.
        """
        p = Path(path)
        if not p.exists():
            ident = cls.generate(role)
            try:
                ident.save(p)
                log.info("created %s identity %s at %s", role, ident.node_id, p)
                return ident
            except FileExistsError:
                pass  # another process created it first: use theirs
        ident = cls.load(p)
        if ident.role != role:
            raise KeyFileInvalid(f"key file {p} belongs to a {ident.role}, not a {role}")
        return ident


#: ``warn``: load a private key file that group or others may read or write, with a warning (for
#: platforms that cannot set 0600 on mounted secrets). Any other value, or unset: refuse it, as ssh does.
KEY_MODE_ENV = "TETHER_KEY_FILE_MODE"


def check_key_mode(p: Path) -> None:
    """A private key that other users may read is no longer this node's alone: refuse it (ValueError)."""
    mode = stat.S_IMODE(p.stat().st_mode)
    if not mode & 0o077:
        return
    if os.environ.get(KEY_MODE_ENV, "").strip().lower() == "warn":
        log.warning("key file %s has mode %o; it should be 0600", p, mode)
        return
    raise KeyFileInvalid(
        f"key file {p} has mode {mode:o}: group or others may read or change this private key; "
        f"run `chmod 600 {p}` (or set {KEY_MODE_ENV}=warn to load it anyway)"
    )


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) with all of ``data`` at once; FileExistsError if it is there.

    The content goes to a temporary file first and is hard-linked into place, so a
    process racing to load the key never reads a half-written file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        _write_fd(fd, data)
        os.close(fd)
        fd = -1
        os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)


def _replace_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write a temp file (created 0600 by mkstemp) beside ``path`` and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        _write_fd(fd, data)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600 (atomically, replacing any previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _replace_atomic(path, data, 0o600)


def generate(role: str) -> Identity:
    """A fresh random identity."""
    return Identity.generate(role)


def load(path: str | os.PathLike[str]) -> Identity:
    """Read a key file written by ``Identity.save``."""
    return Identity.load(path)


def load_or_create(path: str | os.PathLike[str], role: str) -> Identity:
    """Load the key at ``path``, creating it on first use (development mode)."""
    return Identity.load_or_create(path, role)
