"""Conformance with the OpenTelemetry Collector's tail_sampling processor, in one place.

1. Every policy type on its edge cases (bounds, invert_match, regex, missing attributes,
   empty traces, state across seconds), as one table of Collector-style entries.
2. How verdicts combine (processor.go): drop first and final, inverted vetoes, inverted keeps.
3. probabilistic against an independent implementation of the Collector's hash and threshold.
4. A Collector ``tail_sampling`` policy list pasted as YAML, deciding hand-built traces.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import yaml
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from policies import Decision, TraceView, Verdict, build_engine
from tests.policies.traces import ERROR, OK, any_value, batch, make_span, view

S, N = Verdict.SAMPLED, Verdict.NOT_SAMPLED
IS, INS, D = Verdict.INVERTED_SAMPLED, Verdict.INVERTED_NOT_SAMPLED, Verdict.DROPPED
T0 = 1_700_000_000.0
EMPTY = TraceView.from_resource_spans(bytes(16), [])


def policy(kind: str, **fields: Any) -> dict[str, Any]:
    """A Collector-style entry: the type's fields under a key named after the type."""
    entry: dict[str, Any] = {"name": f"the-{kind}", "type": kind}
    if fields:
        entry[kind] = fields
    return entry


def lasting(*durations_ms: float) -> TraceView:
    """Spans starting together, in this order, each lasting the given time."""
    return view(*(make_span(duration_ms=ms) for ms in durations_ms))


def attr(key: str, value: object, *, resource: bool = False) -> TraceView:
    if resource:
        return view(batch([make_span()], resource={key: value}))
    return view(make_span(attributes={key: value}))


def in_event(key: str, value: object) -> TraceView:
    span = make_span()
    span.events.add(name="e", attributes=[KeyValue(key=key, value=any_value(value))])
    return view(span)


def statuses(*codes: int) -> TraceView:
    return view(*(make_span(status=code) for code in codes))


def spans(n: int) -> TraceView:
    return view(*(make_span() for _ in range(n)))


STRING = {"key": "tier", "values": ["vip", "gold"]}
REGEX = {"key": "route", "values": ["^/api/v[0-9]+$", "pay"], "enabled_regex_matching": True}

