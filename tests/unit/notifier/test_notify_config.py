"""notify.yaml mistakes stop start-up with file:line: field: reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest

from signalfire.config import ConfigError
from signalfire.notifier.channels.log import LogChannelConfig
from signalfire.notifier.channels.webhook import WebhookChannelConfig
from signalfire.notifier.cli import run_notifier
from signalfire.notifier.config import NotifyConfig, Route, check_notify_config, load_notify_config
from signalfire.notifier.reload import adopt

GOOD = """\
channels:
  log:
    type: log
  hook:
    type: webhook
    url: http://127.0.0.1:9/hook
    timeout: 2s
    max_attempts: 4
routes:
  - match: {severity: critical}
    channels: [hook, log]
    continue: true
  - channels: [log]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "notify.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_notify_config(path, environ={})
    return str(info.value)


def test_good_file_loads_channels_by_type_and_routes(tmp_path: Path) -> None:
    config = load_notify_config(write(tmp_path, GOOD), environ={})
    assert isinstance(config.channels["log"], LogChannelConfig)
    hook = config.channels["hook"]
    assert isinstance(hook, WebhookChannelConfig)
    assert (hook.timeout, hook.max_attempts) == (2.0, 4)
    assert config.routes[0].continue_ is True
    assert config.routes[1].match == {}


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[3]
    for name in ("notify.example.yaml", "deploy/dev/notify.yaml"):
        assert load_notify_config(root / name, environ={}).routes


def test_unknown_channel_in_a_route_names_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  - channels: [log]", "  - channels:\n      - log\n      - pager"))
    assert error_of(path) == (
        f"{path}:15: routes[1].channels[1]: unknown channel 'pager' (configured: hook, log)"
    )


def test_wrong_type_inside_a_channel_names_the_channel(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("max_attempts: 4", "max_attempts: many"))
    assert error_of(path) == f"{path}:8: channels.hook.max_attempts: Expected `int`, got `str`"


def test_unknown_channel_type_names_the_channel(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("type: webhook", "type: carrier-pigeon"))
    assert error_of(path) == f"{path}:5: channels.hook.type: Invalid value 'carrier-pigeon'"


def test_missing_webhook_url_names_the_channel(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    url: http://127.0.0.1:9/hook\n", ""))
    assert error_of(path) == f"{path}:4: channels.hook: Object missing required field `url`"


def test_unknown_field_in_a_channel_names_the_channel(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("timeout: 2s", "timout: 2s"))
    assert (
        error_of(path)
        == f"{path}:7: channels.hook.timout: unknown field (a typo, or a setting of another version?)"
    )


def test_bad_duration_and_bad_url(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("timeout: 2s", "timeout: soon"))
    assert "channels.hook.timeout: expected a duration like 30s" in error_of(path)
    path = write(tmp_path, GOOD.replace("http://127.0.0.1:9/hook", "ftp://example/hook"))
    assert error_of(path) == f"{path}:6: channels.hook.url: expected an http:// or https:// URL"


def test_wrong_type_in_a_route(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("channels: [hook, log]", "channels: hook"))
    assert error_of(path) == f"{path}:11: routes[0].channels: Expected `array`, got `str`"


def test_route_without_channels(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  - channels: [log]", "  - channels: []"))
    assert error_of(path).startswith(f"{path}:13: routes[1].channels: Expected `array` of length >= 1")


def test_bad_channel_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD.replace("  log:\n", "  'my log':\n").replace("[hook, log]", "[hook]").replace("[log]", "[hook]"),
    )
    assert error_of(path) == f"{path}:2: channels.my log: a channel name may contain only A-Z a-z 0-9 _ -"


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  - channels: [log]", "  - channels: [log"))
    message = error_of(path)
    assert message.startswith(f"{path}:")
    assert "invalid YAML" in message


def test_unknown_top_level_field(tmp_path: Path) -> None:
    path = write(tmp_path, "chanels: {}\n")
    assert error_of(path) == f"{path}:1: chanels: unknown field (a typo, or a setting of another version?)"


def test_bad_file_stops_the_service_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    path = write(tmp_path, GOOD.replace("[hook, log]", "[hook, pager]"))
    assert run_notifier(argparse.Namespace(config=str(path))) == 2
    assert f"{path}:11: routes[0].channels[1]: unknown channel 'pager'" in capsys.readouterr().err


def test_environment_alone_is_enough() -> None:
    config = load_notify_config(None, environ={"SF_NATS_URL": "nats://10.0.0.1:4222"})
    assert config.nats.url == "nats://10.0.0.1:4222"
    assert config.channels == {}


PIPELINE = """\
channels:
  pagerduty: {type: pagerduty, routing_key_env: PD_KEY, fallback: ops-mail}
  ops-mail: {type: email, host: smtp.example.com, from: sf@example.com, to: [ops@example.com]}
  oncall-sms:
    type: sms
    account_sid: AC1
    from: "+14155550100"
    to: "+14155550199"
    auth_token_env: TWILIO_TOKEN
routes:
  - match: {severity: critical}
    channels: [pagerduty]
    escalate: [{after: 5m, channels: [oncall-sms]}]
  - match: {severity: high}
    channels: [ops-mail]
    group_wait: 5m
    group_by: [rule]
    repeat: 1h
  - match: {severity: low}
    channels: [ops-mail]
    digest: 1h
inhibit:
  - source: {rule: HostDown}
    equal: [host]
"""


def test_escalation_grouping_digest_and_inhibition_load(tmp_path: Path) -> None:
    config = load_notify_config(write(tmp_path, PIPELINE), environ={})
    critical, high, low = config.routes
    assert [(s.after, s.channels) for s in critical.escalate] == [(300.0, ["oncall-sms"])]
    assert (high.group_wait, high.group_by, high.repeat) == (300.0, ["rule"], 3600.0)
    assert low.digest == 3600.0
    assert config.inhibit[0].source == {"rule": "HostDown"}
    assert config.channels["pagerduty"].fallback == "ops-mail"


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        (
            ("[oncall-sms]}]", "[pager]}]"),
            "notify.yaml:13: routes[0].escalate[0].channels[0]: unknown channel 'pager'",
        ),
        (
            ("fallback: ops-mail", "fallback: nobody"),
            "notify.yaml:2: channels.pagerduty.fallback: unknown channel",
        ),
        (
            ("fallback: ops-mail", "fallback: pagerduty"),
            "channels.pagerduty.fallback: a channel cannot be its own",
        ),
        (("digest: 1h", "digest: often"), "notify.yaml:21: routes[2].digest: expected a duration"),
        (("equal: [host]", "equal: host"), "notify.yaml:24: inhibit[0].equal: Expected `array`"),
        (("to: [ops@example.com]", "to: []"), "channels.ops-mail.to"),
    ],
)
def test_pipeline_mistakes_name_file_line_and_field(
    tmp_path: Path, mistake: tuple[str, str], expected: str
) -> None:
    assert expected in error_of(write(tmp_path, PIPELINE.replace(*mistake)))


