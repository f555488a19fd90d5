"""``make api-docs`` (``python -m signalfire.gateway.api.doc_table DOC``): what a maintainer sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalfire.gateway.api.catalog import ENDPOINTS
from signalfire.gateway.api.doc_table import BEGIN, END, endpoint_table, main


def test_the_command_rewrites_only_the_table_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "gateway.md"
    doc.write_text(f"# Gateway\n\n{BEGIN}\n| stale | table |\n{END}\n\nThe rest.\n", encoding="utf-8")
    assert main([str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == (
        f"# Gateway\n\n{BEGIN}\n{endpoint_table(ENDPOINTS)}{END}\n\nThe rest.\n"
    )


def test_a_doc_without_the_markers_is_refused_and_left_alone(tmp_path: Path) -> None:
    doc = tmp_path / "gateway.md"
    doc.write_text(f"# Gateway\n\n{BEGIN}\nno end marker\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the document has no endpoint table markers"):
        main([str(doc)])
    assert doc.read_text(encoding="utf-8") == f"# Gateway\n\n{BEGIN}\nno end marker\n"


def test_the_command_needs_exactly_one_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().err == "usage: python -m signalfire.gateway.api.doc_table docs/gateway.md\n"