# (case id, policy entry, trace, expected verdict)
SINGLE_TRACE_CASES: list[tuple[str, dict[str, Any], TraceView, Verdict]] = [
    ("always_sample keeps an empty trace", policy("always_sample"), EMPTY, S),
    ("latency: threshold is inclusive", policy("latency", threshold_ms=100), lasting(100), S),
    ("latency: ms truncated", policy("latency", threshold_ms=100), lasting(99.9999), N),
    (
        "latency: first start to last end",
        policy("latency", threshold_ms=100),
        view(make_span(start_ms=0, duration_ms=60), make_span(start_ms=50, duration_ms=60)),
        S,
    ),
    (
        "latency: band lower bound exclusive",
        policy("latency", threshold_ms=100, upper_threshold_ms=200),
        lasting(100),
        N,
    ),
    (
        "latency: band upper bound inclusive",
        policy("latency", threshold_ms=100, upper_threshold_ms=200),
        lasting(200),
        S,
    ),
    (
        "latency: above the band",
        policy("latency", threshold_ms=100, upper_threshold_ms=200),
        lasting(201),
        N,
    ),
    # latency.go checks the running duration span by span: passing through the band counts.
    (
        "latency: band passed through",
        policy("latency", threshold_ms=100, upper_threshold_ms=200),
        lasting(150, 900),
        S,
    ),
    (
        "latency: band jumped over",
        policy("latency", threshold_ms=100, upper_threshold_ms=200),
        lasting(50, 900),
        N,
    ),
    ("latency: empty trace", policy("latency", threshold_ms=0), EMPTY, N),
    (
        "status_code: ERROR on one span",
        policy("status_code", status_codes=["ERROR"]),
        statuses(0, OK, ERROR),
        S,
    ),
    ("status_code: no ERROR", policy("status_code", status_codes=["ERROR"]), statuses(0, OK), N),
    ("status_code: UNSET", policy("status_code", status_codes=["UNSET"]), statuses(OK, 0), S),
    (
        "status_code: UNSET absent",
        policy("status_code", status_codes=["UNSET", "OK"]),
        statuses(ERROR),
        N,
    ),
    ("status_code: empty trace", policy("status_code", status_codes=["UNSET"]), EMPTY, N),
    ("string: span value", policy("string_attribute", **STRING), attr("tier", "gold"), S),
    (
        "string: resource value",
        policy("string_attribute", **STRING),
        attr("tier", "vip", resource=True),
        S,
    ),
    ("string: exact, not substring", policy("string_attribute", **STRING), attr("tier", "vipx"), N),
    ("string: missing attribute", policy("string_attribute", **STRING), attr("other", "vip"), N),
    (
        "string: non-string value",
        policy("string_attribute", key="n", values=["1"]),
        attr("n", 1),
        N,
    ),
    (
        "string: event attributes ignored",
        policy("string_attribute", **STRING),
        in_event("tier", "vip"),
        N,
    ),
    ("string: empty trace", policy("string_attribute", **STRING), EMPTY, N),
    ("string: regex anchored", policy("string_attribute", **REGEX), attr("route", "/api/v2"), S),
    (
        "string: regex anchored miss",
        policy("string_attribute", **REGEX),
        attr("route", "/api/v2/x"),
        N,
    ),
    (
        "string: regex unanchored search",
        policy("string_attribute", **REGEX),
        attr("route", "/repay"),
        S,
    ),
    (
        "string: invert, match vetoes",
        policy("string_attribute", **STRING, invert_match=True),
        attr("tier", "vip"),
        INS,
    ),
    (
        "string: invert, no match",
        policy("string_attribute", **STRING, invert_match=True),
        attr("tier", "free"),
        IS,
    ),
    (
        "string: invert, missing attribute",
        policy("string_attribute", **STRING, invert_match=True),
        EMPTY,
        IS,
    ),
    (
        "numeric: min inclusive",
        policy("numeric_attribute", key="code", min_value=500, max_value=599),
        attr("code", 500),
        S,
    ),
    (
        "numeric: max inclusive",
        policy("numeric_attribute", key="code", min_value=500, max_value=599),
        attr("code", 599),
        S,
    ),
    (
        "numeric: above",
        policy("numeric_attribute", key="code", min_value=500, max_value=599),
        attr("code", 600),
        N,
    ),
    (
        "numeric: no max",
        policy("numeric_attribute", key="code", min_value=500),
        attr("code", 10**12),
        S,
    ),
    (
        "numeric: min 0 is no bound",
        policy("numeric_attribute", key="code", max_value=5),
        attr("code", -7),
        S,
    ),
    ("numeric: missing", policy("numeric_attribute", key="code", min_value=1), EMPTY, N),
    (
        "numeric: invert",
        policy("numeric_attribute", key="code", min_value=1, invert_match=True),
        attr("code", 3),
        INS,
    ),
    (
        "numeric: invert missing",
        policy("numeric_attribute", key="code", min_value=1, invert_match=True),
        EMPTY,
        IS,
    ),
    ("boolean: true", policy("boolean_attribute", key="debug", value=True), attr("debug", True), S),
    (
        "boolean: false wanted",
        policy("boolean_attribute", key="debug", value=False),
        attr("debug", False),
        S,
    ),
    (
        "boolean: non-boolean reads false",
        policy("boolean_attribute", key="debug", value=False),
        attr("debug", "true"),
        S,
    ),
    ("boolean: missing", policy("boolean_attribute", key="debug", value=False), EMPTY, N),
    (
        "boolean: invert",
        policy("boolean_attribute", key="debug", value=True, invert_match=True),
        attr("debug", True),
        INS,
    ),
    ("probabilistic: 0 %", policy("probabilistic", sampling_percentage=0), EMPTY, N),
    ("probabilistic: 100 %", policy("probabilistic", sampling_percentage=100), EMPTY, S),
    ("span_count: min inclusive", policy("span_count", min_spans=3), spans(3), S),
    ("span_count: below min", policy("span_count", min_spans=3), spans(2), N),
    ("span_count: max inclusive", policy("span_count", min_spans=1, max_spans=3), spans(3), S),
    ("span_count: above max", policy("span_count", min_spans=1, max_spans=3), spans(4), N),
    ("span_count: max 0 unbounded", policy("span_count", min_spans=1), spans(500), S),
    ("span_count: defaults keep empty", policy("span_count"), EMPTY, S),
    (
        "trace_state: match",
        policy("trace_state", key="v", values=["1"]),
        view(make_span(trace_state="a=2,v=1")),
        S,
    ),
    (
        "trace_state: invalid tracestate",
        policy("trace_state", key="v", values=["1"]),
        view(make_span(trace_state="v=1,v=1")),
        N,
    ),
    ("trace_state: empty trace", policy("trace_state", key="v", values=["1"]), EMPTY, N),
    (
        "and: all keep",
        {
            "name": "a",
            "type": "and",
            "and": {
                "and_sub_policy": [
                    policy("status_code", status_codes=["ERROR"]),
                    policy("span_count", min_spans=2),
                ]
            },
        },
        statuses(ERROR, 0),
        S,
    ),
    (
        "and: inverted veto only fails the and",
        {
            "name": "a",
            "type": "and",
            "and": {"and_sub_policy": [policy("string_attribute", **STRING, invert_match=True)]},
        },
        attr("tier", "vip"),
        N,
    ),
    (
        "and: inverted keep counts as keep",
        {
            "name": "a",
            "type": "and",
            "and": {"and_sub_policy": [policy("string_attribute", **STRING, invert_match=True)]},
        },
        attr("tier", "free"),
        S,
    ),
    (
        "drop: all match",
        {
            "name": "d",
            "type": "drop",
            "drop": {
                "drop_sub_policy": [
                    policy("status_code", status_codes=["OK"]),
                    policy("span_count", max_spans=1),
                ]
            },
        },
        statuses(OK),
        D,
    ),
    (
        "drop: one does not match",
        {
            "name": "d",
            "type": "drop",
            "drop": {
                "drop_sub_policy": [
                    policy("status_code", status_codes=["OK"]),
                    policy("span_count", max_spans=1),
                ]
            },
        },
        statuses(OK, OK),
        N,
    ),
]


