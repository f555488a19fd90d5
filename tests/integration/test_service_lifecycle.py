"""Every service stops promptly on SIGTERM, also while it still waits for NATS."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from devstack import free_port

REPO = Path(__file__).resolve().parents[2]
SIGNALFIRE = str(Path(sys.executable).parent / "signalfire")


@pytest.mark.parametrize("service", ["gateway", "evaluator", "notifier", "agent"])
def test_sigterm_while_waiting_for_nats(service: str, database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SF_NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nobody listens here
        "SF_DATABASE_URL": database_url,
        "SF_LISTEN": f"127.0.0.1:{free_port()}",
        "SF_ADMIN_TOKEN_FILE": str(tmp_path / "token"),
        "SF_RULES": str(REPO / "rules" / "default.yaml"),
    }
    args = [SIGNALFIRE, service]
    if service == "notifier":
        args += ["--config", str(REPO / "deploy" / "dev" / "notify.yaml")]
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        # Signalled once it is in its wait for NATS (its first failed connect is logged), not
        # after a fixed sleep: on a loaded machine imports alone can take seconds, and a
        # SIGTERM before the service's handler exists is not the case under test.
        deadline = time.monotonic() + 60
        while "NATS error" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "NATS error" in log.read_text(), log.read_text()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output, output


BAD_CONFIGS = {
    "evaluator": (
        "rules.yaml",
        "rules:\n  - name: HighCPU\n    metric: cpu.usage_percent\n"
        '    condition: "> eighty"\n    severity: high\n',
        r"rules\.yaml:4: rules\[0\]\.condition: ",
    ),
    "notifier": (
        "notify.yaml",
        "channels:\n  ops:\n    type: log\nroutes:\n  - match: {severity: critical}\n    channels: [pager]\n",
        r"notify\.yaml:6: routes\[0\]\.channels\[0\]: unknown channel 'pager'",
    ),
    "gateway": (
        "gateway.yaml",
        "listen: 127.0.0.1:8080\ndatabase_urll: x\n",
        r"gateway\.yaml:2: database_urll: unknown field",
    ),
    "agent": (
        "agent.yaml",
        "interval: 5s\nlabels:\n  env: prod\n  'bad label!': x\n",
        r"agent\.yaml:\d+: labels",
    ),
}


@pytest.mark.parametrize("service", sorted(BAD_CONFIGS))
def test_bad_config_stops_start_up_naming_file_line_and_field(service: str, tmp_path: Path) -> None:
    filename, text, expected = BAD_CONFIGS[service]
    path = tmp_path / filename
    path.write_text(text)
    env = {**os.environ, "SF_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    args = [SIGNALFIRE, service]
    if service == "evaluator":
        env["SF_RULES"] = str(path)
    else:
        args += ["--config", str(path)]
    result = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
