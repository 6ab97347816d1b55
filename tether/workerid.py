"""A worker's stable id: derived from its Ed25519 identity key under ``TETHER_HOME/keys``.

The key is created on first start (development mode), so a restarted worker
keeps its id, and the id cannot be claimed without the key.
"""

from __future__ import annotations

from pathlib import Path

from tether.identity import Identity


def worker_key_path(home: Path, name: str = "worker") -> Path:
    return home / "keys" / f"{name}.key"


def worker_identity(home: Path, name: str = "worker") -> str:
    """The worker id for identity ``name`` (creating the key if this is the first start)."""
    return Identity.load_or_create(worker_key_path(home, name), "worker").node_id