@pytest.mark.parametrize(
    ("entry", "trace", "verdict"),
    [case[1:] for case in SINGLE_TRACE_CASES],
    ids=[case[0] for case in SINGLE_TRACE_CASES],
)
def test_policy_edge_cases(entry: dict[str, Any], trace: TraceView, verdict: Verdict) -> None:
    assert build_engine([entry]).policies[0].evaluate(trace, T0) is verdict


def test_rate_limiting_per_second() -> None:
    rate = build_engine([policy("rate_limiting", spans_per_second=10)]).policies[0]
    verdicts = [rate.evaluate(spans(n), now) for n, now in [(9, T0), (1, T0 + 0.5), (9, T0 + 1)]]
    assert verdicts == [S, N, S]  # 9 + 1 is not below 10; a new second starts over


def test_bytes_limiting_token_bucket() -> None:
    bucket = build_engine([policy("bytes_limiting", bytes_per_second=97)]).policies[0]
    trace = view(make_span(name="x"))  # 97 bytes by the Collector's estimate; burst 194
    verdicts = [bucket.evaluate(trace, now) for now in (T0, T0, T0, T0 + 1, T0 + 1)]
    assert verdicts == [S, S, N, S, N]


def test_composite_allocation_across_seconds() -> None:
    entry = {
        "name": "c",
        "type": "composite",
        "composite": {
            "max_total_spans_per_second": 10,
            "composite_sub_policy": [
                policy("status_code", status_codes=["ERROR"]),
                policy("always_sample"),
            ],
            "rate_allocation": [
                {"policy": "the-status_code", "percent": 70},
                {"policy": "the-always_sample", "percent": 30},
            ],
        },
    }
    engine = build_engine([entry])
    errors, others = view(*(make_span(status=ERROR) for _ in range(4))), spans(2)
    kept = [
        engine.decide(trace, now).sub_policy
        for trace, now in [
            (errors, T0),
            (others, T0),
            (errors, T0 + 0.4),
            (others, T0 + 0.6),
            (others, T0 + 0.9),
            (errors, T0 + 1.0),
            (errors, T0 + 1.1),
            (others, T0 + 1.2),
            (others, T0 + 1.2),
        ]
    ]
    # Budgets 7 and 3 spans per second; each second starts over.
    assert kept == [
        "the-status_code",
        "the-always_sample",
        None,
        None,
        None,
        "the-status_code",
        None,
        "the-always_sample",
        None,
    ]


