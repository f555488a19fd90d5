"""The endpoint table of ``docs/gateway.md``, built from the endpoints' declarations.

The table stands between two marker comments in the doc; ``python -m
signalfire.gateway.api.doc_table docs/gateway.md`` (``make api-docs``) rewrites it there, and a
unit test fails when the committed table is not what the code declares.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from signalfire.gateway.api.endpoint import PAGE, Endpoint, Param

BEGIN = "<!-- endpoint table: generated from the code by `make api-docs`; do not edit -->"
END = "<!-- end of endpoint table -->"
#: A ``|`` inside a markdown table cell.
_BAR = "\\|"


def _query(param: Param) -> str:
    choices = param.schema.get("enum") or ()
    return param.name + "=" + _BAR.join(choices)


def _cell(endpoint: Endpoint) -> str:
    """``METHOD /path?query=`` (the paging parameters, which every list takes, left out)."""
    query = "&".join(_query(p) for p in endpoint.params if p.where == "query" and p not in PAGE)
    path = endpoint.path
    for param in endpoint.params:
        if param.where == "path" and param.schema.get("enum"):
            path = path.replace("{" + param.name + "}", _BAR.join(param.schema["enum"]))
    return f"`{endpoint.method} {path}{'?' + query if query else ''}`"


def endpoint_table(endpoints: Sequence[Endpoint]) -> str:
    """The markdown table: one row per endpoint with its role (``public``: no token) and answer."""
    rows = ["| endpoint | role | answer |", "|---|---|---|"]
    rows += [f"| {_cell(e)} | {e.role or 'public'} | {e.doc} |" for e in endpoints]
    return "\n".join(rows) + "\n"


def with_table(document: str, endpoints: Sequence[Endpoint]) -> str:
    """``document`` with the text between the markers replaced by the table."""
    head, found, rest = document.partition(BEGIN + "\n")
    _, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"the document has no endpoint table markers ({BEGIN!r} ... {END!r})")
    return head + BEGIN + "\n" + endpoint_table(endpoints) + END + tail


def main(argv: Sequence[str]) -> int:
    from signalfire.gateway.api.catalog import ENDPOINTS

    if len(argv) != 1:
        print("usage: python -m signalfire.gateway.api.doc_table docs/gateway.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    path.write_text(with_table(path.read_text(encoding="utf-8"), ENDPOINTS), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
