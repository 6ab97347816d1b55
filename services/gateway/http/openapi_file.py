"""``python -m services.gateway.http.openapi_file [--check]``: write or verify ``schemas/openapi.json``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPEC_PATH = Path(__file__).resolve().parents[3] / "schemas" / "openapi.json"


def render() -> str:
    from services.gateway.http.app import create_app
    from services.gateway.http.openapi_docs import build_spec

    return json.dumps(build_spec(create_app()), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m services.gateway.http.openapi_file [--check]``: write (or verify) schemas/openapi.json."""
    args = argparse.ArgumentParser(description=main.__doc__)
    args.add_argument("--check", action="store_true", help="fail if the committed spec is stale")
    ns = args.parse_args(argv)
    text = render()
    if ns.check:
        if not SPEC_PATH.exists() or SPEC_PATH.read_text() != text:
            print(f"{SPEC_PATH} is stale: run python -m services.gateway.http.openapi_file", file=sys.stderr)
            return 1
        return 0
    SPEC_PATH.write_text(text)
    print(f"wrote {SPEC_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
