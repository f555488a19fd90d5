"""Every service stops promptly on SIGTERM, also while it still waits for NATS."""

from __future__ import annotations

import os
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
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        time.sleep(2.0)  # well into its wait for NATS
        assert proc.poll() is None, proc.communicate()[0].decode()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert code == 0, output
    assert "Traceback" not in output, output
