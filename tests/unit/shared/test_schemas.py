"""docs/schemas must be what the structs say: a drift fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from signalfire.cli import main
from signalfire.events import PAYLOADS
from signalfire.schemas import drift, schema_documents

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


def test_committed_schemas_match_the_code() -> None:
    assert drift(SCHEMAS) == [], "run `make schemas` and commit docs/schemas"


def test_every_payload_has_a_schema_with_its_fields() -> None:
    documents = schema_documents()
    assert set(documents) == {f"{name}.schema.json" for name in PAYLOADS}
    metric_batch = json.loads(documents["MetricBatch.schema.json"])
    definition = metric_batch["$defs"]["MetricBatch"]
    assert set(definition["required"]) == {"host", "time", "samples"}


def test_drift_is_detected(tmp_path: Path) -> None:
    for name, content in schema_documents().items():
        (tmp_path / name).write_bytes(content)
    assert drift(tmp_path) == []
    (tmp_path / "AlertEvent.schema.json").write_text("{}")
    assert drift(tmp_path) == ["AlertEvent.schema.json"]


def test_schemas_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "docs" / "schemas"
    assert main(["schemas", "write", str(target)]) == 0
    assert capsys.readouterr().out == f"wrote {len(PAYLOADS)} schemas to {target}\n"
    assert drift(target) == []
    assert main(["schemas", "check", str(target)]) == 0
    assert capsys.readouterr().out == "schemas up to date\n"


def test_schemas_check_names_the_stale_files_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schemas", "write", str(tmp_path)]) == 0
    (tmp_path / "AlertEvent.schema.json").write_text("{}")
    (tmp_path / "MetricBatch.schema.json").unlink()
    capsys.readouterr()
    assert main(["schemas", "check", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"schemas out of date in {tmp_path}: MetricBatch.schema.json, AlertEvent.schema.json\n"
        "run: signalfire schemas write docs/schemas\n"
    )
