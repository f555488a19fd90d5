"""CSV export cells: what a spreadsheet would run is shown as text, numbers stay numbers."""

from __future__ import annotations

import pytest

from signalfire.gateway.api.export import spreadsheet_cell


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+SUM(A1:A9)", "'+SUM(A1:A9)"),
        ("-2+3|cmd", "'-2+3|cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tleading tab", "'\tleading tab"),
        ("\rleading return", "'\rleading return"),
        ("-1.5", "-1.5"),
        ("+3", "+3"),
        ("-2e-5", "-2e-5"),
        ("web-1", "web-1"),
        ('{"env": "=prod"}', '{"env": "=prod"}'),
        ("", ""),
        (None, ""),
        (-1.5, -1.5),
    ],
)
def test_formula_text_is_prefixed_and_numbers_are_kept(value: object, cell: object) -> None:
    assert spreadsheet_cell(value) == cell
