"""``signalfire bus``: credentials on disk, never on screen, and the server config they make."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signalfire.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["bus", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_init_then_enroll_writes_private_files_and_prints_no_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bus = tmp_path / "bus"
    code, out = run(capsys, "init", "--dir", str(bus), "--prefix", "prod")
    assert code == 0
    for name in ("admin", "gateway", "evaluator", "notifier"):
        password = (bus / f"{name}.password").read_text().strip()
        assert len(password) >= 32
        assert password not in out
        assert (bus / f"{name}.password").stat().st_mode & 0o777 == 0o600
    assert bus.stat().st_mode & 0o777 == 0o700

    agent_file = tmp_path / "web-1.password"
    code, out = run(capsys, "enroll", "web-1.example.com", "--dir", str(bus), "--out", str(agent_file))
    assert code == 0
    assert "agent-web-1_example_com" in out
    assert agent_file.read_text().strip() not in out
    assert agent_file.stat().st_mode & 0o777 == 0o600
    conf = (bus / "auth.conf").read_text()
    assert '"prod.metrics.web-1_example_com"' in conf
    assert agent_file.read_text().strip() not in conf
    users = json.loads((bus / "users.json").read_text())["users"]
    assert users["agent-web-1_example_com"]["bcrypt"].startswith("$2")

    assert run(capsys, "agents", "--dir", str(bus)) == (0, "web-1.example.com\n")


def test_init_again_keeps_every_credential(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bus = tmp_path / "bus"
    run(capsys, "init", "--dir", str(bus))
    before = (bus / "gateway.password").read_text()
    code, out = run(capsys, "init", "--dir", str(bus))
    assert code == 0 and "created" not in out
    assert (bus / "gateway.password").read_text() == before
    code, out = run(capsys, "init", "--dir", str(bus), "--prefix", "other")
    assert code == 1 and "prefix 'sf'" in out


def test_enroll_needs_init_and_revoke_names_an_unknown_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "enroll", "web-1", "--dir", str(tmp_path / "none"))
    assert code == 1 and "signalfire bus init" in out
    run(capsys, "init", "--dir", str(tmp_path / "bus"))
    code, out = run(capsys, "revoke", "web-9", "--dir", str(tmp_path / "bus"))
    assert code == 1 and "web-9 is not enrolled" in out


def test_reload_of_a_server_that_is_not_running_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "init", "--dir", str(tmp_path / "bus"))
    pid_file = tmp_path / "nats.pid"
    pid_file.write_text("999999999\n")
    code, out = run(capsys, "enroll", "web-1", "--dir", str(tmp_path / "bus"), "--pid-file", str(pid_file))
    assert code == 1 and "no nats-server with PID 999999999" in out


def test_revoke_reloads_the_server_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A stand-in for nats-server that records the SIGHUP a reload sends.
    marker = tmp_path / "reloaded"
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, signal, sys, time\n"
            f"signal.signal(signal.SIGHUP, lambda *_: pathlib.Path({str(marker)!r}).touch())\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        bus = str(tmp_path / "bus")
        run(capsys, "init", "--dir", bus)
        run(capsys, "enroll", "web-1", "--dir", bus)
        code, out = run(capsys, "revoke", "web-1", "--dir", bus, "--pid", str(server.pid))
        assert (code, out) == (0, f"revoked web-1\nreloaded nats-server (PID {server.pid})\n")
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists()
        assert run(capsys, "agents", "--dir", bus) == (0, "")
    finally:
        server.kill()
        server.wait()


def test_a_damaged_credential_directory_or_pid_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bus = tmp_path / "bus"
    run(capsys, "init", "--dir", str(bus))
    pid_file = tmp_path / "nats.pid"
    pid_file.write_text("not a pid\n")
    code, out = run(capsys, "enroll", "web-1", "--dir", str(bus), "--pid-file", str(pid_file))
    assert code == 1
    assert out.endswith(
        f"signalfire bus: {pid_file}: cannot read nats-server's PID"
        " (invalid literal for int() with base 10: 'not a pid')\n"
    )
    (bus / "users.json").write_text("{}")
    code, out = run(capsys, "agents", "--dir", str(bus))
    assert (code, out) == (
        1,
        f"signalfire bus: {bus / 'users.json'}: not a Signalfire bus credential file ('prefix')\n",
    )


def test_render_env_prints_the_committed_compose_accounts(capsys: pytest.CaptureFixture[str]) -> None:
    accounts = Path(__file__).resolve().parents[3] / "deploy" / "nats" / "accounts.conf"
    assert run(capsys, "render-env", "--agent", "compose-agent") == (0, accounts.read_text())


def test_an_identity_the_policy_does_not_know_gets_no_permissions_but_an_error() -> None:
    from signalfire.buspolicy import User, permissions
    from signalfire.subjects import Subjects

    roles = "admin, gateway, evaluator, notifier, agent"
    with pytest.raises(ValueError, match=rf"^unknown bus role 'root'; one of {roles}$"):
        User(name="root", role="root", password="x")
    with pytest.raises(ValueError, match=rf"^unknown bus role 'root'; one of {roles}$"):
        permissions("root", Subjects("sf"))
    with pytest.raises(ValueError, match=r"^an agent identity needs its host, and only an agent has one$"):
        User(name="agent-web-1", role="agent", password="x")
    with pytest.raises(ValueError, match=r"^an agent identity needs its host, and only an agent has one$"):
        User(name="gateway", role="gateway", password="x", host="web-1")
    with pytest.raises(ValueError, match=r"^an agent's permissions need its host$"):
        permissions("agent", Subjects("sf"))


def test_a_metrics_consumer_is_named_by_its_share_of_the_hosts_and_read_back() -> None:
    from signalfire.buspolicy import metrics_consumer, metrics_consumer_share

    assert metrics_consumer() == metrics_consumer(1, 1) == "gateway-metrics"
    assert [metrics_consumer(k, 3) for k in (1, 2, 3)] == [
        "gateway-metrics-1of3",
        "gateway-metrics-2of3",
        "gateway-metrics-3of3",
    ]
    for shares in (1, 2, 16):
        for share in range(1, shares + 1):
            assert metrics_consumer_share(metrics_consumer(share, shares)) == (share, shares)
    for bad in ((0, 2), (3, 2), (1, 0)):
        with pytest.raises(ValueError, match=f"share {bad[0]} of {bad[1]}: a share is 1 to the number"):
            metrics_consumer(*bad)
    # names that are not the gateway's metrics consumers: a user's own, or no share there can be
    for other in (
        "gateway-alerts",
        "my-reader",
        "gateway-metrics-3of2",
        "gateway-metrics-0of2",
        "gateway-metrics-1of0",
        "gateway-metrics-1of2x",
        "gateway-metrics-01of2",
    ):
        assert metrics_consumer_share(other) is None, other
