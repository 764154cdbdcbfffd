"""bytes_limiting: golang.org/x/time/rate's token bucket on the Collector's trace size estimate."""

from __future__ import annotations

import pytest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.bytes_limiting import BytesLimiting, BytesLimitingConfig
from policies.trace_size import estimate_trace_size
from tests.policies.traces import any_value, batch, make_span, view

S, N = Verdict.SAMPLED, Verdict.NOT_SAMPLED
T0 = 1_700_000_000.0


def limiter(rate: int, burst: int = 0) -> BytesLimiting:
    config = BytesLimitingConfig(bytes_per_second=rate, burst_capacity=burst)
    return BytesLimiting("bytes", config)


def sized(name: str) -> TraceView:
    # One resource (4 + "service.name" 12 + "checkout" 8 = 24), one scope (4), one span
    # (68 + its name): 96 + len(name) bytes by the Collector's estimate.
    return view(make_span(name=name))


def test_size_estimate_follows_calculate_trace_size() -> None:
    assert estimate_trace_size(sized("op")) == 98
    span = make_span(name="é", trace_state="a=1", attributes={"n": 1, "d": 0.5, "b": True})
    span.status.message = "boom"
    span.events.add(name="ev", attributes=[KeyValue(key="xs", value=any_value([b"ab", "c"]))])
    span.links.add(trace_state="t=1", attributes=[KeyValue(key="m", value=any_value({"k": ""}))])
    trace = view(batch([span], resource={"e": None}))
    # resource 4+1+0; scope 4; span 68+2+3+4+(1+8)+(1+8)+(1+1); event 12+2+2+(2+1);
    # link 28+3+(1+(1+0))
    assert estimate_trace_size(trace) == 5 + 4 + 97 + 19 + 33


def test_bucket_starts_full_and_refills_continuously() -> None:
    policy = limiter(100, burst=300)  # each trace below costs 100 bytes
    trace = sized("x" * 4)
    assert [policy.evaluate(trace, T0) for _ in range(4)] == [S, S, S, N]
    assert policy.evaluate(trace, T0 + 0.5) is N  # 50 bytes refilled
    assert policy.evaluate(trace, T0 + 1.0) is S  # 100 refilled
    assert policy.evaluate(trace, T0 + 100.0) is S  # refills up to the burst only...
    assert [policy.evaluate(trace, T0 + 100.0) for _ in range(3)] == [S, S, N]


def test_default_burst_is_twice_the_rate_and_larger_traces_never_pass() -> None:
    policy = limiter(50)
    assert policy.evaluate(sized("x" * 4), T0) is S  # 100 <= 2 x 50
    assert limiter(50).evaluate(sized("x" * 5), T0) is N  # 101 > burst, whatever the time
    assert limiter(50).evaluate(sized("x" * 5), T0 + 1e6) is N


def test_refused_trace_spends_nothing_and_time_going_back_adds_nothing() -> None:
    policy = limiter(100, burst=100)
    assert policy.evaluate(sized("x" * 4), T0) is S
    # Offsets are binary fractions, exact in float seconds.
    assert policy.evaluate(sized("x" * 4), T0 + 0.875) is N  # 87.5 available
    assert policy.evaluate(sized(""), T0 + 0.96875) is S  # a 96-byte trace fits in 96.875
    assert policy.evaluate(sized(""), T0) is N  # earlier than the last: no refill


def test_zero_rate_spends_the_burst_once() -> None:
    policy = limiter(0, burst=200)
    assert [policy.evaluate(sized("x" * 4), T0 + i) for i in range(3)] == [S, S, N]


def test_config() -> None:
    assert limiter(1).keeps_state() and not limiter(1).may_veto()
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "b", "type": "bytes_limiting", "bytes_per_second": -1}])
    assert [loc for loc, _ in caught.value.errors] == [(0, "bytes_per_second")]