PRECEDENCE: list[tuple[str, list[dict[str, Any]], str | None]] = [
    # A drop beats a keep, even one listed before it.
    (
        "drop beats sampled",
        [
            policy("always_sample"),
            {"name": "d", "type": "drop", "drop": {"drop_sub_policy": [policy("always_sample")]}},
        ],
        None,
    ),
    # An inverted match (INVERTED_NOT_SAMPLED) vetoes every keep.
    (
        "inverted veto beats sampled",
        [policy("always_sample"), policy("string_attribute", **STRING, invert_match=True)],
        None,
    ),
    # An inverted keep keeps only if no policy said NOT_SAMPLED...
    (
        "inverted keep alone",
        [policy("string_attribute", key="tier", values=["free"], invert_match=True)],
        "the-string_attribute",
    ),
    (
        "inverted keep cancelled",
        [
            policy("string_attribute", key="tier", values=["free"], invert_match=True),
            policy("span_count", min_spans=9),
        ],
        None,
    ),
    # ...and a plain keep is reported before it.
    (
        "sampled reported first",
        [
            policy("string_attribute", key="tier", values=["free"], invert_match=True),
            policy("always_sample"),
        ],
        "the-always_sample",
    ),
]


@pytest.mark.parametrize(
    ("entries", "kept_by"), [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE]
)
def test_precedence(entries: list[dict[str, Any]], kept_by: str | None) -> None:
    assert build_engine(entries).decide(attr("tier", "vip"), T0).policy == kept_by


def independent_fnv1a_64(data: bytes) -> int:
    """FNV-1a 64 as specified: offset basis, then xor each octet and multiply by the prime."""
    value = 14695981039346656037
    for octet in data:
        value = ((value ^ octet) * 1099511628211) % (1 << 64)
    return value


def independent_threshold(percentage: float) -> int:
    """uint64(big.Float(MaxUint64) * (percentage / 100)): product rounded to 64 bits."""
    exact = Fraction((1 << 64) - 1) * Fraction(percentage / 100)
    if exact == 0:
        return 0
    exponent = math.floor(math.log2(exact)) - 63
    while exact / Fraction(2) ** exponent >= 1 << 64:
        exponent += 1
    while exact / Fraction(2) ** exponent < 1 << 63:
        exponent -= 1
    scaled = exact / Fraction(2) ** exponent  # in [2**63, 2**64): keep its integer part
    mantissa, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest > scaled.denominator or (2 * rest == scaled.denominator and mantissa % 2):
        mantissa += 1  # round half to even
    return math.floor(Fraction(mantissa) * Fraction(2) ** exponent)


@pytest.mark.parametrize("salt", ["", "caudal-tier-2"])
@pytest.mark.parametrize("percentage", [1, 33.3, 75])
def test_probabilistic_agrees_with_an_independent_implementation(
    percentage: float, salt: str
) -> None:
    entry = policy("probabilistic", sampling_percentage=percentage, hash_salt=salt)
    evaluate = build_engine([entry]).policies[0].evaluate
    threshold = independent_threshold(percentage)
    prefix = (salt or "default-hash-seed").encode()
    rng = random.Random(f"{percentage}/{salt}")
    mismatches = kept = 0
    for _ in range(10_000):
        trace_id = rng.randbytes(16)
        expected = independent_fnv1a_64(prefix + trace_id) <= threshold
        kept += expected
        got = evaluate(TraceView.from_resource_spans(trace_id, []), T0) is Verdict.SAMPLED
        mismatches += got != expected
    assert mismatches == 0
    assert abs(kept - 100 * percentage) <= 4 * math.sqrt(10_000 * percentage / 100)


def test_independent_threshold_matches_known_go_values() -> None:
    # From Go: uint64 of big.Float MaxUint64 (64-bit precision) times the float64 ratio.
    assert independent_threshold(50) == (1 << 63) - 1
    assert independent_threshold(100) == (1 << 64) - 1
    assert independent_threshold(0) == 0


