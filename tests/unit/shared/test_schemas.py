"""docs/schemas must be what the structs say: a drift fails here."""

from __future__ import annotations

import json
from pathlib import Path

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
