"""A service's metrics, as numbers a test can compare: from its registry in the test's own
process (:func:`value`) or from its ``/metrics`` page (:func:`scrape`), read with
``prometheus_client``'s own parser so a page it cannot parse fails the test."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

#: The samples each kind of family has, after its name.
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (exact label set, as on the page) of ``registry``; 0 when its
    metric has no such sample yet. A name no metric of ``registry`` has is a ``KeyError``, so a
    misspelt name fails the test instead of reading 0."""
    found = registry.get_sample_value(name, labels)
    if found is not None:
        return found
    for family in registry.collect():
        if any(name == family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))):
            return 0.0
    raise KeyError(name)


def families(text: str) -> dict[str, Metric]:
    """A ``/metrics`` page as its metric families by name (a counter's without ``_total``)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def openmetrics_families(text: str) -> dict[str, Metric]:
    """An OpenMetrics page as its metric families by name (its parser refuses a page without
    the closing ``# EOF``)."""
    parse = openmetrics_parser.text_string_to_metric_families  # untyped in prometheus_client
    return {family.name: family for family in parse(text)}  # type: ignore[no-untyped-call]


def buckets(family: Metric, **labels: str) -> list[tuple[float, float]]:
    """A histogram family's ``(upper bound, cumulative count)`` pairs for ``labels``, in order."""
    found = [
        (float(s.labels["le"]), s.value)
        for s in family.samples
        if s.name.endswith("_bucket") and {k: v for k, v in s.labels.items() if k != "le"} == labels
    ]
    return sorted(found)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A ``/metrics`` page as ``{(name, labels): value}``; empty when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return samples(text)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A ``/metrics`` page's samples as ``{(name, labels): value}``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)
