"""JSON Schemas of the bus payloads, generated from the structs in :mod:`signalfire.events`.

``signalfire schemas write DIR`` writes one ``<Payload>.schema.json`` per payload (the
committed copies live in ``docs/schemas/``); ``signalfire schemas check DIR`` exits 1 when
the files differ from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from signalfire.events import PAYLOADS


def schema_documents() -> dict[str, bytes]:
    """File name → schema bytes (stable, pretty-printed JSON with a trailing newline)."""
    documents: dict[str, bytes] = {}
    for name, kind in PAYLOADS.items():
        schema: dict[str, Any] = msgspec.json.schema(kind)
        document = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"signalfire/{name}.schema.json",
            "title": name,
            **schema,
        }
        text = msgspec.json.format(msgspec.json.encode(document), indent=2)
        documents[f"{name}.schema.json"] = text + b"\n"
    return documents


def drift(directory: Path) -> list[str]:
    """Names of schema files in ``directory`` that are missing or differ from the code."""
    stale = []
    for filename, content in schema_documents().items():
        path = directory / filename
        if not path.exists() or path.read_bytes() != content:
            stale.append(filename)
    return stale


def _handle(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if args.action == "write":
        directory.mkdir(parents=True, exist_ok=True)
        for filename, content in schema_documents().items():
            (directory / filename).write_bytes(content)
        print(f"wrote {len(PAYLOADS)} schemas to {directory}")
        return 0
    stale = drift(directory)
    if stale:
        print(f"schemas out of date in {directory}: {', '.join(stale)}", file=sys.stderr)
        print("run: signalfire schemas write docs/schemas", file=sys.stderr)
        return 1
    print("schemas up to date")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("schemas", help="write or check the JSON Schemas of the bus payloads")
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("directory", nargs="?", default="docs/schemas")
    parser.set_defaults(handler=_handle)