# Pasted from a Collector configuration; only the trace IDs and times in the tests are ours.
COLLECTOR_CONFIG = """
processors:
  tail_sampling:
    decision_wait: 10s
    num_traces: 100000
    policies:
      - name: drop-small-health-checks
        type: drop
        drop:
          drop_sub_policy:
            - name: health-route
              type: string_attribute
              string_attribute:
                key: http.route
                values: ["^/health"]
                enabled_regex_matching: true
            - name: small
              type: span_count
              span_count: {min_spans: 1, max_spans: 5}
      - name: errors
        type: status_code
        status_code: {status_codes: [ERROR]}
      - name: slow-band
        type: latency
        latency: {threshold_ms: 5000, upper_threshold_ms: 10000}
      - name: server-errors
        type: numeric_attribute
        numeric_attribute: {key: http.response.status_code, min_value: 500, max_value: 599}
      - name: critical-services
        type: string_attribute
        string_attribute:
          key: service.name
          values: ["pay", "^checkout$"]
          enabled_regex_matching: true
          cache_max_size: 64
      - name: big-traces
        type: span_count
        span_count: {min_spans: 50, max_spans: 200}
      - name: debug-flag
        type: boolean_attribute
        boolean_attribute: {key: app.debug, value: true}
      - name: gold-vendor
        type: trace_state
        trace_state: {key: vendor, values: [gold, platinum]}
      - name: vip-half
        type: and
        and:
          and_sub_policy:
            - name: vip
              type: string_attribute
              string_attribute: {key: user.tier, values: [vip]}
            - name: half
              type: probabilistic
              probabilistic: {sampling_percentage: 50}
      - name: budgeted
        type: composite
        composite:
          max_total_spans_per_second: 100
          policy_order: [retried, very-slow]
          composite_sub_policy:
            - name: retried
              type: numeric_attribute
              numeric_attribute: {key: retry.count, min_value: 3}
            - name: very-slow
              type: latency
              latency: {threshold_ms: 15000}
          rate_allocation:
            - {policy: retried, percent: 50}
            - {policy: very-slow, percent: 50}
      - name: ten-percent
        type: probabilistic
        probabilistic: {sampling_percentage: 10}
      - name: not-load-tests
        type: string_attribute
        string_attribute: {key: synthetic.source, values: [load-test], invert_match: true}
"""


def trace_of(number: int, *spans_: Any, resource: dict[str, object] | None = None) -> TraceView:
    """A trace of service "web" whose ID is 16 times ``number`` (its hash is known, see below)."""
    trace_id = bytes([number]) * 16
    built = [make_span(trace_id=trace_id, **fields) for fields in spans_]
    return view(batch(built, resource=resource or {"service.name": "web"}), trace_id=trace_id)


