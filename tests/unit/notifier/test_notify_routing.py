"""Which channels an alert reaches, from the routes in notify.yaml."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from signalfire.events import AlertEvent
from signalfire.notifier.config import InhibitRule, Route
from signalfire.notifier.inhibit import inhibited_by
from signalfire.notifier.routing import route, route_matches


def alert(**overrides: object) -> AlertEvent:
    fields: dict[str, object] = {
        "id": "a1",
        "fingerprint": "f1",
        "rule": "HighCPU",
        "status": "firing",
        "severity": "high",
        "host": "web-1",
        "starts_at": 1.0,
        "time": 2.0,
        "labels": {"team": "ops", "env": "prod"},
    }
    fields.update(overrides)
    return msgspec.convert(fields, AlertEvent)


def r(channels: list[str], match: dict[str, str] | None = None, cont: bool = False) -> Route:
    return Route(channels=channels, match=match or {}, continue_=cont)


def test_first_matching_route_wins() -> None:
    routes = [r(["pager"], {"severity": "critical"}), r(["slack"], {"severity": "high"}), r(["log"])]
    assert route(alert(), routes) == ["slack"]
    assert route(alert(severity="critical"), routes) == ["pager"]
    assert route(alert(severity="low"), routes) == ["log"]


def test_continue_collects_later_routes_without_duplicates() -> None:
    routes = [
        r(["pager", "slack"], {"severity": "high"}, cont=True),
        r(["slack", "team"], {"team": "ops"}, cont=True),
        r(["log"]),
        r(["never"]),
    ]
    assert route(alert(), routes) == ["pager", "slack", "team", "log"]


def test_match_on_rule_host_and_labels_needs_every_entry() -> None:
    routes = [r(["db"], {"rule": "HighCPU", "host": "db-1"}), r(["ops"], {"team": "ops", "env": "prod"})]
    assert route(alert(host="db-1"), routes) == ["db"]
    assert route(alert(), routes) == ["ops"]
    assert route(alert(labels={"team": "ops", "env": "dev"}), routes) == []


def test_builtin_fields_win_over_labels_of_the_same_name() -> None:
    routes = [r(["critical"], {"severity": "critical"})]
    assert route(alert(labels={"severity": "critical"}), routes) == []


def test_no_routes_means_no_channels() -> None:
    assert route(alert(), []) == []


@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3),
            st.sampled_from([{}, {"severity": "high"}, {"severity": "low"}, {"team": "ops"}]),
            st.booleans(),
        ),
        max_size=6,
    )
)
def test_channels_are_unique_and_come_from_matching_routes(
    spec: list[tuple[list[str], dict[str, str], bool]],
) -> None:
    the_alert = alert()
    routes = [r(channels, match, cont) for channels, match, cont in spec]
    matching = [rt for rt in routes if route_matches(rt, the_alert)]
    chosen = route(the_alert, routes)
    assert len(chosen) == len(set(chosen))
    assert set(chosen) <= {c for rt in matching for c in rt.channels}
    if matching:
        assert chosen[: len(set(matching[0].channels))] == list(dict.fromkeys(matching[0].channels))
    if matching and not matching[0].continue_:
        assert chosen == list(dict.fromkeys(matching[0].channels))
    if not matching:
        assert chosen == []


def test_route_matchers_select_by_regex_and_negation_together_with_match() -> None:
    pager = Route(channels=["pager"], matchers=['severity=~"high|critical"', 'team!="dev"'])
    sugar = Route(channels=["env"], match={"env": "prod"}, matchers=['host=~"web-.*"'])
    assert route(alert(), [pager]) == ["pager"]
    assert route(alert(severity="critical"), [pager]) == ["pager"]
    assert route(alert(severity="low"), [pager]) == []
    assert route(alert(labels={"team": "dev"}), [pager]) == []
    # Regexes match the whole value: "web" does not select "web-1".
    assert route(alert(), [Route(channels=["web"], matchers=['host=~"web"'])]) == []
    assert route(alert(), [sugar]) == ["env"]
    assert route(alert(host="db-1"), [sugar]) == []
    assert route(alert(labels={"env": "dev"}), [sugar]) == []


@given(st.sampled_from(["high", "low", "critical"]), st.sampled_from(["ops", "dev", "payments"]))
def test_a_match_map_routes_exactly_as_the_same_equality_matchers(severity: str, team: str) -> None:
    the_alert = alert(severity=severity, labels={"team": team})
    as_map = Route(channels=["c"], match={"severity": "high", "team": "ops"})
    as_matchers = Route(channels=["c"], matchers=['severity="high"', "team=ops"])
    assert route_matches(as_map, the_alert) == route_matches(as_matchers, the_alert)


def test_inhibit_source_and_target_take_matcher_lists() -> None:
    rule = InhibitRule(
        source=['rule=~"Host(Down|Unreachable)"'], target=['severity!="critical"'], equal=["host"]
    )
    down = alert(id="d", fingerprint="fd", rule="HostUnreachable")
    assert inhibited_by(alert(id="c", fingerprint="fc"), [down], [rule]) == down
    assert inhibited_by(alert(id="c", fingerprint="fc", severity="critical"), [down], [rule]) is None
    assert inhibited_by(alert(id="c", fingerprint="fc", host="web-2"), [down], [rule]) is None
