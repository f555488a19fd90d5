"""compose.yaml and deploy/nats/: the bus requires credentials, and monitoring stays private."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from signalfire.busauth import env_users
from signalfire.buspolicy import render
from signalfire.subjects import Subjects

REPO = Path(__file__).resolve().parents[3]
COMPOSE = REPO / "compose.yaml"
NATS_DIR = REPO / "deploy" / "nats"
#: A compose variable that must be set: ``${NAME:?message}`` (no default that works).
REQUIRED = re.compile(r"^\$\{(SF_[A-Z0-9_]+):\?[^}]*\}$")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, container port) of each published port; an empty address is every interface."""
    out = []
    for entry in service.get("ports", []):
        spec = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(entry))  # a variable's default
        parts = spec.split(":")
        address = parts[0] if len(parts) == 3 else ""
        out.append((address, parts[-1].split("/")[0]))
    return out


def test_accounts_conf_is_what_the_policy_generates() -> None:
    expected = render(Subjects("sf"), env_users(["compose-agent"]))
    assert (NATS_DIR / "accounts.conf").read_text() == expected, (
        "deploy/nats/accounts.conf is stale: `signalfire bus render-env --agent compose-agent > "
        "deploy/nats/accounts.conf`"
    )


def test_compose_nats_requires_a_login_for_every_identity() -> None:
    nats = compose()["services"]["nats"]
    assert "--config" in nats["command"]
    conf = (NATS_DIR / "nats.conf").read_text()
    assert "include ./accounts.conf" in conf
    accounts = (NATS_DIR / "accounts.conf").read_text()
    assert "no_auth_user" not in conf + accounts
    variables = re.findall(r"password: \$(SF_NATS_[A-Z0-9_]+)", accounts)
    assert len(variables) == len(re.findall(r"\{ user: ", accounts)) >= 5
    for variable in variables:  # nats-server gets each password; compose refuses to start without it
        required = REQUIRED.match(nats["environment"][variable])
        assert required is not None and required.group(1) == variable, variable


def test_every_service_in_compose_logs_in_as_its_own_user() -> None:
    services = compose()["services"]
    accounts = (NATS_DIR / "accounts.conf").read_text()
    variable_of = dict(re.findall(r'\{ user: "([^"]+)", password: \$(SF_NATS_[A-Z0-9_]+)', accounts))
    for name in ("gateway", "evaluator", "notifier", "agent"):
        env = services[name]["environment"]
        assert env["SF_NATS_URL"] == "nats://nats:4222"
        assert env["SF_NATS_USER"] in variable_of, name
        required = REQUIRED.match(env["SF_NATS_PASSWORD"])
        assert required is not None and required.group(1) == variable_of[env["SF_NATS_USER"]], name
    assert (
        len(
            {
                services[n]["environment"]["SF_NATS_USER"]
                for n in ("gateway", "evaluator", "notifier", "agent")
            }
        )
        == 4
    )


def test_monitoring_is_never_published_and_nats_only_on_loopback() -> None:
    for name, service in compose()["services"].items():
        for address, port in published(service):
            assert port != "8222", f"{name} publishes the NATS monitoring port"
            if port == "4222":
                assert address == "127.0.0.1", f"{name} publishes NATS on {address or 'every interface'}"
    for conf in ("nats.conf", "cluster.conf"):
        http = re.search(r"^http: (\S+)$", (NATS_DIR / conf).read_text(), re.MULTILINE)
        assert http is not None and http.group(1).startswith("127.0.0.1:"), conf


def test_compose_database_password_has_no_default() -> None:
    services = compose()["services"]
    password = REQUIRED.match(services["timescaledb"]["environment"]["POSTGRES_PASSWORD"])
    assert password is not None and password.group(1) == "SF_DB_PASSWORD"
    # The gateway logs in with that same required password, never a default one.
    url = services["gateway"]["environment"]["SF_DATABASE_URL"]
    credentials = re.match(r"^postgresql://signalfire:(\$\{[^}]*\})@timescaledb:5432/signalfire$", url)
    assert credentials is not None, url
    required = REQUIRED.match(credentials.group(1))
    assert required is not None and required.group(1) == "SF_DB_PASSWORD"
