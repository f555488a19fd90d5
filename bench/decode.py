"""MetricBatch decoding: what the contract's checks cost, against msgspec without them.

Decodes the same 1,000-sample ``MetricBatch`` JSON (50 hosts; 100 metric names x 10 label
values, like ``bench/ingest.py``) with:

1. ``msgspec.json.decode`` into plain lists and dicts, and with a ``msgspec`` decoder of
   structs of the same shape without any constraint: the ceilings (no check at all);
2. the gateway's ``decode_metric_batch``: lean structs, the constraints checked per batch and
   per distinct name (host, metric and label names checked once, then remembered), with the
   same 50 hosts every pass, and with a new host name for every batch (its host-name check
   runs every time);
3. the strict ``signalfire.events.decode``: every field checked as it is decoded (what the
   evaluator and the HTTP ingest use);
4. rejections: a batch with a byte that is not UTF-8 in a label value, and one whose host has
   a ``/``, each through ``decode_metric_batch`` (the lean decode fails, the strict one names
   the field) to its ``PayloadError``.

Microseconds per batch, best of ``--rounds`` passes (the paths alternate within a pass, so
each sees the same load), and each path's ratio to the constraint-free struct decoder.

    uv run python bench/decode.py [--rounds 7] [--samples 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable

import msgspec

from signalfire.events import MetricBatch, PayloadError, Sample, decode, encode
from signalfire.gateway.ingest import decode_metric_batch

HOSTS = 50


class PlainSample(msgspec.Struct, omit_defaults=True):
    """A Sample's shape without the contract's constraints."""

    name: str
    value: float
    labels: dict[str, str] = {}
    time: float | None = None


class PlainBatch(msgspec.Struct, kw_only=True):
    """A MetricBatch's shape without the contract's constraints."""

    host: str
    time: float
    samples: list[PlainSample]
    labels: dict[str, str] = {}
    v: int = 1


def batches(hosts: list[str], per_batch: int, seed: int = 7) -> list[bytes]:
    """One encoded ``MetricBatch`` of ``per_batch`` samples per host name."""
    rng = random.Random(seed)
    names = [(f"m{i % 100}.value", {"i": str(i // 100)}) for i in range(per_batch)]
    return [
        encode(
            MetricBatch(
                host=host,
                time=1_764_650_000.0 + n,
                samples=[
                    Sample(name=name, value=round(rng.uniform(0, 100), 2), labels=labels)
                    for name, labels in names
                ],
            )
        )
        for n, host in enumerate(hosts)
    ]


def _rejecting(decoder: Callable[[bytes], object], verdicts: set[str]) -> Callable[[bytes], object]:
    """``decoder`` fed bad batches: what it answered goes into ``verdicts`` (``PayloadError``
    from a decoder that is total over bytes; another exception's name or ``accepted`` if not)."""

    def run(data: bytes) -> None:
        try:
            decoder(data)
        except PayloadError:
            verdicts.add("PayloadError")
        except (ValueError, RecursionError) as exc:
            verdicts.add(type(exc).__name__)
        else:
            verdicts.add("accepted")

    return run


def _time_pass(decoder: Callable[[bytes], object], data: list[bytes]) -> float:
    start = time.perf_counter_ns()
    for item in data:
        decoder(item)
    return (time.perf_counter_ns() - start) / len(data) / 1000


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7, help="passes over the batches; the best is shown")
    parser.add_argument("--samples", type=int, default=1000, help="samples per batch")
    args = parser.parse_args()
    print(f"load average {_load()}; {os.cpu_count()} cores; Python {sys.version.split()[0]}")

    good = batches([f"web-{i:02d}.example.com" for i in range(HOSTS)], args.samples)
    # A new host name for every batch of every pass: the gateway has never checked it.
    fresh = [
        batches([f"new-{r}-{i:02d}.example.com" for i in range(HOSTS)], args.samples)
        for r in range(args.rounds + 1)
    ]
    not_utf8 = [b.replace(b'"i":"3"', b'"i":"\xff3"', 1) for b in good]
    slash = [b.replace(b'"host":"web-', b'"host":"web/', 1) for b in good]
    plain = msgspec.json.Decoder(PlainBatch)
    bad_utf8: set[str] = set()
    bad_host: set[str] = set()
    for one in good:  # every path decodes the same thing
        strict = decode(one, MetricBatch)
        assert encode(decode_metric_batch(one)) == encode(strict) == msgspec.json.encode(plain.decode(one))

    paths: list[tuple[str, Callable[[bytes], object], Callable[[int], list[bytes]]]] = [
        ("msgspec.json.decode, untyped (lists, dicts)", msgspec.json.decode, lambda r: good),
        ("msgspec struct decoder, no constraints (reference)", plain.decode, lambda r: good),
        ("gateway decode_metric_batch, known hosts", decode_metric_batch, lambda r: good),
        ("gateway decode_metric_batch, a new host each batch", decode_metric_batch, lambda r: fresh[r]),
        ("strict signalfire.events.decode", lambda d: decode(d, MetricBatch), lambda r: good),
        (
            "rejected: not UTF-8 in a label value",
            _rejecting(decode_metric_batch, bad_utf8),
            lambda r: not_utf8,
        ),
        ("rejected: host with '/'", _rejecting(decode_metric_batch, bad_host), lambda r: slash),
    ]
    best = [float("inf")] * len(paths)
    for r in range(args.rounds + 1):
        for i, (_, decoder, data) in enumerate(paths):
            took = _time_pass(decoder, data(r))
            if r:  # the first pass warms up (names checked, caches filled)
                best[i] = min(best[i], took)

    reference = best[1]
    print(f"{len(good[0]) / 1024:.0f} KiB per batch of {args.samples} samples; best of {args.rounds} passes")
    print(f"{'path':54}{'us/batch':>10}{'ns/sample':>11}{'x ref':>8}")
    for (name, _, _), took in zip(paths, best, strict=True):
        print(f"{name:54}{took:>10.0f}{took * 1000 / args.samples:>11.0f}{took / reference:>7.2f}x")
    print(
        f"strict / gateway: {best[4] / best[2]:.2f}x; host check on a new host: "
        f"{best[3] - best[2]:+.1f} us a batch"
    )
    print(f"answers to the bad batches: not UTF-8 {sorted(bad_utf8)}, host with '/' {sorted(bad_host)}")
    print(f"load average at the end {_load()}")


if __name__ == "__main__":
    main()
