"""The config loader: errors name file, line and field; SF_* variables override."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec
import pytest

from signalfire.bus import NatsConfig
from signalfire.config import ConfigError, Duration, load_config, parse_duration


class Route(msgspec.Struct, forbid_unknown_fields=True):
    channels: list[str]
    wait: Duration = Duration(0)


class Example(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    database_url: str = "postgresql://localhost/x"
    interval: Duration = Duration(5)
    mode: Literal["fast", "safe"] = "safe"
    routes: list[Route] = []
    tags: list[str] = []


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "example.yaml"
    path.write_text(text)
    return path


def test_reads_yaml_with_durations(tmp_path: Path) -> None:
    config = load_config(
        Example, write(tmp_path, "interval: 1m\nroutes:\n  - channels: [a]\n    wait: 250ms\n"), environ={}
    )
    assert config.interval == 60.0
    assert config.routes[0].wait == pytest.approx(0.25)


def test_wrong_type_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "mode: safe\nroutes:\n  - channels: [a]\n  - channels: oops\n")
    with pytest.raises(ConfigError) as error:
        load_config(Example, path, environ={})
    assert str(error.value).startswith(f"{path}:4: routes[1].channels: Expected `array`")


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "nats:\n  url: nats://x:1\n  urll: typo\n")
    with pytest.raises(ConfigError, match=r"example.yaml:3: nats.urll: unknown field"):
        load_config(Example, path, environ={})


def test_bad_duration_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "\ninterval: soon\n")
    with pytest.raises(ConfigError, match=r"example.yaml:2: interval: expected a duration"):
        load_config(Example, path, environ={})


def test_invalid_yaml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "mode: safe\nroutes: [\n  {channels: [a]\n")
    with pytest.raises(ConfigError, match=r"example.yaml:\d+: invalid YAML"):
        load_config(Example, path, environ={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Example, write(tmp_path, "- a\n- b\n"), environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Example, tmp_path / "nope.yaml", environ={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "nats:\n  url: nats://file:4222\ninterval: 5s\n")
    env = {"SF_NATS_URL": "nats://env:4222", "SF_INTERVAL": "2s", "SF_TAGS": "a, b", "SF_NATS_PREFIX": "acme"}
    config = load_config(Example, path, environ=env)
    assert config.nats.url == "nats://env:4222"
    assert config.nats.prefix == "acme"
    assert config.interval == 2.0
    assert config.tags == ["a", "b"]


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"mode: .*SF_MODE"):
        load_config(Example, None, environ={"SF_MODE": "reckless"})


def test_environment_alone_is_enough() -> None:
    config = load_config(Example, None, environ={"SF_DATABASE_URL": "postgresql://db/sf"})
    assert config.database_url == "postgresql://db/sf"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("1.5m", 90), ("250ms", 0.25), ("2h", 7200), ("1d", 86400), (3, 3)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["-1s", "1y", "", "fast", True])
def test_bad_durations(bad: str | bool) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_tools_read_the_dev_stack_settings_under_the_environment(tmp_path, monkeypatch):
    from signalfire.config import tool_environ

    (tmp_path / ".signalfire").mkdir()
    (tmp_path / ".signalfire" / "env").write_text(
        "# written by make up\n"
        "SF_DATABASE_URL='postgresql://signalfire@127.0.0.1:15432/signalfire'\n"
        "SF_NATS_URL=nats://127.0.0.1:4222\n"
        "SF_NATS_PASSWORD_FILE='/dir with space/admin'\n"
        "PATH=/nowhere\n"
        "not an assignment\n"
    )
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    environ, found = tool_environ({"SF_NATS_URL": "nats://elsewhere:4222", "HOME": "/home/x"})
    assert found == tmp_path / ".signalfire" / "env"
    assert environ == {
        "SF_DATABASE_URL": "postgresql://signalfire@127.0.0.1:15432/signalfire",
        "SF_NATS_URL": "nats://elsewhere:4222",  # what the environment sets wins
        "SF_NATS_PASSWORD_FILE": "/dir with space/admin",
        "HOME": "/home/x",  # and only SF_* settings come from the file
    }
    monkeypatch.chdir(tmp_path.parent)
    assert tool_environ({"A": "b"}) == ({"A": "b"}, None)


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_bytes(b"interval: 5s\nmode: \xff\xfe\n")
    with pytest.raises(ConfigError) as error:
        load_config(Example, path, environ={})
    assert str(error.value) == f"{path}: config file is not UTF-8 text"


@pytest.mark.parametrize("text", ["# nothing set yet\n", "~\n", "---\nnull\n"])
def test_an_empty_file_gives_the_defaults(tmp_path: Path, text: str) -> None:
    config = load_config(Example, write(tmp_path, text), environ={})
    assert config.interval == 5.0
    assert config.mode == "safe"


def test_a_negative_duration_is_refused_with_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "mode: fast\ninterval: -5\n")
    with pytest.raises(ConfigError) as error:
        load_config(Example, path, environ={})
    assert str(error.value) == f"{path}:2: interval: a duration cannot be negative, got -5"


@pytest.mark.parametrize("text", ["-2m", "-0.5s", " -3 "])
def test_a_negative_duration_with_a_unit_says_so(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, f"interval: '{text}'\n")
    with pytest.raises(ConfigError) as error:
        load_config(Example, path, environ={})
    assert str(error.value) == f"{path}:1: interval: a duration cannot be negative, got {text!r}"


def test_an_environment_value_that_is_not_yaml_is_taken_as_text() -> None:
    # "[" does not parse as YAML; the loader passes the text on, so the message quotes it as written.
    with pytest.raises(ConfigError) as error:
        load_config(Example, None, environ={"SF_INTERVAL": "[5s"})
    message = str(error.value)
    assert "interval: expected a duration like 30s, 5m or 1h, got '[5s'" in message
    assert "SF_INTERVAL" in message


def test_the_dev_stack_settings_skip_lines_that_are_not_assignments(tmp_path: Path) -> None:
    from signalfire.config import read_env_file

    env = tmp_path / "env"
    env.write_text("SF_A='unclosed\nSF_B='two words'\n1X=bad name\nSF_C=\n")
    assert read_env_file(env) == {"SF_B": "two words", "SF_C": ""}
    assert read_env_file(tmp_path / "gone") == {}
