"""Optional end-to-end payload encryption with sealed boxes (PyNaCl, Curve25519 + XSalsa20-Poly1305).

The fleet has one encryption keypair (``TETHER_HOME/keys/fleet.box``, mode 0600,
held by workers only; ``tether keys fleet`` makes it, ``tether up`` makes one in
development). A tenant seals its input to the fleet's public key together with
its own public key, so gateway, scheduler, NATS and the store carry only
ciphertext; the worker opens it, runs the model, and seals the output to the
tenant's key, which only the tenant can open.

Wire form: the request's ``input`` is the string ``"tsb1:" + urlsafe-base64(sealed box)``
of the JSON ``{"input": <the real input>, "replyKey": <tenant public key, base64>}``;
the result is ``"tsb1:" + urlsafe-base64(sealed box)`` of ``{"output": <the real output>}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from tether.errors import InvalidRequest
from tether.identity import pub_path, write_private_file

PREFIX: Final = "tsb1:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _seal(obj: dict[str, Any], to: PublicKey) -> str:
    return PREFIX + _b64(SealedBox(to).encrypt(json.dumps(obj, separators=(",", ":")).encode()))


def _open(value: str, key: PrivateKey, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(SealedBox(key).decrypt(_unb64(value[len(PREFIX) :])))
    except (CryptoError, binascii.Error, ValueError) as e:
        raise InvalidRequest(
            f"sealed {what} could not be opened: {type(e).__name__}", field="input"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidRequest(f"sealed {what} is not an object", field="input")
    return doc


# -- tenant side ------------------------------------------------------------------


def seal_input(value: Any, fleet_public: bytes, tenant: PrivateKey) -> str:
    """The ``input`` to send: ``value`` sealed to the fleet, with the tenant's key for the reply."""
    return _seal({"input": value, "replyKey": _b64(bytes(tenant.public_key))}, PublicKey(fleet_public))


def open_output(result: str, tenant: PrivateKey) -> Any:
    """The real output from a sealed result."""
    return _open(result, tenant, "result").get("output")


# -- fleet side -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    input: Any
    seal_output: Callable[[Any], Any]


def _plain(output: Any) -> Any:
    return output


class FleetBox:
    """The fleet's encryption key, on workers. ``open`` passes plain inputs through unchanged."""

    def __init__(self, key: PrivateKey | None) -> None:
        self.key = key

    @property
    def public_key(self) -> bytes | None:
        return bytes(self.key.public_key) if self.key else None

    @classmethod
    def load(cls, path: Path) -> FleetBox:
        """The key at ``path`` (no key file: a worker that refuses sealed inputs)."""
        if not path.exists():
            return cls(None)
        return cls(PrivateKey(_unb64(json.loads(path.read_text())["box"])))

    @classmethod
    def create(cls, path: Path, *, force: bool = False) -> FleetBox:
        if path.exists() and not force:
            raise FileExistsError(f"fleet key {path} already exists; refusing to overwrite (use --force)")
        box = cls(PrivateKey.generate())
        assert box.key is not None
        write_private_file(path, (json.dumps({"version": 1, "box": _b64(bytes(box.key))}) + "\n").encode())
        pub_path(path).write_text(
            _b64(bytes(box.key.public_key)) + "  # fleet encryption key (sealed boxes)\n"
        )
        return box

    def open(self, value: Any) -> Opened:
        if not is_sealed(value):
            return Opened(value, _plain)
        if self.key is None:
            raise InvalidRequest("sealed input, but this worker holds no fleet key", field="input")
        doc = _open(value, self.key, "input")
        try:
            reply = PublicKey(_unb64(str(doc["replyKey"])))
        except (KeyError, ValueError, binascii.Error, CryptoError) as e:
            raise InvalidRequest(f"sealed input has no usable replyKey: {e}", field="input") from None
        return Opened(doc.get("input"), lambda output: _seal({"output": output}, reply))


def fleet_key_path(keys_dir: Path) -> Path:
    return keys_dir / "fleet.box"
