"""The gateway's config: defaults, environment overrides and errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalfire.config import ConfigError, load_config
from signalfire.gateway.config import GatewayConfig


def test_defaults_need_no_file() -> None:
    config = load_config(GatewayConfig, None, environ={})
    assert config.database_url == "postgresql://signalfire@127.0.0.1:5432/signalfire"
    assert config.listen == "127.0.0.1:8080"
    assert config.admin_token_file == ".signalfire/admin-token"


def test_environment_overrides() -> None:
    config = load_config(
        GatewayConfig,
        None,
        environ={
            "SF_DATABASE_URL": "postgresql://x@db/sf",
            "SF_LISTEN": "0.0.0.0:9000",
            "SF_NATS_URL": "nats://n:4222",
        },
    )
    assert config.database_url == "postgresql://x@db/sf"
    assert config.listen == "0.0.0.0:9000"
    assert config.nats.url == "nats://n:4222"


def test_durations_read_like_the_other_services(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("fetch_timeout: 250ms\nhost_down_after: 1m\n")
    config = load_config(GatewayConfig, path, environ={})
    assert float(config.fetch_timeout) == 0.25
    assert float(config.host_down_after) == 60.0


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("listen: localhost\n", "listen"),
        ("fetch_batch: 0\n", "fetch_batch"),
        ("databse_url: x\n", "databse_url"),
        ("auth_failure_rate: -1\n", "auth_failure_rate"),
        ("auth_failure_burst: 0\n", "auth_failure_burst"),
        ("stream_token_recheck: 0s\n", "stream_token_recheck"),
        ("ingest_linger: 2s\n", "ingest_linger"),  # not less than fetch_timeout (1s)
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field) as caught:
        load_config(GatewayConfig, path, environ={})
    assert str(caught.value).startswith(str(path))


def test_the_listening_socket_is_tcp_so_answers_are_not_held_by_nagle() -> None:
    # asyncio turns on TCP_NODELAY for accepted connections only when the listening socket's
    # protocol is IPPROTO_TCP; without it kept-alive answers waited ~40 ms each.
    import socket

    from signalfire.gateway.service import _bind

    sock = _bind("127.0.0.1:0")
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