def test_secrets_are_never_in_the_file(tmp_path: Path) -> None:
    text = PIPELINE.replace("routing_key_env: PD_KEY", "routing_key: abc123")
    assert "channels.pagerduty" in error_of(write(tmp_path, text))


async def test_reload_takes_new_routes_and_refuses_broken_ones(tmp_path: Path) -> None:
    from signalfire.notifier.service import NotifierService

    service = NotifierService(load_notify_config(write(tmp_path, GOOD), environ={}))
    changed = load_notify_config(
        write(tmp_path, GOOD.replace("severity: critical", "severity: high")), environ={}
    )
    await service.reload(changed)
    assert service.config.routes[0].match == {"severity": "high"}
    broken = msgspec.structs.replace(changed, routes=[Route(channels=["nope"])])
    with pytest.raises(ConfigError, match=r"routes\[0\].channels\[0\]: unknown channel 'nope'"):
        await service.reload(broken)
    assert service.config.routes[0].match == {"severity": "high"}


def test_a_route_matcher_that_does_not_parse_names_line_field_and_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD.replace("  - channels: [log]", "  - channels: [log]\n    matchers: ['severity=~\"(\"']"),
    )
    error = error_of(path)
    assert "routes[1]" in error and "matchers[0]" in error and "not a regular expression" in error, error
    path = write(
        tmp_path, GOOD.replace("  - channels: [log]", "  - channels: [log]\n    matchers: [severity]")
    )
    assert "'severity' is not a matcher" in error_of(path)


def test_an_inhibit_rule_with_an_empty_source_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "inhibit:\n  - source: []\n    equal: [host]\n")
    assert "source: give at least one matcher" in error_of(path)


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        (("digest: 1h", "digest: 500ms"), "notify.yaml:21: routes[2].digest: must be at least 1s"),
        (("inhibit:", "metrics_listen: localhost\ninhibit:"), "notify.yaml:22: metrics_listen: "),
    ],
)
def test_timing_and_listen_mistakes_name_file_line_and_field(
    tmp_path: Path, mistake: tuple[str, str], expected: str
) -> None:
    assert expected in error_of(write(tmp_path, PIPELINE.replace(*mistake)))