# Trace IDs are bytes([n]) * 16; FNV-1a(default salt + ID) / 2**64 for those used below:
# 1 -> 0.22, 6 -> 0.82, 8 -> 0.97, 11 -> 0.82, 12 -> 0.95, 13 -> 0.0102, 14 -> 0.91,
# 17 -> 0.023, 18 -> 0.80, 23 -> 0.51, 25 -> 0.68, 27 -> 0.59, 31 -> 0.57, 32 -> 0.62,
# 35 -> 0.60, 36 -> 0.90, 41 -> 0.73, 42 -> 0.63, 44 -> 0.63, 45 -> 0.72. Only 1, 13 and 17
# fall under 50 %, only 13 and 17 under 10 %: the others never meet a probabilistic keep.
COLLECTOR_CASES: list[tuple[str, Callable[[], TraceView], float, Decision]] = [
    # Small health check: both drop sub-policies match, so it is dropped although "errors"
    # would keep it (drop beats everything).
    (
        "health check dropped",
        lambda: trace_of(6, {"attributes": {"http.route": "/healthz"}, "status": ERROR}),
        T0,
        Decision(False, None, 0.0),
    ),
    # Same route but 8 spans: "small" fails, the drop answers NOT_SAMPLED, "errors" keeps.
    (
        "big health check kept",
        lambda: trace_of(
            45, {"attributes": {"http.route": "/healthz"}, "status": ERROR}, *({} for _ in range(7))
        ),
        T0 + 1,
        Decision(True, "errors", 1.0),
    ),
    # 7 s is inside (5 s, 10 s].
    (
        "slow in band",
        lambda: trace_of(11, {"duration_ms": 7000}),
        T0 + 2,
        Decision(True, "slow-band", 1.0),
    ),
    # 12 s is above the band and under "very-slow" (15 s): nothing keeps it.
    (
        "too slow for the band",
        lambda: trace_of(12, {"duration_ms": 12_000}),
        T0 + 3,
        Decision(False, None, 0.0),
    ),
    # latency.go checks span by span: after the first span the trace lasts 6 s (in band),
    # so it is kept although it ends up lasting 20 s (also very-slow, reported second).
    (
        "band passed through",
        lambda: trace_of(14, {"duration_ms": 6000}, {"duration_ms": 20_000}),
        T0 + 4,
        Decision(True, "slow-band", 1.0),
    ),
    # Exactly 5 s: the band's lower bound is exclusive.
    (
        "5 s is not in the band",
        lambda: trace_of(18, {"duration_ms": 5000}),
        T0 + 5,
        Decision(False, None, 0.0),
    ),
    # 503 is in [500, 599].
    (
        "server error",
        lambda: trace_of(23, {"attributes": {"http.response.status_code": 503}}),
        T0 + 6,
        Decision(True, "server-errors", 1.0),
    ),
    # "pay" is searched, not anchored: "payments-api" matches on the resource.
    (
        "critical service",
        lambda: trace_of(25, {}, resource={"service.name": "payments-api"}),
        T0 + 7,
        Decision(True, "critical-services", 1.0),
    ),
    # "^checkout$" is anchored: "checkout-v2" does not match.
    (
        "anchored regex",
        lambda: trace_of(27, {}, resource={"service.name": "checkout-v2"}),
        T0 + 8,
        Decision(False, None, 0.0),
    ),
    # 60 spans is in [50, 200].
    (
        "big trace",
        lambda: trace_of(27, *({} for _ in range(60))),
        T0 + 9,
        Decision(True, "big-traces", 1.0),
    ),
    (
        "debug flag",
        lambda: trace_of(31, {"attributes": {"app.debug": True}}),
        T0 + 10,
        Decision(True, "debug-flag", 1.0),
    ),
    (
        "gold vendor",
        lambda: trace_of(32, {"trace_state": "other=1,vendor=gold"}),
        T0 + 11,
        Decision(True, "gold-vendor", 1.0),
    ),
    # VIP with hash 0.22 < 50 %: the and keeps it, with the half's probability.
    (
        "vip in the half",
        lambda: trace_of(1, {"attributes": {"user.tier": "vip"}}),
        T0 + 12,
        Decision(True, "vip-half", 0.5),
    ),
    # VIP with hash 0.60: the probabilistic half fails the and.
    (
        "vip not in the half",
        lambda: trace_of(35, {"attributes": {"user.tier": "vip"}}),
        T0 + 13,
        Decision(False, None, 0.0),
    ),
    # Retried 30-span trace: composite "retried" has 50 spans/s.
    (
        "retried",
        lambda: trace_of(36, {"attributes": {"retry.count": 3}}, *({} for _ in range(29))),
        T0 + 14,
        Decision(True, "budgeted", 1.0, "retried", False),
    ),
    # Another in the same second: 30 + 30 > 50, refused (budget not lent by very-slow).
    (
        "retried over budget",
        lambda: trace_of(41, {"attributes": {"retry.count": 4}}, *({} for _ in range(29))),
        T0 + 14.5,
        Decision(False, None, 0.0),
    ),
    # Next second: the budget starts over.
    (
        "retried next second",
        lambda: trace_of(42, {"attributes": {"retry.count": 4}}, *({} for _ in range(29))),
        T0 + 15,
        Decision(True, "budgeted", 1.0, "retried", False),
    ),
    # An ordinary trace whose hash 0.0102 < 10 %.
    ("lucky ten percent", lambda: trace_of(13, {}), T0 + 16, Decision(True, "ten-percent", 0.1)),
    # A load test with an error and hash 0.023 < 10 %: the inverted match vetoes both keeps.
    (
        "load test vetoed",
        lambda: trace_of(17, {"status": ERROR}, resource={"synthetic.source": "load-test"}),
        T0 + 17,
        Decision(False, None, 0.0),
    ),
    # Nothing matches; "not-load-tests" answers INVERTED_SAMPLED, cancelled by NOT_SAMPLED.
    ("ordinary", lambda: trace_of(44, {}), T0 + 18, Decision(False, None, 0.0)),
]


def test_a_collector_policy_list_decides_like_the_collector() -> None:
    policies = yaml.safe_load(COLLECTOR_CONFIG)["processors"]["tail_sampling"]["policies"]
    assert len(policies) >= 10
    engine = build_engine(policies)
    # One engine for all, in order: composite budgets carry over within a second.
    decided = {label: engine.decide(make(), now) for label, make, now, _ in COLLECTOR_CASES}
    assert decided == {label: expected for label, _, _, expected in COLLECTOR_CASES}
    assert engine.evaluation_errors == {}
