"""Write (or check) the JSON Schema files in ``schemas/json`` from the pydantic models.

python -m schemas.generate          # rewrite the files
python -m schemas.generate --check  # exit 1 when a file is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas.messages import PUBLIC_MESSAGES

JSON_DIR = Path(__file__).parent / "json"


def render() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, model in PUBLIC_MESSAGES.items():
        schema = model.model_json_schema(by_alias=True, mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://tether.dev/schemas/{name}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def stale() -> list[str]:
    return [
        n
        for n, text in render().items()
        if not (JSON_DIR / n).is_file() or (JSON_DIR / n).read_text() != text
    ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = stale()
        for name in bad:
            print(f"stale: schemas/json/{name} (run: python -m schemas.generate)")
        return 1 if bad else 0
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (JSON_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