def test_a_mistake_set_by_the_environment_names_the_environment() -> None:
    with pytest.raises(ConfigError) as info:
        load_notify_config(None, environ={"SF_TICK": "0s"})
    assert str(info.value) == "<environment>: tick: must be more than 0"


def _checked(path: Path) -> list[str]:
    """What ``signalfire notify check`` reports for ``path``, one message per mistake."""
    config, errors = check_notify_config(path)
    assert (config is None) == bool(errors)
    return [str(e) for e in errors]


def test_notify_check_reports_an_unreadable_file_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "notify.yaml"
    assert _checked(path) == [f"{path}: cannot read config file: No such file or directory"]
    path.write_bytes(b"channels:\n  log: {type: log}\n# caf\xe9\n")
    assert _checked(path) == [f"{path}: config file is not UTF-8 text"]
    path.write_text("channels: [\n")
    [bad_yaml] = _checked(path)
    assert bad_yaml.startswith(f"{path}:2: invalid YAML")
    path.write_text("- log\n- hook\n")
    assert _checked(path) == [f"{path}:1: expected a mapping at the top level"]


def test_notify_check_lists_channel_and_structure_mistakes_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        channels:
          hook:
            type: webhook
        routes: 5
        """,
    )
    assert _checked(path) == [
        f"{path}:2: channels.hook: Object missing required field `url`",
        f"{path}:4: routes: Expected `array`, got `int`",
    ]


@pytest.mark.parametrize("text", ["# nothing configured yet\n", "~\n"])
def test_notify_check_takes_an_empty_file_as_the_defaults(tmp_path: Path, text: str) -> None:
    assert _checked(write(tmp_path, text)) == []


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("{type: log, max_attempts: 0}", "channels.c.max_attempts: expected 1 to 100, got 0"),
        ("{type: log, rate_limit: -1}", "channels.c.rate_limit: must be 0 (no limit) or more"),
        ("{type: log, concurrency: 101}", "channels.c.concurrency: expected 1 to 100, got 101"),
        ("{type: log, burst: 0}", "channels.c.burst: expected 1 to 10000, got 0"),
        (
            "{type: discord}",
            "channels.c.webhook_url_env: set exactly one of webhook_url_env and webhook_url_file",
        ),
        (
            "{type: pagerduty, routing_key_env: K, routing_key_file: /k}",
            "channels.c.routing_key_env: set exactly one of routing_key_env and routing_key_file",
        ),
        (
            "{type: pagerduty, routing_key_env: K, url: ftp://pd}",
            "channels.c.url: expected an http:// or https:// URL",
        ),
        (
            "{type: sms, account_sid: AC1, from: '+14155550100', to: '+14155550101'}",
            "channels.c.auth_token_env: set exactly one of auth_token_env and auth_token_file",
        ),
        (
            "{type: sms, account_sid: AC1, from: '+14155550100', to: '+14155550101', auth_token_env: T,"
            " api_url: twilio.example}",
            "channels.c.api_url: expected an http:// or https:// URL",
        ),
        (
            "{type: sms, account_sid: AC1, from: '+14155550100', to: '+14155550101', auth_token_env: T,"
            " segments: 11}",
            "channels.c.segments: expected 1 to 10, got 11",
        ),
    ],
)
def test_channel_setting_mistakes_name_the_channel_and_field(
    tmp_path: Path, channel: str, expected: str
) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(f"channels:\n  c: {channel}\nroutes:\n  - channels: [c]\n")
    assert error_of(path) == f"{path}:2: {expected}"
    assert [str(e) for e in check_notify_config(path)[1]] == [f"{path}:2: {expected}"]


def test_an_empty_secret_file_and_a_webhook_url_without_scheme_are_named(tmp_path: Path) -> None:
    from signalfire.notifier.channels import ChannelContext, build_channel
    from signalfire.notifier.channels.discord import DiscordChannelConfig
    from signalfire.notifier.channels.pagerduty import PagerDutyChannelConfig

    context = ChannelContext(http=None, environ={"DISCORD_URL": "discord.com/api/webhooks/1/t"})  # type: ignore[arg-type]
    empty = tmp_path / "routing-key"
    empty.write_text("\n")
    with pytest.raises(ConfigError) as caught:
        build_channel("pd", PagerDutyChannelConfig(routing_key_file=str(empty)), context)
    assert str(caught.value) == f"channels.pd.routing_key_file: {empty} is empty"

    with pytest.raises(ConfigError) as caught:
        build_channel("chat", DiscordChannelConfig(webhook_url_env="DISCORD_URL"), context)
    assert (
        str(caught.value)
        == "channels.chat.webhook_url_env: the webhook URL must start with http:// or https://"
    )
    url_file = tmp_path / "discord-url"
    url_file.write_text("discord.com/api/webhooks/1/t\n")
    with pytest.raises(ConfigError) as caught:
        build_channel("chat", DiscordChannelConfig(webhook_url_file=str(url_file)), context)
    assert (
        str(caught.value)
        == "channels.chat.webhook_url_file: the webhook URL must start with http:// or https://"
    )


def test_a_service_built_from_a_config_with_a_mistake_refuses_to_start() -> None:
    # Code that builds the config itself (not from a file) gets the same check as a file.
    from signalfire.notifier.service import NotifierService

    config = NotifyConfig(channels={"log": LogChannelConfig()}, routes=[Route(channels=["pager"])])
    with pytest.raises(ConfigError) as info:
        NotifierService(config)
    assert str(info.value) == "routes[0].channels[0]: unknown channel 'pager' (configured: log)"


def test_the_watches_default_to_a_minute_and_five_and_a_bad_one_is_named(tmp_path: Path) -> None:
    defaults = load_notify_config(write(tmp_path, GOOD), environ={})
    assert (defaults.evaluation_watch, defaults.storage_watch) == (60.0, 300.0)
    for bad, reason in (("-5", "a duration cannot be negative"), ("[5m]", "expected a duration like 30s")):
        assert f"storage_watch: {reason}" in error_of(write(tmp_path, GOOD + f"storage_watch: {bad}\n"))
    off = load_notify_config(write(tmp_path, GOOD + "evaluation_watch: 0s\n"), environ={})
    assert off.evaluation_watch == 0.0
    for bad, reason in (("-5", "a duration cannot be negative"), ("soon", "expected a duration like 30s")):
        assert f"evaluation_watch: {reason}" in error_of(write(tmp_path, GOOD + f"evaluation_watch: {bad}\n"))


def test_a_reload_takes_new_watch_settings(tmp_path: Path) -> None:
    running = load_notify_config(write(tmp_path, GOOD), environ={})
    changed = load_notify_config(
        write(tmp_path, GOOD + "evaluation_watch: 2m\nstorage_watch: 10m\n"), environ={}
    )
    adopted = adopt(running, changed)
    assert (adopted.evaluation_watch, adopted.storage_watch) == (120.0, 600.0)


def test_a_heartbeat_is_off_unless_configured_and_takes_a_minute_by_default(tmp_path: Path) -> None:
    assert load_notify_config(write(tmp_path, GOOD), environ={}).heartbeat is None
    config = load_notify_config(write(tmp_path, GOOD + "heartbeat:\n  url_env: HC_URL\n"), environ={})
    assert config.heartbeat is not None
    heartbeat = config.heartbeat
    assert (heartbeat.url_env, heartbeat.every, heartbeat.timeout, heartbeat.stalled_after) == (
        "HC_URL",
        60.0,
        10.0,
        180.0,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("heartbeat:\n  every: 1m\n", ":14: heartbeat.url_env: set exactly one of url_env and url_file"),
        (
            "heartbeat:\n  url_env: A\n  url_file: /run/secrets/hc\n",
            ":15: heartbeat.url_env: set exactly one of url_env and url_file",
        ),
        ("heartbeat:\n  url_env: A\n  every: 0s\n", ":16: heartbeat.every: must be more than 0"),
        (
            "heartbeat:\n  url_env: A\n  every: 30s\n  timeout: 1m\n",
            ":17: heartbeat.timeout: must be more than 0 and at most every (30s)",
        ),
        (
            "heartbeat:\n  url_env: A\n  stalled_after: 0s\n",
            ":16: heartbeat.stalled_after: must be more than 0",
        ),
        ("heartbeat:\n  url_env: A\n  every: soon\n", ":16: heartbeat.every: expected a duration like 30s"),
        ("heartbeat:\n  url: https://hc-ping.example/abc\n", ":15: heartbeat.url: unknown field"),
    ],
)
def test_a_bad_heartbeat_is_named(tmp_path: Path, text: str, reason: str) -> None:
    assert reason in error_of(write(tmp_path, GOOD + text))


def test_a_reload_takes_a_new_heartbeat(tmp_path: Path) -> None:
    running = load_notify_config(write(tmp_path, GOOD), environ={})
    changed = load_notify_config(
        write(tmp_path, GOOD + "heartbeat:\n  url_env: HC_URL\n  every: 2m\n"), environ={}
    )
    adopted = adopt(running, changed)
    assert adopted.heartbeat is not None and adopted.heartbeat.every == 120.0
