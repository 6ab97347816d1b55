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
from pydantic import TypeAdapter, ValidationError

from schemas.messages import MAX_INPUTS, Input
from tether.errors import InvalidRequest, KeyFileInvalid
from tether.identity import check_key_mode, pub_path, write_private_file

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
    except (CryptoError, binascii.Error, ValueError, RecursionError) as e:  # RecursionError: deep nesting
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
        """The key at ``path`` (no key file: a worker that refuses sealed inputs).

        The same policy as the node keys: a file group or others may read is refused, and so is one
        that is not a fleet key file (``KeyFileInvalid``), not a crash while the worker starts.
        """
        if not path.exists():
            return cls(None)
        check_key_mode(path)
        try:
            return cls(PrivateKey(_unb64(str(json.loads(path.read_text(encoding="ascii"))["box"]))))
        except (KeyError, TypeError, ValueError, binascii.Error, CryptoError, UnicodeDecodeError) as e:
            raise KeyFileInvalid(f"{path} is not a fleet key file: {type(e).__name__}: {e}") from None

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
        value = doc.get("input")
        try:  # what a plain request's input must be, checked here since only the worker sees it
            _INPUT.validate_python(value)
        except ValidationError:
            raise InvalidRequest(
                "sealed input must hold a non-empty string, a non-empty list of strings or a list of "
                f"chat messages, at most {MAX_INPUTS} items",
                field="input",
            ) from None
        return Opened(value, lambda output: _seal({"output": output}, reply))


_INPUT: TypeAdapter[Any] = TypeAdapter(Input)


def fleet_key_path(keys_dir: Path) -> Path:
    return keys_dir / "fleet.box"
