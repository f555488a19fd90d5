"""``signalfire agent --once`` and config errors, run as users run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from signalfire.events import MetricBatch, decode

SIGNALFIRE = str(Path(sys.executable).parent / "signalfire")


def run_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
    # A closed port: --once must not need NATS at all.
    environ["SF_NATS_URL"] = "nats://127.0.0.1:9"
    environ.update(env or {})
    return subprocess.run(
        [SIGNALFIRE, "agent", *args], capture_output=True, text=True, env=environ, timeout=60, check=False
    )


def test_once_prints_one_metric_batch(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("hostname: web-1.example.com\nlabels: {env: test}\n")
    result = run_agent("--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    batch = decode(result.stdout.encode(), MetricBatch)
    assert batch.host == "web-1.example.com"
    assert batch.labels == {"env": "test"}
    names = {s.name for s in batch.samples}
    assert {"cpu.usage_percent", "mem.used_percent", "disk.used_percent", "agent.batches_sent"} <= names


def test_once_without_a_config_file() -> None:
    result = run_agent("--once", env={"SF_HOSTNAME": "from-env"})
    assert result.returncode == 0, result.stderr
    assert decode(result.stdout.encode(), MetricBatch).host == "from-env"


def test_bad_config_is_one_line_naming_file_line_and_field(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("labels: {env: test}\ninterval: 50ms\n")
    result = run_agent("--once", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"signalfire: {config}:2: interval: must be at least 0.2s, got 0.05s")


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_agent("--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: cannot read config file" in result.stderr


def test_the_agent_imports_nothing_of_the_server_side() -> None:
    code = (
        "import sys, signalfire.collector.cli, signalfire.collector.agent\n"
        "print(sorted({'asyncpg', 'starlette', 'jinja2', 'uvicorn'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_signalfire_agent_loads_no_other_command() -> None:
    # The console script registers every installed subcommand only for help; `signalfire
    # agent` imports the agent's module alone, so the server side costs a host no memory.
    # (h11 is the agent's too, for HTTP checks: --list-metrics reads their declarations;
    # test_agent_checks checks that an agent without HTTP checks does not load it. httpx,
    # the gateway's and the notifier's, is not.)
    code = (
        "import contextlib, io, sys\n"
        "from signalfire.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['agent', '--list-metrics'])\n"
        "others = ('signalfire.gateway', 'signalfire.notifier', 'signalfire.evaluator', 'asyncpg',\n"
        "          'starlette', 'jinja2', 'slack_sdk', 'aiosmtplib', 'httpx')\n"
        "print(sorted(m for m in sys.modules if m.startswith(others)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    usage = subprocess.run([SIGNALFIRE, "--help"], capture_output=True, text=True, check=True).stdout
    assert "agent" in usage  # help still lists every installed command
