"""The gateway's config: defaults, environment overrides and errors naming the field."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec
import pytest

from signalfire.config import ConfigError, load_config
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.ingest import round_linger


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
        ("fetch_timeout: 0s\n", "fetch_timeout: must be more than 0s"),
        ("rollup_flush: 0s\n", "rollup_flush: must be more than 0s"),
        ("rollup_repair_after: 0s\n", "rollup_repair_after: must be more than 0s"),
        ("rollup_repair_after: 10s\n", "rollup_repair_after: must be at least ack_wait"),
        ("rate_limit: -1\n", "rate_limit: must not be negative"),
        ("rate_burst: 0\n", "rate_burst: must be at least 1"),
        ("database_url: ''\n", "database_url: must not be empty"),
        ("retention:\n  raw: -1\n", "retention.raw: a duration cannot be negative"),
        ("retention:\n  check_every: 0s\n", "retention.check_every: must be more than 0s"),
        ("ingest_linger: 10s\n", "ingest_linger: must be at least 0s and less than a third of ack_wait"),
        ("ingest_workers: -1\n", "ingest_workers: must be 0"),
        (
            "ingest_prune_after: 1s\nfetch_timeout: 1s\n",
            "ingest_prune_after: must be at least 3 fetch_timeouts",
        ),
        ("ingest_prune_after: later\n", "ingest_prune_after"),
        ("query_parallelism: 0\n", "query_parallelism: must be at least 1"),
        ("publish_wait: -1s\n", "publish_wait"),
        ("publish_wait: soon\n", "publish_wait"),
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


def test_a_listen_address_in_use_is_named() -> None:
    from signalfire.gateway.service import _bind

    taken = _bind("127.0.0.1:0")
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError) as caught:
            _bind(f"127.0.0.1:{port}")
        assert caught.value.errno == errno.EADDRINUSE
        assert caught.value.strerror == f"cannot listen on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}"
    finally:
        taken.close()


def test_a_small_pool_alone_is_a_valid_config_and_query_parallelism_comes_from_the_environment() -> None:
    config = load_config(GatewayConfig, environ={"SF_DB_POOL_SIZE": "1"})
    assert (config.db_pool_size, config.query_parallelism) == (1, 2)
    assert load_config(GatewayConfig, environ={"SF_QUERY_PARALLELISM": "4"}).query_parallelism == 4


def test_ingest_workers_come_from_the_environment_and_default_to_none() -> None:
    assert load_config(GatewayConfig, None, environ={}).ingest_workers == 0
    assert load_config(GatewayConfig, None, environ={"SF_INGEST_WORKERS": "2"}).ingest_workers == 2


def test_a_bad_workers_flag_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    from signalfire.cli import main

    assert main(["gateway", "--workers", "-1"]) == 2
    assert "--workers: ingest_workers: must be 0" in capsys.readouterr().err


def test_each_ingest_worker_waits_longer_for_its_share_of_the_batches(tmp_path: Path) -> None:
    """With N workers each takes 1/N of the batches: its rounds wait N times ``ingest_linger`` to
    hold as many as one process's, never more than a third of ``ack_wait``."""
    path = tmp_path / "gateway.yaml"
    path.write_text("ingest_linger: 150ms\n")
    alone = load_config(GatewayConfig, path, environ={})
    assert round_linger(alone) == pytest.approx(0.15)
    two = msgspec.structs.replace(alone, ingest_workers=2)
    assert round_linger(two) == pytest.approx(0.3)
    path.write_text("ingest_linger: 4s\ningest_workers: 4\nack_wait: 30s\n")
    assert round_linger(load_config(GatewayConfig, path, environ={})) == pytest.approx(10.0)
